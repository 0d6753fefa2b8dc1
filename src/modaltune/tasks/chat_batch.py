"""Batches of conversations for chat models, and generation from them.

Each conversation is encoded on its own (``chat_encoding.encode``: the model's chat template, labels
on the assistant turns, image tokens expanded by the processor); this module pads and stacks the
encodings into one batch, whatever the architecture's image inputs look like: LLaVA/PaliGemma stack
images along the first dimension, Qwen2-VL concatenates patch rows and their grids, Idefics3 pads a
per-conversation image dimension. Generation uses the prompt up to the last assistant turn
(``prompt_inputs``), left-padded so every prompt ends where the new tokens begin.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from modaltune.data.conversation import Conversation, ordered_images
from modaltune.data.rows import BadRow, Row
from modaltune.errors import ConfigError
from modaltune.models.base import backbone_of
from modaltune.tasks import vl
from modaltune.tasks.base import Loaded, ModelOptions
from modaltune.tasks.chat_encoding import ChatRowError, encode, prompt_inputs

#: Keys of an encoding that are one value per token (padded with 0 beside input_ids).
_PER_TOKEN = ("attention_mask", "token_type_ids", "mm_token_type_ids")
#: Keys of image inputs stacked image after image (the batch's images in order).
_PER_IMAGE = ("pixel_values", "image_grid_thw", "image_sizes", "pixel_attention_mask")
GEN = "gen_"


def load_model_and_processor(source: str | Path, *, scratch: bool, trust_remote_code: bool,
                             options: ModelOptions | None) -> tuple[torch.nn.Module, Any]:
    """``AutoModelForImageTextToText`` + the processor (with its chat template) from a hub name or folder;
    a Qwen2-VL/SmolVLM processor loads as its image-only twin where torchvision is missing."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from modaltune.models.chat_processor import load_processor
    from modaltune.tasks.base import load_error

    source = str(source)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    placement = options or ModelOptions()
    try:
        processor = load_processor(source, **kwargs)
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise load_error(source, exc) from exc
    try:
        if scratch:  # only the architecture is read: the pretrained weights are never opened
            return AutoModelForImageTextToText.from_config(config, **kwargs,
                                                           **placement.kwargs(from_config=True)), processor
        return AutoModelForImageTextToText.from_pretrained(source, **kwargs, **placement.kwargs()), processor
    except ValueError as exc:  # "Unrecognized configuration class ..."
        raise ConfigError(f"model {source!r} (model_type {config.model_type!r}) is not an image-text-to-text chat "
                          f"model (AutoModelForImageTextToText does not know it): {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise load_error(source, exc) from exc


def pad_and_stack(encodings: list[dict[str, torch.Tensor]], pad_id: int, *, left: bool) -> dict[str, torch.Tensor]:
    """One batch from single-conversation encodings (each with a batch dimension of 1)."""
    width = max(e["input_ids"].shape[-1] for e in encodings)
    out: dict[str, torch.Tensor] = {}
    token_keys = ["input_ids", "labels", *_PER_TOKEN]
    fill = {"input_ids": pad_id, "labels": -100}
    for key in token_keys:
        if not any(key in e for e in encodings):
            continue
        rows = []
        for e in encodings:
            value = e.get(key)
            if value is None:
                value = torch.zeros_like(e["input_ids"])
            value = value.reshape(1, -1)
            pad = torch.full((1, width - value.shape[-1]), fill.get(key, 0), dtype=value.dtype)
            rows.append(torch.cat([pad, value] if left else [value, pad], dim=-1))
        out[key] = torch.cat(rows)
    images = [e for e in encodings if "pixel_values" in e]
    if images:
        if "pixel_attention_mask" in images[0]:
            out.update(_pad_image_dim(encodings))
        else:
            for key in _PER_IMAGE:
                if key in images[0]:
                    out[key] = padded_cat([e[key] for e in images])
    return out


def padded_cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``tensors`` concatenated along the first dimension, each zero-padded at the end of every other
    dimension to the largest size among them.

    Images of different sizes or aspect ratios give different shapes beyond the first dimension:
    LLaVA-NeXT/OneVision's tiles per image ((images, tiles, 3, H, W), the model keeps the first
    ``tiles`` of each as its ``image_sizes`` say), Pixtral/Mistral3's pixels (cropped back by
    ``image_sizes``), Idefics3's images per conversation and pixels (an all-zero image is dropped,
    ``pixel_attention_mask`` marks the real pixels). Padding with zeros is what their processors do
    for a batch encoded at once, so a conversation's inputs mean the same alone or batched.
    Qwen2-VL's patch rows (patches, features) have one width: they are only concatenated.
    """
    rank = {t.dim() for t in tensors}
    if len(rank) != 1:
        raise ValueError(f"cannot batch image inputs of different ranks: {[tuple(t.shape) for t in tensors]}")
    most = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        if list(t.shape[1:]) != most:
            grown = t.new_zeros((t.shape[0], *most))
            region = tuple(slice(0, n) for n in t.shape)
            grown[region] = t
            t = grown
        padded.append(t)
    return torch.cat(padded)


def _pad_image_dim(encodings: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Idefics3/SmolVLM: pixel_values (1, images, 3, H, W) per conversation, padded with all-zero images
    (which the model drops) to the batch's most images and largest image; a text-only conversation
    gets only padding."""
    reference = next(e for e in encodings if "pixel_values" in e)
    out = {}
    for key in ("pixel_values", "pixel_attention_mask"):
        empty = reference[key].new_zeros((1, 0, *reference[key].shape[2:]))
        out[key] = padded_cat([e.get(key, empty) for e in encodings])
    return out


def model_inputs(batch: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The model's keyword arguments from a collated batch (``prefix``: the generation prompt's)."""
    names = ("input_ids", *_PER_TOKEN, *_PER_IMAGE)
    return {name: batch[prefix + name] for name in names if prefix + name in batch}


def eos_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Tokens that end an answer: the generation config's, the tokenizer's, and the end-of-turn tokens
    of the common chat formats that this vocabulary has."""
    found: list[int] = []
    config = getattr(vl.hf_model(model), "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        found.extend(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
    vocab = tokenizer.get_vocab()
    found.extend(vocab[t] for t in ("<|im_end|>", "<end_of_utterance>", "<|eot_id|>", "<end_of_turn>") if t in vocab)
    return list(dict.fromkeys(int(t) for t in found))


@torch.no_grad()
def generate(loaded: Loaded, batch: dict[str, torch.Tensor], kwargs: dict[str, Any], width: int) -> torch.Tensor:
    """The new tokens of each conversation's answer, right-padded with -1 to ``width``."""
    backbone = backbone_of(loaded.model)
    inputs = model_inputs(batch, GEN)
    if "input_ids" not in inputs:
        raise ConfigError("chat: a batch without a generation prompt (collated for training) cannot generate")
    tokenizer = loaded.processor.tokenizer
    ends = eos_ids(backbone, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ends[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # sampling (temperature > 0) repeats from one evaluation to the next
        out = vl.generate(backbone, **inputs, **kwargs, eos_token_id=ends, pad_token_id=pad)
    new = out[:, inputs["input_ids"].shape[1]:]
    sequences = []
    for row in new:
        cut = [i for i, t in enumerate(row.tolist()) if t in ends]
        sequences.append(row[:cut[0]] if cut else row)
    return vl.pad_generated(sequences, width)


def decode(processor: Any, generated: torch.Tensor) -> list[str]:
    """Answer text of each fixed-width row of generated ids (-1 = nothing)."""
    return [processor.tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True).strip()
            for row in generated.long().tolist()]


# --------------------------------------------------------------------------- conversations → batches


def conversation_of(row: Any) -> Conversation:
    """The row's conversation; a row from ``predict`` (an image and ``--question``) becomes a one-turn one."""
    conversation = row.get("conversation")
    if conversation is not None:
        return cast(Conversation, conversation)
    question = row.get("question")
    if not question or not str(question).strip():
        raise ConfigError("chat: ask something about each image: pass --question \"...\"")
    return Conversation.from_question(str(question), images=len(ordered_images(row.media)))


def encoding_options(loaded: Loaded) -> dict[str, Any]:
    state = loaded.state.get("encoding") or {}
    return {"max_length": state.get("max_length"), "truncate": state.get("truncate", "drop"),
            "train_on_prompt": bool(state.get("train_on_prompt", False))}


def collate(loaded: Loaded, items: list[tuple[Any, dict[str, Any]]], *, with_prompt: bool) -> dict[str, torch.Tensor]:
    """Teacher-forced encodings (right-padded, with labels) of conversations that end with an answer,
    plus the generation prompts (left-padded, keys prefixed ``gen_``) when ``with_prompt``."""
    processor = loaded.processor
    options = encoding_options(loaded)
    pad = pad_id(processor.tokenizer)
    conversations = [(conversation_of(row), ordered_images(media)) for row, media in items]
    batch: dict[str, torch.Tensor] = {}
    if all(c.has_answer for c, _ in conversations):
        batch.update(pad_and_stack([encode(processor, c, images, **options) for c, images in conversations], pad,
                                   left=False))
    if with_prompt:
        prompts = [prompt_inputs(processor, c, images, max_length=options["max_length"]) for c, images in conversations]
        batch.update({GEN + k: v for k, v in pad_and_stack(prompts, pad, left=True).items()})
    return batch


def usable(loaded: Loaded, rows: Sequence[Row]) -> tuple[list[Row], list[BadRow]]:
    """Rows whose conversation this model's processor can encode within the length limit (images decoded
    and expanded as in training); the others with their reason codes (``too_long`` mostly)."""
    from modaltune.data.media import MediaError, get_decoder

    processor = loaded.processor
    options = encoding_options(loaded)
    kept: list[Row] = []
    bad: list[BadRow] = []
    for row in rows:
        try:
            conversation = conversation_of(row)
            images = [get_decoder("image").load(path) for path in ordered_images(row.media)]
            if conversation.has_answer:
                encode(processor, conversation, images, **options)
            prompt_inputs(processor, conversation, images, max_length=options["max_length"])
        except (ChatRowError, MediaError) as exc:
            bad.append(BadRow(row.id, exc.reason, exc.detail))
            continue
        kept.append(row)
    return kept, bad


def pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0


def reference(row: Any) -> str | None:
    """The reference answer: the conversation's last assistant turn (None when it ends on a question)."""
    conversation = row.get("conversation")
    return None if conversation is None else cast(Conversation, conversation).reference


def sample(row: Any, answer: str) -> dict[str, Any]:
    """A report sample: the first image, the prompt (earlier turns and the last question), the answer."""
    prompt = conversation_of(row).prompt()
    ref = reference(row)
    out: dict[str, Any] = {"id": row.id, "question": "\n".join(f"{t.role}: {t.text}" for t in prompt.turns),
                           "prediction": answer, "references": [ref] if ref is not None else []}
    images = ordered_images(row.media)
    if images:
        out["image"] = str(images[0])
    return out


def answer(loaded: Loaded, conversation: Conversation, images: Sequence[Any], generation: dict[str, Any]) -> str:
    """The model's answer to ``conversation`` (ending with a user turn) about decoded ``images``."""
    options = encoding_options(loaded)
    prompt = prompt_inputs(loaded.processor, conversation, list(images), max_length=options["max_length"])
    device = next(loaded.model.parameters()).device
    batch = {GEN + k: v.to(device)
             for k, v in pad_and_stack([prompt], pad_id(loaded.processor.tokenizer), left=True).items()}
    was_training = loaded.model.training
    loaded.model.eval()
    try:
        generated = generate(loaded, batch, generation, int(generation["max_new_tokens"]))
    finally:
        loaded.model.train(was_training)
    return decode(loaded.processor, generated)[0]
