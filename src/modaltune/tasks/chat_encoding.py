"""One conversation → model inputs with labels on the assistant turns: the chat task's encoding.

`encode` renders the conversation with the model's own chat template (``apply_chat_template``, or a
``--chat-template FILE`` given as ``chat_template``), tokenizes the text through the *processor*, so
each image placeholder becomes as many image tokens as the processor makes for that image (its
dynamic resolution for Qwen2-VL, tiles for Idefics3/SmolVLM, LLaVA-NeXT's grid), and labels:

* by default every assistant turn's tokens, its end-of-turn token included, and nothing else:
  ``-100`` on system, user, template and image tokens and on padding;
* with ``train_on_prompt`` every token except image tokens and padding.

Where the assistant turns are in the text does not rely on ``{% generation %}`` markers (most hub
templates lack them): the template is rendered once per assistant turn, up to that turn with the
generation prompt and through it, and the characters the turn adds are its span (trailing
whitespace dropped, so the end-of-turn token is in and the newline after it is not). A template that
does not render that way (one that rewrites earlier turns) falls back to finding each answer's text
in order, plus the end-of-turn token right after it. An answer the template ends with no end-of-turn
token at all (llava-1.5's hub template) gets the tokenizer's EOS written after it, as LLaVA was
trained, so the model learns to stop (`with_end_tokens`). Spans are moved past the image placeholders the
processor expanded before them (its ``text_replacement_offsets``) and mapped to tokens through the
tokenizer's character offsets; a token inside an expanded placeholder is an image token, never a
target.

PaliGemma has no chat template: its processor takes ``text`` (the prefix) and ``suffix`` and makes
``token_type_ids`` and ``labels`` itself. The prefix is the turns before the last answer joined by
newlines (the model is single-turn, so earlier answers are context, not targets); the suffix is the
last answer.

A conversation longer than ``max_length`` tokens once its image tokens are expanded raises
`ChatRowError` (reason ``too_long``). It is never cut through image tokens: with ``truncate="drop"``
it is rejected; with ``"last-turn"`` the tail of its last assistant turn is cut (end-of-turn token
included) when that alone brings it under the limit, else it is rejected too.

`prompt_inputs` encodes a conversation up to its last user turn with the generation prompt, for
``generate``. Both return tensors with a batch dimension of 1 (``tasks/chat_batch.py`` pads and
stacks them): ``input_ids``, ``attention_mask``, ``labels`` (`encode` only) and whatever the
processor returns for the images (``pixel_values``, ``image_grid_thw``, ``pixel_attention_mask``,
``image_sizes``, ``token_type_ids``, ``mm_token_type_ids``…).
"""

from __future__ import annotations

import bisect
import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from modaltune.data.conversation import IMAGE_PLACEHOLDER, Conversation
from modaltune.errors import ConfigError, DataError

IGNORE = -100
Truncate = Literal["drop", "last-turn"]
TRUNCATE_CHOICES: tuple[str, ...] = ("drop", "last-turn")

# Keys of the processor's output that are bookkeeping for this module, not model inputs.
_BOOKKEEPING = ("offset_mapping", "text_replacement_offsets")


class ChatRowError(DataError):
    """A conversation this model cannot be trained or prompted with; ``reason`` is a code from
    ``data.validate.REASONS`` (``too_long``, ``image_placeholder_mismatch``, ``missing_field``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- templates


def load_chat_template(path: str | Path) -> str:
    """The Jinja text of a ``--chat-template FILE`` (a ``.jinja`` file, or the ``chat_template.json``
    transformers writes); `ConfigError` naming the file when it cannot be read."""
    import json

    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--chat-template {path}: cannot read it ({exc.strerror or exc}).") from exc
    if path.suffix == ".json":
        try:
            text = json.loads(text)["chat_template"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--chat-template {path}: a .json template file must hold {{\"chat_template\": "
                              f"\"...\"}} (as transformers writes chat_template.json).") from exc
    if "{%" not in text and "{{" not in text:
        raise ConfigError(f"--chat-template {path} holds no Jinja ({{% ... %}} / {{{{ ... }}}}); it must be a chat "
                          f"template like the ones in a model's chat_template.jinja.")
    return str(text)


def uses_prefix_suffix(processor: Any, chat_template: str | None = None) -> bool:
    """Whether the model is prompted PaliGemma's way (prefix + ``suffix=``) rather than by a chat
    template: its processor takes ``suffix`` and no template is given or saved."""
    if chat_template or getattr(processor, "chat_template", None):
        return False
    return "suffix" in inspect.signature(type(processor).__call__).parameters


def _template(processor: Any, chat_template: str | None) -> str:
    template = chat_template or getattr(processor, "chat_template", None)
    if not template:
        raise ConfigError(f"{type(processor).__name__} has no chat template, so conversations cannot be written "
                          f"the model's way; pass --chat-template FILE (a Jinja chat template).")
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default") or next(iter(template.values()))
    return str(template)


def render(processor: Any, conversation: Conversation, *, chat_template: str | None = None,
           add_generation_prompt: bool = False) -> str:
    """The conversation as the template writes it (text, image placeholders unexpanded)."""
    text = processor.apply_chat_template(conversation.messages, chat_template=_template(processor, chat_template),
                                         tokenize=False, add_generation_prompt=add_generation_prompt)
    return str(text[0] if isinstance(text, list) else text)


def assistant_spans(processor: Any, conversation: Conversation, text: str, *,
                    chat_template: str | None = None) -> list[tuple[int, int]]:
    """Character spans of ``text`` (the rendered conversation) holding each assistant turn's answer and
    end-of-turn token (see the module docstring for how they are found)."""
    spans: list[tuple[int, int]] = []
    turns = conversation.turns
    for k, turn in enumerate(turns):
        if turn.role != "assistant":
            continue
        before = render(processor, Conversation(turns[:k]), chat_template=chat_template, add_generation_prompt=True)
        through = render(processor, Conversation(turns[:k + 1]), chat_template=chat_template)
        end = len(through.rstrip())
        if text.startswith(through) and through.startswith(before) and turn.text.strip() in through[len(before):end]:
            spans.append((len(before), end))
        else:
            spans = _spans_by_search(processor, conversation, text)
            break
    return spans


def _spans_by_search(processor: Any, conversation: Conversation, text: str) -> list[tuple[int, int]]:
    """Each answer found in order in ``text``, with the end-of-turn token that follows it, if any."""
    ends = _end_tokens(processor)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for turn in conversation.turns:
        if turn.role != "assistant":
            continue
        answer = turn.text.strip()
        start = text.find(answer, cursor)
        if start < 0:
            raise ChatRowError("bad_role_order", "the chat template does not write the assistant's answer as given "
                                                 "(it rewrites or drops it), so it cannot be labelled")
        end = start + len(answer)
        rest = text[end:]
        gap = len(rest) - len(rest.lstrip(" "))
        end += gap + next((len(e) for e in ends if rest[gap:].startswith(e)), -gap)
        spans.append((start, end))
        cursor = end
    return spans


# --------------------------------------------------------------------------- tokenizing


def _call(processor: Any, text: str, images: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
    bos = getattr(processor.tokenizer, "bos_token", None)
    # A template that writes the BOS itself must not get a second one from the tokenizer.
    add_special = not (bos and text.startswith(bos))
    out = processor(text=[text], images=[list(images)] if images else None, add_special_tokens=add_special,
                    return_offsets_mapping=True, return_text_replacement_offsets=True, **kwargs)
    return dict(out)


@dataclass(frozen=True)
class _Vocab:
    size: int  # len(tokenizer) when read: tokens added since then make it stale
    ids: dict[str, int]
    tile_tags: frozenset[int]  # Idefics3's <row_i_col_j>, found by scanning the whole vocabulary


_VOCABS: weakref.WeakKeyDictionary[Any, _Vocab] = weakref.WeakKeyDictionary()


def _vocab(tokenizer: Any) -> _Vocab:
    """The tokenizer's vocabulary, read once per tokenizer rather than per conversation: ``get_vocab``
    builds a fresh dict of every token, and encoding one conversation needs the vocabulary up to 7 times."""
    cached = _VOCABS.get(tokenizer)
    if cached is None or cached.size != len(tokenizer):
        vocab = tokenizer.get_vocab()
        tags = frozenset(i for t, i in vocab.items() if t.startswith("<row_") and t.endswith(">") and "_col_" in t)
        cached = _VOCABS[tokenizer] = _Vocab(len(tokenizer), vocab, tags)
    return cached


def _image_token_ids(processor: Any) -> set[int]:
    """Ids of the tokens that stand for images (never targets): the processor's image token and the
    special tokens around it (Idefics3's tile tags, Qwen's vision start/end)."""
    names = {getattr(processor, a, None) for a in ("image_token", "fake_image_token", "global_image_tag",
                                                     "boi_token", "eoi_token")}
    names |= {"<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<image>", "<fake_token_around_image>",
              "<global-img>"}
    vocab = _vocab(processor.tokenizer)
    ids = {vocab.ids[n] for n in names if isinstance(n, str) and n in vocab.ids}
    ids |= vocab.tile_tags
    image_id = getattr(processor, "image_token_id", None)
    if isinstance(image_id, int):
        ids.add(image_id)
    return ids


def _shift(spans: list[tuple[int, int]], replacements: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Character spans of the rendered text → spans of the text with placeholders expanded."""
    ends = [r["span"][1] for r in replacements]
    gained = [0]
    for r in replacements:
        gained.append(gained[-1] + (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0]))
    return [(s + gained[bisect.bisect_right(ends, s)], e + gained[bisect.bisect_right(ends, e)]) for s, e in spans]


def _token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    return [s != e and any(s < b and e > a for a, b in spans) for s, e in offsets]


# --------------------------------------------------------------------------- encode


def encode(
    processor: Any,
    conversation: Conversation,
    images: Sequence[Any],
    *,
    max_length: int | None,
    train_on_prompt: bool = False,
    truncate: Truncate | str = "drop",
    chat_template: str | None = None,
) -> dict[str, torch.Tensor]:
    """Model inputs and labels for one conversation with its decoded ``images`` (in placeholder
    order); `ChatRowError` when it cannot be used (see the module docstring)."""
    if truncate not in TRUNCATE_CHOICES:
        raise ConfigError(f"truncate must be one of {', '.join(TRUNCATE_CHOICES)}, not {truncate!r}")
    _check_images(conversation, images)
    if not conversation.has_answer:
        raise ChatRowError("bad_role_order", "the conversation does not end with an assistant turn: nothing to learn")
    if uses_prefix_suffix(processor, chat_template):
        out, answer_start = _encode_prefix_suffix(processor, conversation, images, train_on_prompt)
    else:
        out, answer_start = _encode_template(processor, conversation, images, train_on_prompt, chat_template)
    return _fit(out, answer_start, max_length=max_length, truncate=str(truncate), image_ids=_image_token_ids(processor))


def _check_images(conversation: Conversation, images: Sequence[Any]) -> None:
    if conversation.image_count != len(images):
        raise ChatRowError("image_placeholder_mismatch",
                           f"{conversation.image_count} {IMAGE_PLACEHOLDER} placeholder(s) but {len(images)} image(s)")


def _end_tokens(processor: Any) -> list[str]:
    tokenizer = processor.tokenizer
    ends = [getattr(tokenizer, "eos_token", None), "<|im_end|>", "<end_of_utterance>", "<|eot_id|>", "<end_of_turn>"]
    vocab = _vocab(tokenizer).ids
    return [e for e in ends if e and e in vocab]


def with_end_tokens(processor: Any, text: str, spans: list[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
    """``text`` with the tokenizer's EOS written after each answer whose span ends in no end-of-turn
    token (llava-1.5's hub template writes none, while LLaVA was trained with ``</s>`` there): without
    it the model never learns to stop. Templates that end their turns are left as they are."""
    eos = getattr(processor.tokenizer, "eos_token", None)
    ends = _end_tokens(processor)
    if not eos:
        return text, spans
    out: list[tuple[int, int]] = []
    added = 0
    for start, end in spans:
        start, end = start + added, end + added
        if not any(text[start:end].endswith(e) for e in ends):
            text = text[:end] + eos + text[end:]
            end += len(eos)
            added += len(eos)
        out.append((start, end))
    return text, out


def _encode_template(processor: Any, conversation: Conversation, images: Sequence[Any], train_on_prompt: bool,
                     chat_template: str | None) -> tuple[dict[str, Any], int]:
    text = render(processor, conversation, chat_template=chat_template)
    spans = assistant_spans(processor, conversation, text, chat_template=chat_template)
    text, spans = with_end_tokens(processor, text, spans)
    out = _call(processor, text, images, return_tensors="pt")
    replacements = (out.get("text_replacement_offsets") or [[]])[0]
    if images and not replacements:
        # Without them the answer spans cannot be moved past the expanded image tokens: refuse
        # rather than label the wrong tokens.
        raise ConfigError(f"{type(processor).__name__} does not report where it expanded the image placeholders "
                          f"(text_replacement_offsets, transformers >= 5), so the assistant tokens cannot be located; "
                          f"upgrade transformers or use a processor built on ProcessorMixin's __call__.")
    offsets = [tuple(o) for o in out["offset_mapping"][0].tolist()]
    ids = out["input_ids"]
    image_ids = _image_token_ids(processor)
    in_image = _token_mask(offsets, [tuple(r["new_span"]) for r in replacements])
    is_image = [bool(a or int(t) in image_ids) for a, t in zip(in_image, ids[0].tolist())]
    if train_on_prompt:
        target = [not img for img in is_image]
    else:
        target = [m and not img for m, img in zip(_token_mask(offsets, _shift(spans, replacements)), is_image)]
    target = [t and bool(a) for t, a in zip(target, out["attention_mask"][0].tolist())]
    labels = ids.clone()
    labels[0, ~torch.tensor(target, dtype=torch.bool)] = IGNORE
    out["labels"] = labels
    last = _shift(spans[-1:], replacements)[0] if spans else (len(text), len(text))
    answer_start = next((i for i, (s, e) in enumerate(offsets) if e > last[0] and s != e), len(offsets))
    return out, answer_start


def _prefix(conversation: Conversation) -> str:
    """PaliGemma's prefix: the turns before the last answer, placeholders out (its processor puts the
    image tokens first)."""
    turns = conversation.prompt().turns
    return "\n".join(t.text.replace(IMAGE_PLACEHOLDER, "").strip() for t in turns
                     if t.text.replace(IMAGE_PLACEHOLDER, "").strip())


def _encode_prefix_suffix(processor: Any, conversation: Conversation, images: Sequence[Any],
                          train_on_prompt: bool) -> tuple[dict[str, Any], int]:
    if not images:
        raise ChatRowError("missing_field", f"{type(processor).__name__} takes an image with every prompt; a "
                                            f"text-only conversation cannot be used with this model")
    answer = conversation.reference or ""
    out = dict(processor(text=[IMAGE_PLACEHOLDER * len(images) + _prefix(conversation)], images=[list(images)],
                         suffix=[answer], return_tensors="pt"))
    ids = out["input_ids"]
    suffix = out["token_type_ids"][0].bool()
    answer_start = int(suffix.nonzero()[0, 0]) if suffix.any() else ids.shape[1]
    if train_on_prompt:
        keep = out["attention_mask"][0].bool() & ~torch.isin(ids[0], torch.tensor(sorted(_image_token_ids(processor))))
        labels = ids.clone()
        labels[0, ~keep] = IGNORE
        out["labels"] = labels
    return out, answer_start


def _fit(out: dict[str, Any], answer_start: int, *, max_length: int | None, truncate: str,
         image_ids: set[int]) -> dict[str, torch.Tensor]:
    """The encoding within ``max_length`` tokens (see the module docstring), bookkeeping keys dropped."""
    for key in _BOOKKEEPING:
        out.pop(key, None)
    ids = out["input_ids"]
    length = int(ids.shape[1])
    if max_length is None or length <= max_length:
        return out
    image_tokens = int(torch.isin(ids[0], torch.tensor(sorted(image_ids), dtype=ids.dtype)).sum()) if image_ids else 0
    detail = (f"{length} tokens ({image_tokens} of them image tokens) > max_length {max_length}; raise "
              f"--chat.max-length, use smaller images, or shorten the conversation")
    if truncate != "last-turn":
        raise ChatRowError("too_long", detail + " (or cut its last answer with --chat.truncate last-turn)")
    cut_images = image_ids and bool(torch.isin(ids[0, max_length:], torch.tensor(sorted(image_ids))).any())
    if max_length <= answer_start or cut_images:
        raise ChatRowError("too_long", detail + "; cutting its last answer is not enough: everything before the "
                                                f"answer is {answer_start} tokens")
    for key, value in list(out.items()):
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == ids.shape:
            out[key] = value[:, :max_length]
    return out


# --------------------------------------------------------------------------- prompts for generation


def prompt_inputs(processor: Any, conversation: Conversation, images: Sequence[Any], *,
                  chat_template: str | None = None, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for ``generate``: the conversation up to its last user turn (a final assistant
    turn, the reference, is left out) with the template's generation prompt. Only the images the
    prompt shows are passed. `ChatRowError` (``too_long``) when the prompt alone exceeds ``max_length``."""
    prompt = conversation.prompt()
    shown = list(images)[:prompt.image_count]
    _check_images(prompt, shown)
    if uses_prefix_suffix(processor, chat_template):
        if not shown:
            raise ChatRowError("missing_field", f"{type(processor).__name__} takes an image with every prompt")
        out = dict(processor(text=[IMAGE_PLACEHOLDER * len(shown) + _prefix(prompt.then("assistant", "x"))],
                             images=[shown], return_tensors="pt"))
    else:
        text = render(processor, prompt, chat_template=chat_template, add_generation_prompt=True)
        out = _call(processor, text, shown, return_tensors="pt")
    for key in _BOOKKEEPING:
        out.pop(key, None)
    length = int(out["input_ids"].shape[1])
    if max_length is not None and length > max_length:
        raise ChatRowError("too_long", f"the prompt is {length} tokens (image tokens included) > max_length "
                                       f"{max_length}; raise --chat.max-length or use smaller images")
    return out
