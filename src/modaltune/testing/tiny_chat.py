"""Small, real chat vision-language models built offline and saved in standard Hugging Face format.

The chat family's companion of `modaltune.testing.tiny_vl`: for each architecture a byte-level BPE
tokenizer trained on the given texts plus the model's own special tokens (so any text encodes, with
character offsets), a tiny config sized to it, random weights from a seed, the model's own image
processor and processor, and a chat template in the model's own turn format. Everything is written
with `save_pretrained` and loads back through ``AutoModelForImageTextToText`` and
``AutoProcessor.from_pretrained`` as the hub checkpoint it stands in for would:

- `build_llava`: ``LlavaForConditionalGeneration`` (CLIP vision tower, Llama text model), like
  llava-hf/llava-1.5-7b-hf; ``USER: … ASSISTANT: …</s>`` turns, 16 image tokens per image;
- `build_llava_next`: ``LlavaNextForConditionalGeneration`` like llava-hf/llava-v1.6-mistral-7b-hf's
  architecture (AnyRes tiles: image tokens depend on the image's size), LLaVA's turns;
- `build_qwen2_vl`: ``Qwen2VLForConditionalGeneration`` like Qwen/Qwen2-VL-2B-Instruct; ChatML turns,
  image tokens from the image's size (dynamic resolution: 4 tokens per 8x8 pixels);
- `build_idefics3`: ``Idefics3ForConditionalGeneration`` like HuggingFaceTB/SmolVLM-Instruct's
  architecture; ``User:… Assistant: …<end_of_utterance>`` turns, images split into tiles plus a
  global image, 4 tokens each;
- `build_paligemma`: ``PaliGemmaForConditionalGeneration`` like google/paligemma-3b-pt-224; no chat
  template (prefix/suffix through the processor's ``suffix=``), 16 image tokens.

The chat templates wrap each assistant message and its end-of-turn token in
``{% generation %}…{% endgeneration %}``, so ``apply_chat_template(return_assistant_tokens_mask=True)``
gives an assistant mask straight from the template; tests compare it with the mask modaltune
computes without the markers (real checkpoints' templates mostly lack them). Dropout is off.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# torch and transformers are imported inside the functions that need them, as in `modaltune.testing.tiny_clip`.

#: Words every tiny chat tokenizer is trained on besides the caller's texts, so that common chat
#: text (system prompts, questions, numbers) encodes to short token sequences.
BASE_TEXTS = (
    "You are a helpful assistant. Answer the question about the image. Describe the picture.",
    "What colour is the shape? How many shapes are there? Where is the circle? Is it on the left?",
    "There is one red circle on the left and two blue squares at the top right bottom centre.",
    "yes no maybe zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
    "green yellow purple orange white black grey pink brown triangle star cross diamond ring heart",
    "Thank you. Please tell me more. Which one is bigger? The first image and the second image.",
)


@dataclass(frozen=True)
class TinyChatSize:
    """Sizes of a tiny chat VLM: every tower has ``layers`` blocks of width ``hidden``."""

    hidden: int = 32
    layers: int = 2
    heads: int = 4
    intermediate: int = 64
    image_size: int = 32
    patch_size: int = 8
    vocab_size: int = 600  # BPE target; the special tokens come on top
    max_positions: int = 1024


def _text_parts(name: str = "message") -> str:
    """Jinja for a message's content: a plain string, or typed parts in order (``{{'<image>'}}`` per image)."""
    return (
        f"{{%- if {name}['content'] is string -%}}{{{{ {name}['content'] }}}}"
        f"{{%- else -%}}{{%- for part in {name}['content'] -%}}"
        "{%- if part['type'] == 'image' -%}{{ image_placeholder }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
    )


def _template(*, system: str, user: str, assistant: str, assistant_end: str, generation_prompt: str,
              image_placeholder: str, bos: str = "", default_system: str = "", lead: str = "") -> str:
    """A chat template: ``bos``, then each turn as ``<prefix>content<suffix>``; the assistant's content
    and ``assistant_end`` (its end-of-turn token) inside ``{% generation %}``.

    Each of ``system``, ``user``, ``assistant`` is ``prefix{}suffix``; newlines are written as
    ``{{ '\\n' }}`` since transformers renders templates with ``trim_blocks``. ``default_system`` is
    written as a system turn when the conversation has none (as Qwen2-VL's own template does).
    ``lead`` (LLaVA's space after ``ASSISTANT:``) opens the answer inside ``{% generation %}``: the
    generation prompt stops before it, so it is the first thing the model writes and a target.
    """
    def turn(spec: str) -> tuple[str, str]:
        prefix, suffix = spec.split("{}")
        return _literal(prefix), _literal(suffix)

    sp, ss = turn(system)
    up, us = turn(user)
    ap, as_ = turn(assistant)
    return (
        f"{{%- set image_placeholder = {image_placeholder!r} -%}}"
        + (_literal(bos) if bos else "")
        + ("{%- if messages[0]['role'] != 'system' -%}" + sp + _literal(default_system) + ss + "{%- endif -%}"
           if default_system else "")
        + "{%- for message in messages -%}"
        + "{%- if message['role'] == 'system' -%}" + sp + _text_parts() + ss
        + "{%- elif message['role'] == 'user' -%}" + up + _text_parts() + us
        + "{%- elif message['role'] == 'assistant' -%}" + ap
        + "{%- generation -%}" + _literal(lead) + _text_parts() + _literal(assistant_end)
        + "{%- endgeneration -%}" + as_
        + "{%- endif -%}{%- endfor -%}"
        + "{%- if add_generation_prompt -%}" + _literal(generation_prompt) + "{%- endif -%}"
    )


def _literal(text: str) -> str:
    return "{{ " + repr(text) + " }}" if text else ""


LLAVA_TEMPLATE = _template(system="{}\n", user="USER: {} ", assistant="ASSISTANT:{} ", assistant_end="</s>",
                           generation_prompt="ASSISTANT:", image_placeholder="<image>", lead=" ")
#: ChatML, as Qwen2-VL-Instruct writes it (default system prompt, images between vision start/end).
QWEN2_VL_TEMPLATE = _template(
    system="<|im_start|>system\n{}<|im_end|>\n", user="<|im_start|>user\n{}<|im_end|>\n",
    assistant="<|im_start|>assistant\n{}\n", assistant_end="<|im_end|>",
    generation_prompt="<|im_start|>assistant\n", default_system="You are a helpful assistant.",
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>")
#: SmolVLM-Instruct's turn format (``User:`` / ``Assistant:`` ending in ``<end_of_utterance>``).
IDEFICS3_TEMPLATE = _template(
    bos="<|im_start|>", system="System: {}<end_of_utterance>\n", user="User:{}<end_of_utterance>\n",
    assistant="Assistant:{}\n", assistant_end="<end_of_utterance>", generation_prompt="Assistant:",
    image_placeholder="<image>", lead=" ")


# --------------------------------------------------------------------------- tokenizer


def build_bpe_tokenizer(
    texts: Iterable[str],
    *,
    specials: Sequence[str],
    vocab_size: int = TinyChatSize.vocab_size,
    bos: str | None = None,
    eos: str | None = None,
    pad: str | None = None,
    unk: str | None = None,
    prepend_bos: bool = False,
    extra_tokens: Sequence[str] = (),
    model_max_length: int = TinyChatSize.max_positions,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style: any text encodes, offsets map tokens to characters)
    trained on ``texts`` and `BASE_TEXTS`; ``specials`` come first (ids 0…), then the merges.

    ``prepend_bos`` adds ``bos`` in front of every encoded text as Llama's and Gemma's tokenizers do
    (a post-processor, so ``add_special_tokens=False`` leaves it out). ``extra_tokens`` are added as
    special tokens after the merges (the image tokens of a model that keeps them out of the base vocab).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([*BASE_TEXTS, *texts], trainer=trainer)
    if prepend_bos:
        if bos is None:
            raise ValueError("prepend_bos needs a bos token")
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    named = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                        **{k: v for k, v in named.items() if v is not None})
    named_values = {v for v in named.values() if v is not None}
    others = [t for t in [*specials, *extra_tokens] if t not in named_values]
    if others:
        tokenizer.add_special_tokens({"additional_special_tokens": others})
    return tokenizer


def _id(tokenizer: Any, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))


def _save(out_dir: Path, model: Any, processor: Any) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _llama_text(size: TinyChatSize, tokenizer: Any, *, kv_heads: int = 1) -> dict[str, Any]:
    return {
        "model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": size.hidden,
        "intermediate_size": size.intermediate, "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": size.max_positions, "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "attention_dropout": 0.0, "tie_word_embeddings": False,
    }


def _vision(size: TinyChatSize) -> dict[str, Any]:
    return {
        "hidden_size": size.hidden, "intermediate_size": size.intermediate, "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads, "image_size": size.image_size, "patch_size": size.patch_size,
        "attention_dropout": 0.0,
    }


def _init_kwargs(cls: type, **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments ``cls.__init__`` takes, of ``kwargs`` (names moved between versions)."""
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


# --------------------------------------------------------------------------- LLaVA


def build_llava(out_dir: Path, *, texts: Iterable[str] = (), seed: int = 0,
                size: TinyChatSize = TinyChatSize()) -> Path:
    """A tiny ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` with a chat template in ``out_dir``.

    As llava-1.5: CLIP vision tower whose second-to-last layer feeds a 2-layer GELU projector, the
    CLS feature dropped (``vision_feature_select_strategy="default"``), so a 32 px image at patch 8 is
    16 ``<image>`` tokens; a Llama tokenizer that prepends ``<s>``; turns ``USER: … ASSISTANT: …</s>``.
    """
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = build_bpe_tokenizer(texts, specials=["<unk>", "<s>", "</s>", "<pad>", "<image>"], bos="<s>",
                                    eos="</s>", pad="<pad>", unk="<unk>", prepend_bos=True,
                                    vocab_size=size.vocab_size)
    image_token_id = _id(tokenizer, "<image>")
    text = _llama_text(size, tokenizer)
    text.pop("model_type")
    fields: dict[str, Any] = {  # image_token_id: the 5.x name (4.x: image_token_index)
        "vision_config": CLIPVisionConfig(**_vision(size), projection_dim=size.hidden),
        "text_config": LlamaConfig(**text), "image_token_id": image_token_id, "image_token_index": image_token_id,
        "projector_hidden_act": "gelu", "vision_feature_select_strategy": "default", "vision_feature_layer": -2,
    }
    config = LlavaConfig(**fields)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size.image_size},
                                            crop_size={"height": size.image_size, "width": size.image_size})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=LLAVA_TEMPLATE,
        **_init_kwargs(LlavaProcessor, patch_size=size.patch_size, num_additional_image_tokens=1,
                       vision_feature_select_strategy="default", image_token="<image>"),
    )
    return _save(out_dir, model, processor)


# --------------------------------------------------------------------------- LLaVA-NeXT


def build_llava_next(out_dir: Path, *, texts: Iterable[str] = (), seed: int = 0,
                     size: TinyChatSize = TinyChatSize()) -> Path:
    """A tiny ``LlavaNextForConditionalGeneration`` + ``LlavaNextProcessor`` (LLaVA's tokenizer and template).

    AnyRes as llava-v1.6: an image is resized to the best of the grid pinpoints (32x32 … 64x64),
    cut into 32 px tiles plus a downscaled base image, so its token count depends on its size and
    aspect ratio: a 32 px square is 36 ``<image>`` tokens (base 16, one tile 16, a newline token per
    row of the tiles), a 64x32 (width x height) one 52, a 64 px square 88.
    """
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = build_bpe_tokenizer(texts, specials=["<unk>", "<s>", "</s>", "<pad>", "<image>"], bos="<s>",
                                    eos="</s>", pad="<pad>", unk="<unk>", prepend_bos=True,
                                    vocab_size=size.vocab_size)
    text = _llama_text(size, tokenizer)
    text.pop("model_type")
    side = size.image_size
    pinpoints = [[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]]
    fields: dict[str, Any] = {
        "vision_config": CLIPVisionConfig(**_vision(size), projection_dim=size.hidden),
        "text_config": LlamaConfig(**text), "image_token_id": _id(tokenizer, "<image>"),
        "image_token_index": _id(tokenizer, "<image>"), "projector_hidden_act": "gelu",
        "vision_feature_select_strategy": "default", "vision_feature_layer": -2, "image_grid_pinpoints": pinpoints,
    }
    config = LlavaNextConfig(**fields)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": side}, image_grid_pinpoints=pinpoints,
                                                 crop_size={"height": side, "width": side})
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=LLAVA_TEMPLATE,
                                   patch_size=size.patch_size, vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1)
    return _save(out_dir, model, processor)


# --------------------------------------------------------------------------- Qwen2-VL

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>")


def build_qwen2_vl(out_dir: Path, *, texts: Iterable[str] = (), seed: int = 0,
                   size: TinyChatSize = TinyChatSize(), max_pixels: int = 64 * 64) -> Path:
    """A tiny ``Qwen2VLForConditionalGeneration`` + ``Qwen2VLProcessor`` with ChatML in ``out_dir``.

    Dynamic resolution as the real model: 4 px patches, 2x2 merged, so an image of H x W pixels
    (rounded to multiples of 8, between 8x8 and ``max_pixels``) is H·W/64 ``<|image_pad|>`` tokens.
    The processor is saved under its stock class name; without torchvision it is built (and loads,
    through `modaltune.models.chat_processor.load_processor`) as its image-only twin.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from modaltune.models.chat_processor import image_only

    out_dir = Path(out_dir)
    tokenizer = build_bpe_tokenizer(texts, specials=QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>",
                                    vocab_size=size.vocab_size)
    ids = {t: _id(tokenizer, t) for t in QWEN_SPECIALS}
    heads = 2  # head_dim 16: mrope_section must sum to head_dim / 2
    config = Qwen2VLConfig(
        vision_config={"depth": size.layers, "embed_dim": size.hidden, "hidden_size": size.hidden,
                       "num_heads": heads, "mlp_ratio": 2, "patch_size": 4, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "in_channels": 3},
        text_config={"vocab_size": len(tokenizer), "hidden_size": size.hidden,
                     "intermediate_size": size.intermediate, "num_hidden_layers": size.layers,
                     "num_attention_heads": heads, "num_key_value_heads": 1,
                     "max_position_embeddings": size.max_positions, "attention_dropout": 0.0,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                     "bos_token_id": None, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
                     "tie_word_embeddings": False},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                               size={"shortest_edge": 8 * 8, "longest_edge": max_pixels})
    try:
        processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                     chat_template=QWEN2_VL_TEMPLATE)
    except (AttributeError, ImportError):  # no torchvision: the video half cannot be built
        processor = image_only(Qwen2VLProcessor)(image_processor=image_processor, tokenizer=tokenizer,
                                                 chat_template=QWEN2_VL_TEMPLATE)
    return _save(out_dir, model, processor)


# --------------------------------------------------------------------------- Idefics3 (SmolVLM's architecture)


def build_idefics3(out_dir: Path, *, texts: Iterable[str] = (), seed: int = 0,
                   size: TinyChatSize = TinyChatSize()) -> Path:
    """A tiny ``Idefics3ForConditionalGeneration`` + ``Idefics3Processor`` in ``out_dir``.

    SigLIP-style vision tower (32 px, patch 8: 16 patches), pixel shuffle by 2: 4 ``<image>`` tokens
    per 32 px tile. Images are resized to a longest edge of 64 and split into 32 px tiles plus a
    downscaled global image, each framed by ``<fake_token_around_image>`` and a ``<row_r_col_c>`` /
    ``<global-img>`` tag, so a square image is 5 x 4 image tokens.
    """
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    out_dir = Path(out_dir)
    grid = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tokenizer = build_bpe_tokenizer(
        texts, specials=["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                         "<image>", "<global-img>", *grid],
        bos="<|im_start|>", eos="<end_of_utterance>", pad="<|endoftext|>", vocab_size=size.vocab_size)
    text = _llama_text(size, tokenizer)
    text.pop("model_type")
    scale = 2
    fields: dict[str, Any] = {
        "vision_config": {**_vision(size), "num_channels": 3}, "text_config": LlamaConfig(**text),
        "scale_factor": scale, "image_token_id": _id(tokenizer, "<image>"), "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    config = Idefics3Config(**fields)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 2 * size.image_size},
                                                max_image_size={"longest_edge": size.image_size},
                                                do_image_splitting=True)
    seq_len = (size.image_size // size.patch_size) ** 2 // scale**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
                                  chat_template=IDEFICS3_TEMPLATE)
    return _save(out_dir, model, processor)


# --------------------------------------------------------------------------- PaliGemma


def build_paligemma(out_dir: Path, *, texts: Iterable[str] = (), seed: int = 0,
                    size: TinyChatSize = TinyChatSize()) -> Path:
    """A tiny ``PaliGemmaForConditionalGeneration`` + ``PaliGemmaProcessor`` in ``out_dir``.

    As google/paligemma: a SigLIP tower (32 px, patch 8: 16 ``<image>`` tokens), a Gemma text model,
    a tokenizer that prepends ``<bos>``. No chat template: the processor writes
    ``<image>…<bos>prefix\\n`` and, given ``suffix=``, ``suffix<eos>`` with ``token_type_ids`` 1 and
    labels on the suffix only.
    """
    import torch
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = build_bpe_tokenizer(texts, specials=["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], bos="<bos>",
                                    eos="<eos>", pad="<pad>", unk="<unk>", prepend_bos=True,
                                    vocab_size=size.vocab_size)
    image_tokens = (size.image_size // size.patch_size) ** 2
    heads = 2
    vision: dict[str, Any] = {**_vision(size), "projection_dim": size.hidden}
    fields: dict[str, Any] = dict(
        vision_config=SiglipVisionConfig(**vision),
        text_config=GemmaConfig(vocab_size=len(tokenizer), hidden_size=size.hidden,
                                intermediate_size=size.intermediate, num_hidden_layers=size.layers,
                                num_attention_heads=heads, num_key_value_heads=1, head_dim=size.hidden // heads,
                                max_position_embeddings=size.max_positions, pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                attention_dropout=0.0),
        image_token_id=_id(tokenizer, "<image>"),
        projection_dim=size.hidden,
    )
    config = PaliGemmaConfig(**fields)
    config.vision_config.num_image_tokens = image_tokens  # type: ignore[union-attr]
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    image_processor = SiglipImageProcessorPil(size={"height": size.image_size, "width": size.image_size})
    image_processor.image_seq_length = image_tokens  # type: ignore[attr-defined]  # PaliGemmaProcessor reads it
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(out_dir, model, processor)


#: Every builder by its model type, for tests and the benchmark that run over architectures.
BUILDERS = {"llava": build_llava, "llava_next": build_llava_next, "qwen2_vl": build_qwen2_vl,
            "idefics3": build_idefics3, "paligemma": build_paligemma}
