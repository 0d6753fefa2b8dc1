"""Small, real vision-language models built offline and saved in standard Hugging Face format.

The companion of `modaltune.testing.tiny_clip` (which does this for CLIP): a BERT WordPiece tokenizer whose
vocabulary is the words of the given texts, a tiny config sized to it, random weights from a seed,
and the model's own processor. Everything is written with `save_pretrained`, so the rest of the
code loads each directory through `AutoProcessor` and the Auto model class exactly as it would
load the hub checkpoint it stands in for:

- `build_vilt_vqa`: `ViltForQuestionAnswering` (`AutoModelForVisualQuestionAnswering`),
  like dandelin/vilt-b32-finetuned-vqa;
- `build_blip_vqa`: `BlipForQuestionAnswering` (`AutoModelForVisualQuestionAnswering`),
  like Salesforce/blip-vqa-base;
- `build_blip_caption`: `BlipForConditionalGeneration` (`AutoModelForImageTextToText`),
  like Salesforce/blip-image-captioning-base;
- `build_git_caption`: `GitForCausalLM` (`AutoModelForImageTextToText`), like microsoft/git-base.

Special-token layout follows the real checkpoints: BLIP's text decoder starts from an extra
`[DEC]` token (its `bos_token_id`; the tokenizer's `bos_token`) and stops at `[SEP]`
(`sep_token_id`), while the processor's tokenizer still writes `[CLS] ... [SEP]`. GIT starts from
`[CLS]` and stops at `[SEP]`. Dropout is off. The generative models get `text_positions`
(default twice `max_text_len`) position embeddings, so a prompt the tokenizer truncated to
`max_text_len` still leaves room for as many generated tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import normalizers, pre_tokenizers

if TYPE_CHECKING:
    from transformers import BertTokenizer, BlipConfig, PreTrainedModel
    from transformers.image_processing_utils import BaseImageProcessor
    from transformers.processing_utils import ProcessorMixin

# torch and transformers are imported inside the functions that need them, as in `modaltune.testing.tiny_clip`.

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0-4, BertTokenizer's own order
DEC = "[DEC]"  # BLIP's decoder start token (id 30522 in the real checkpoints)
# Always in the vocab, so questions and captions never turn their punctuation into [UNK].
PUNCTUATION = tuple(".,?!'\"-:;()/")


@dataclass(frozen=True)
class TinySize:
    """The size of every tower of a tiny model (vision and text alike)."""

    hidden_size: int = 32
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 64
    image_size: int = 32
    patch_size: int = 8
    max_text_len: int = 32  # the tokenizer's model_max_length
    text_positions: int | None = None  # text position embeddings; None: max_text_len, or twice it for generators

    def positions(self, *, generative: bool) -> int:
        if self.text_positions is not None:
            if self.text_positions < self.max_text_len:
                raise ValueError(f"text_positions={self.text_positions} < max_text_len={self.max_text_len}")
            return self.text_positions
        return 2 * self.max_text_len if generative else self.max_text_len


# --------------------------------------------------------------------------- tokenizer


def _bert_words(texts: Iterable[str]) -> list[str]:
    """The distinct words and punctuation marks a lower-casing `BertTokenizer` splits `texts` into, sorted."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: set[str] = set()
    for text in texts:
        words.update(word for word, _span in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    return sorted(words)


def build_wordpiece_tokenizer(
    texts: Iterable[str],
    out_dir: Path,
    *,
    max_length: int = TinySize.max_text_len,
    extra_special_tokens: Sequence[str] = (),
    bos_token: str | None = None,
) -> BertTokenizer:
    """A lower-casing BERT WordPiece tokenizer over the words of `texts`; writes `out_dir/vocab.txt`.

    Vocab: `[PAD] [UNK] [CLS] [SEP] [MASK]` (ids 0-4), then `extra_special_tokens` (BLIP's `[DEC]`),
    then the marks in `PUNCTUATION` and every word of `texts`, sorted. Every entry is a whole word
    (no `##` pieces), so a word the texts never contained becomes one `[UNK]`. `bos_token`, if
    given, must be one of `extra_special_tokens` (BLIP's tokenizer reports `[DEC]` as its
    `bos_token`). `model_max_length` is `max_length`, so `truncation=True` never overflows the
    text positions. transformers 5 has one `BertTokenizer` (tokenizers-backed; `BertTokenizerFast`
    is an alias of it); `processor.save_pretrained` writes its `tokenizer.json`.
    """
    from transformers import BertTokenizer

    if bos_token is not None and bos_token not in extra_special_tokens:
        raise ValueError(f"bos_token {bos_token!r} must be one of extra_special_tokens {list(extra_special_tokens)}")
    specials = list(dict.fromkeys([*BERT_SPECIALS, *extra_special_tokens]))
    words = [w for w in _bert_words([*texts, " ".join(PUNCTUATION)]) if w not in specials]
    tokens = specials + words
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")

    vocab = {token: i for i, token in enumerate(tokens)}
    kwargs: dict[str, Any] = {"bos_token": bos_token} if bos_token is not None else {}
    if "vocab" not in _init_params(BertTokenizer):  # transformers 4.x: the vocab file only
        return BertTokenizer(str(out_dir / "vocab.txt"), do_lower_case=True, model_max_length=max_length, **kwargs)
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=max_length, **kwargs)


def _init_params(cls: type[Any]) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


# --------------------------------------------------------------------------- shared pieces


def _image_processor(name: str, **kwargs: Any) -> BaseImageProcessor:
    """transformers' `<name>ImageProcessor`: the torchvision one where torchvision is installed, else the PIL one.

    This mirrors what `AutoImageProcessor` picks in transformers 5, so a saved-and-reloaded
    processor has the same class as the one we built (as `modaltune.testing.tiny_clip._clip_image_processor`).
    """
    import transformers
    from transformers.utils import is_torchvision_available

    pil = getattr(transformers, f"{name}ImageProcessorPil", None)
    if pil is None or is_torchvision_available():  # transformers 4.x has only the one (PIL-based) class
        return getattr(transformers, f"{name}ImageProcessor")(**kwargs)
    return pil(**kwargs)


def _save_seeded(
    out_dir: Path, seed: int, make_model: Callable[[], PreTrainedModel], processor: ProcessorMixin
) -> Path:
    """Build the model under a forked, seeded RNG (weights depend only on `seed`; the caller's RNG
    is untouched), then `save_pretrained` model and processor to `out_dir`."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model()
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------- ViLT


def build_vilt_vqa(
    out_dir: Path, *, texts: Iterable[str], answers: Sequence[str], seed: int = 0, size: TinySize = TinySize()
) -> Path:
    """A random-weight `ViltForQuestionAnswering` (one class per answer) + `ViltProcessor` in `out_dir`.

    `texts` are the questions (their words make the vocab); `answers` become `id2label` in the
    given order (duplicates dropped). The image processor resizes the short side to
    `size.image_size` (long side capped at 1333/800 of it, as ViLT does), rounds both sides down to
    a multiple of `size.patch_size` and pads the batch to its largest image; `pixel_mask` marks the
    real pixels, and ViLT interpolates its position embeddings to each image's patch grid.
    """
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltProcessor
    from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD

    answers = list(dict.fromkeys(answers))
    if not answers:
        raise ValueError("ViLT VQA needs at least one answer")
    out_dir = Path(out_dir)
    tokenizer = build_wordpiece_tokenizer(texts, out_dir, max_length=size.max_text_len)
    config = ViltConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=size.positions(generative=False),
        hidden_size=size.hidden_size,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=size.intermediate_size,
        image_size=size.image_size,
        patch_size=size.patch_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.pad_token_id,
        id2label=dict(enumerate(answers)),
        label2id={answer: i for i, answer in enumerate(answers)},
    )
    image_processor = _image_processor(
        "Vilt",
        size={"shortest_edge": size.image_size},
        size_divisor=size.patch_size,
        image_mean=IMAGENET_STANDARD_MEAN,  # ViLT's 0.5 / 0.5
        image_std=IMAGENET_STANDARD_STD,
    )
    processor = ViltProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _save_seeded(out_dir, seed, lambda: ViltForQuestionAnswering(config), processor)


# --------------------------------------------------------------------------- BLIP


def tiny_blip_config(tokenizer: BertTokenizer, size: TinySize = TinySize()) -> BlipConfig:
    """A `BlipConfig` with both towers `size`; special ids from `tokenizer` (one built with `[DEC]`).

    As in the real checkpoints: `bos_token_id` = `[DEC]` (the decoder's start token, which
    `generate` puts in position 0), `sep_token_id` = `[SEP]` (where `generate` stops),
    `pad_token_id` = `[PAD]`. `eos_token_id` is `[SEP]` too (the real configs say 2; BLIP only
    uses it as a throw-away second token of its default caption prompt).
    """
    from transformers import BlipConfig

    dec_id = tokenizer.convert_tokens_to_ids(DEC)
    if tokenizer.bos_token_id != dec_id or dec_id == tokenizer.unk_token_id:
        raise ValueError(f"a BLIP tokenizer needs {DEC} in its vocab, as its bos_token")
    tower = {
        "hidden_size": size.hidden_size,
        "intermediate_size": size.intermediate_size,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "projection_dim": size.hidden_size,
    }
    text_config = {
        **tower,
        "vocab_size": len(tokenizer),
        "encoder_hidden_size": size.hidden_size,  # cross-attention input = the vision tower's width
        "max_position_embeddings": size.positions(generative=True),
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "bos_token_id": dec_id,
        "eos_token_id": tokenizer.sep_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        **tower,
        "image_size": size.image_size,
        "patch_size": size.patch_size,
        "attention_dropout": 0.0,
        # BlipVisionConfig defaults to 1e-10 (real checkpoints overwrite every weight); a random tiny
        # model initialised that way passes no gradient back into its vision tower.
        "initializer_range": 0.02,
    }
    return BlipConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=size.hidden_size,
        image_text_hidden_size=size.hidden_size,
    )


def _build_blip(model_class_name: str, out_dir: Path, texts: Iterable[str], seed: int, size: TinySize) -> Path:
    import transformers
    from transformers import BlipProcessor
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    out_dir = Path(out_dir)
    tokenizer = build_wordpiece_tokenizer(
        texts, out_dir, max_length=size.max_text_len, extra_special_tokens=[DEC], bos_token=DEC
    )
    image_processor = _image_processor(  # BLIP: bicubic resize straight to a square, OpenAI mean/std
        "Blip",
        size={"height": size.image_size, "width": size.image_size},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = tiny_blip_config(tokenizer, size)
    model_class = getattr(transformers, model_class_name)
    return _save_seeded(out_dir, seed, lambda: model_class(config), processor)


def build_blip_caption(out_dir: Path, *, texts: Iterable[str], seed: int = 0, size: TinySize = TinySize()) -> Path:
    """A random-weight `BlipForConditionalGeneration` + `BlipProcessor` in `out_dir`.

    `texts`: the captions (and any prompt such as "a picture of"); their words make the vocab.
    """
    return _build_blip("BlipForConditionalGeneration", out_dir, texts, seed, size)


def build_blip_vqa(out_dir: Path, *, texts: Iterable[str], seed: int = 0, size: TinySize = TinySize()) -> Path:
    """A random-weight `BlipForQuestionAnswering` + `BlipProcessor` in `out_dir`.

    `texts`: the questions and the answers (both go through the one tokenizer).
    """
    return _build_blip("BlipForQuestionAnswering", out_dir, texts, seed, size)


# --------------------------------------------------------------------------- GIT


def build_git_caption(out_dir: Path, *, texts: Iterable[str], seed: int = 0, size: TinySize = TinySize()) -> Path:
    """A random-weight `GitForCausalLM` + `GitProcessor` (CLIP image processor + BERT tokenizer) in `out_dir`.

    GIT is one causal decoder over `[image tokens | text tokens]`; the text starts with `[CLS]`
    (`bos_token_id`) and ends with `[SEP]` (`eos_token_id`), as in microsoft/git-base. `texts`:
    the captions (and any prompts); their words make the vocab.
    """
    from transformers import GitConfig, GitForCausalLM, GitProcessor
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    out_dir = Path(out_dir)
    tokenizer = build_wordpiece_tokenizer(texts, out_dir, max_length=size.max_text_len)
    config = GitConfig(
        vision_config={
            "hidden_size": size.hidden_size,
            "intermediate_size": size.intermediate_size,
            "num_hidden_layers": size.layers,
            "num_attention_heads": size.heads,
            "image_size": size.image_size,
            "patch_size": size.patch_size,
        },
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=size.intermediate_size,
        max_position_embeddings=size.positions(generative=True),  # text tokens only
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    image_processor = _image_processor(  # GIT = CLIP preprocessing: short-side resize, centre crop
        "CLIP",
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    processor = GitProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _save_seeded(out_dir, seed, lambda: GitForCausalLM(config), processor)
