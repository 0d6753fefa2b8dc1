"""Small, real open-vocabulary detectors built offline and saved in standard Hugging Face format.

* **Grounding DINO** (``GroundingDinoForObjectDetection``): a 1-stage-per-level Swin backbone, a
  1-layer BERT, one fusion encoder layer and two decoder layers (one fails to build: its tied box
  heads need a second layer), hidden size 32. Its tokenizer is a WordPiece ``BertTokenizer`` laid out
  as ``bert-base-uncased`` is: the model hard-codes the ids of ``[CLS]`` (101), ``[SEP]`` (102),
  ``"."`` (1012) and ``"?"`` (1029) to split the prompt into phrases (``SPECIAL_TOKENS`` in
  transformers' modeling file), so a vocabulary in any other order silently merges phrases.
* **OWLv2** / **OWL-ViT** (``Owlv2ForObjectDetection``, ``OwlViTForObjectDetection``): 2-layer
  CLIP-style towers, hidden 32, 64 px images in 8 px patches (64 box predictions per image), with a
  CLIP BPE tokenizer trained on the given texts (``tiny_clip``'s).

Each builder writes model and processor with ``save_pretrained``, so code under test loads them
with ``from_pretrained`` exactly as it loads a hub checkpoint. Weights depend only on ``seed``.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Words every tiny detector's vocabulary knows (the synthetic scenes' colours and shapes, and a
#: few everyday class names); callers add their own class names through ``texts``.
BASE_WORDS = (
    "a", "an", "the", "of", "photo", "object", "thing", "red", "green", "blue", "yellow", "white", "black",
    "orange", "purple", "gray", "circle", "square", "triangle", "star", "cross", "ring", "disk", "box",
    "rectangle", "ellipse", "diamond", "car", "bicycle", "traffic", "light", "person", "dog", "cat", "bird",
    "shape", "small", "large", "big",
)
#: ``bert-base-uncased`` ids Grounding DINO's modeling code relies on.
BERT_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


def _words(texts: Iterable[str]) -> list[str]:
    found = dict.fromkeys(BASE_WORDS)
    for text in texts:
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            found[word] = None
    return list(found)


def bert_layout_vocab(words: Iterable[str]) -> list[str]:
    """A WordPiece vocabulary (token at its id) with ``BERT_IDS`` where bert-base-uncased has them,
    ``[unused*]`` fillers around them, the other punctuation and ``words`` after."""
    size = 1030
    vocab: list[str | None] = [None] * size
    for token, index in BERT_IDS.items():
        vocab[index] = token
    for index in range(1, 100):
        vocab[index] = f"[unused{index - 1}]"
    rest = [p for p in ",!'\"-:;()/" if p not in vocab] + [w for w in dict.fromkeys(words) if w not in BERT_IDS]
    free = [i for i, token in enumerate(vocab) if token is None]
    for index, token in zip(free, rest):
        vocab[index] = token
    filled = [token if token is not None else f"[unused{100 + i}]" for i, token in enumerate(vocab)]
    return filled + rest[len(free):]


def build_grounding_dino(out_dir: Path, *, texts: Iterable[str] = (), seed: int = 0, image_size: int = 64,
                         num_queries: int = 20, max_text_len: int = 32, width: int = 32, layers: int = 1) -> Path:
    """A tiny ``GroundingDinoForObjectDetection`` + ``GroundingDinoProcessor`` in ``out_dir``.

    ``max_text_len`` (the real model's is 256) bounds a prompt's tokens: a small one lets tests
    split long label lists into several prompts. ``width`` (hidden size) and ``layers`` (BERT and
    fusion encoder layers; the decoder has one more) grow it for benchmarks."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )

    from modaltune.testing.tiny_vl import _image_processor, _save_seeded

    vocab = bert_layout_vocab(_words(texts))
    # transformers 5 takes the vocabulary as a mapping (a vocab_file keyword is silently ignored).
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True,
                              model_max_length=max_text_len)
    if tokenizer.convert_tokens_to_ids(".") != BERT_IDS["."] or tokenizer.cls_token_id != BERT_IDS["[CLS]"]:
        raise RuntimeError("the tiny Grounding DINO tokenizer lost the bert-base-uncased layout")
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=image_size, patch_size=4, embed_dim=width // 4, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 2, 2], window_size=4,
                                   out_indices=[2, 3, 4]),  # type: ignore[call-arg]  # SwinConfig takes it
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=width, num_hidden_layers=layers,
                               num_attention_heads=2, intermediate_size=2 * width,
                               max_position_embeddings=max_text_len + 2),
        d_model=width, encoder_layers=layers, decoder_layers=layers + 1, encoder_ffn_dim=2 * width,
        decoder_ffn_dim=2 * width,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=num_queries, num_feature_levels=4,
        encoder_n_points=2, decoder_n_points=2, max_text_len=max_text_len, dropout=0.0, fusion_droppath=0.0,
        auxiliary_loss=True,
    )
    processor = GroundingDinoProcessor(
        image_processor=_image_processor("GroundingDino", size={"shortest_edge": image_size,
                                                               "longest_edge": image_size * 3 // 2}),
        tokenizer=tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _save_seeded(out_dir, seed, lambda: GroundingDinoForObjectDetection(config), processor)


def _owl_config(kind: str, tokenizer: Any, image_size: int, patch_size: int, max_text_len: int) -> Any:
    import transformers

    config_class = getattr(transformers, "Owlv2Config" if kind == "owlv2" else "OwlViTConfig")
    return config_class(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": max_text_len,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                       "image_size": image_size, "patch_size": patch_size},
        projection_dim=32,
    )


def build_owl(out_dir: Path, *, kind: str = "owlv2", texts: Iterable[str] = (), seed: int = 0,
              image_size: int = 64, patch_size: int = 8, max_text_len: int = 16) -> Path:
    """A tiny ``Owlv2ForObjectDetection`` (``kind="owlv2"``) or ``OwlViTForObjectDetection``
    (``kind="owlvit"``) with its processor, in ``out_dir``."""
    import transformers

    from modaltune.testing.tiny_clip import load_clip_tokenizer, train_clip_tokenizer
    from modaltune.testing.tiny_vl import _image_processor, _save_seeded

    if kind not in ("owlv2", "owlvit"):
        raise ValueError(f"kind must be 'owlv2' or 'owlvit', got {kind!r}")
    corpus = [" ".join(_words(texts))] * 4 + list(texts)
    with tempfile.TemporaryDirectory() as tmp:
        train_clip_tokenizer(corpus, Path(tmp), vocab_size=400)
        tokenizer = load_clip_tokenizer(Path(tmp), max_length=max_text_len)
    config = _owl_config(kind, tokenizer, image_size, patch_size, max_text_len)
    name = "Owlv2" if kind == "owlv2" else "OwlViT"
    size = {"height": image_size, "width": image_size}
    extra = {} if kind == "owlv2" else {"crop_size": size, "do_center_crop": False}
    image_processor = _image_processor(name, size=size, **extra)
    processor = getattr(transformers, f"{name}Processor")(image_processor=image_processor, tokenizer=tokenizer)
    model_class = getattr(transformers, f"{name}ForObjectDetection")

    def make() -> Any:
        import torch

        model = model_class(config)
        # A random box head saturates its sigmoid (every box a corner of the image, no gradient left);
        # with its last layer at zero each patch starts from the box around itself (OWL's box bias),
        # as DETR-style detectors initialise their last box layer.
        with torch.no_grad():
            model.box_head.dense2.weight.zero_()
            model.box_head.dense2.bias.zero_()
        return model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _save_seeded(out_dir, seed, make, processor)
