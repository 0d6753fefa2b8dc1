"""Synthetic visual instruction data about the shapes world: a pure function of a seed.

Each conversation is about one or two drawn images (`modaltune.testing.synthetic`'s shapes, colours
and backgrounds) and asks what a visual chat model is taught: the colour of a shape, how many shapes
there are, where a shape is, a description, which of two images shows something; most have a
follow-up turn that refers back ("And where is it?"), some a system prompt, a few are text only
(general instruction data of the kind mixed in to keep a model's chat skills). Answers are short and
determined by the image, so a model that learns them has looked at it.

Written in the two layouts users bring:

* `write_llava_json`: LLaVA's ``[{"id", "image" | "images", "conversations": [{"from": "human" |
  "gpt" | "system", "value"}]}]`` with ``<image>`` placeholders;
* `write_messages_jsonl`: one ``{"messages": [{"role", "content": [{"type": "image"} |
  {"type": "text", "text"}]}], "images": [...]}`` per line (LLaMA-Factory / TRL).

Both hold the same conversations for a seed; images go to ``images/`` beside the file.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from modaltune.testing.synthetic import (
    _POSITION_PHRASES,
    _SUPERSAMPLE,
    BACKGROUNDS,
    COLOURS,
    Scene,
    _a,
    _contrasting_backgrounds,
    _draw_mask,
    _pick,
    _save_png,
    _stream,
    render_scene,
    sample_scene,
)

#: Shapes the conversations use (the simplest to tell apart at 32-64 px).
CHAT_SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
#: Colours the conversations use (each distinct from every background it may be drawn on).
CHAT_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
#: Cells of a 2x2 grid a counted shape may sit in (centre as a fraction of the side).
_CELLS = ((0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73))
SYSTEM_PROMPTS = (
    "You are a helpful assistant. Answer briefly.",
    "You describe pictures of shapes. Keep answers short.",
)
#: Kinds of conversation, in the proportion they are drawn.
KINDS = ("colour", "count", "position", "describe", "compare", "text")
_KIND_WEIGHTS = (0.22, 0.22, 0.2, 0.14, 0.12, 0.1)


@dataclass
class ChatSample:
    """One synthetic conversation: turns as (role, text) with ``<image>`` placeholders in user text,
    the images in placeholder order, an optional system prompt and what kind of question it is."""

    kind: str
    turns: list[tuple[str, str]]
    images: list[Image.Image] = field(default_factory=list)
    system: str | None = None


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def draw_count_image(shape: str, colour: str, count: int, background: str, *, image_size: int,
                     rng: np.random.Generator) -> Image.Image:
    """``count`` (1-4) shapes of one kind and colour in distinct cells of a 2x2 grid."""
    side = image_size * _SUPERSAMPLE
    cells = rng.permutation(len(_CELLS))[:count]
    mask = np.zeros((side, side), dtype=np.float32)
    for c in cells:
        fx, fy = _CELLS[int(c)]
        r = rng.uniform(0.13, 0.17) * side
        angle = math.radians(rng.uniform(-12, 12))
        mask = np.maximum(mask, _draw_mask(shape, (fx + rng.uniform(-0.02, 0.02)) * side,
                                           (fy + rng.uniform(-0.02, 0.02)) * side, r, angle, side))
    alpha = np.asarray(Image.fromarray(mask.astype(np.uint8)).reduce(_SUPERSAMPLE), np.float32)[..., None] / 255.0
    fill = np.array(COLOURS[colour], dtype=np.float32)
    base = np.empty((image_size, image_size, 3), dtype=np.float32)
    base[:] = BACKGROUNDS[background]
    pixels = base * (1.0 - alpha) + fill * alpha
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")


def _scene(rng: np.random.Generator, shape: str | None = None) -> Scene:
    return sample_scene(rng, shape=shape or _pick(rng, CHAT_SHAPES), colour=_pick(rng, CHAT_COLOURS))


def _colour(rng: np.random.Generator, size: int) -> ChatSample:
    scene = _scene(rng)
    image = render_scene(scene, image_size=size, rng=rng)
    q = _pick(rng, (f"What colour is the {scene.shape}?", f"Which colour does the {scene.shape} have?"))
    turns = [("user", f"<image>\n{q}"), ("assistant", f"{scene.colour}")]
    if rng.random() < 0.6:
        turns += [("user", "And where is it?"), ("assistant", f"It is {_POSITION_PHRASES[scene.position]}.")]
    return ChatSample("colour", turns, [image])


def _count(rng: np.random.Generator, size: int) -> ChatSample:
    shape, colour = _pick(rng, CHAT_SHAPES), _pick(rng, CHAT_COLOURS)
    n = int(rng.integers(1, 5))
    background = _pick(rng, _contrasting_backgrounds(colour))
    image = draw_count_image(shape, colour, n, background, image_size=size, rng=rng)
    turns = [("user", f"<image>\nHow many {_plural(shape)} are there?"), ("assistant", NUMBER_WORDS[n])]
    if rng.random() < 0.6:
        turns += [("user", f"What colour {'are they' if n > 1 else 'is it'}?"), ("assistant", colour)]
    return ChatSample("count", turns, [image])


def _position(rng: np.random.Generator, size: int) -> ChatSample:
    scene = _scene(rng)
    image = render_scene(scene, image_size=size, rng=rng)
    # The placeholder after the question, as some datasets write it.
    turns = [("user", f"Where is the {scene.colour} {scene.shape}?\n<image>"),
             ("assistant", _POSITION_PHRASES[scene.position])]
    if rng.random() < 0.5:
        turns += [("user", "What shape is it?"), ("assistant", scene.shape)]
    return ChatSample("position", turns, [image])


def _describe(rng: np.random.Generator, size: int) -> ChatSample:
    scene = _scene(rng)
    image = render_scene(scene, image_size=size, rng=rng)
    answer = (f"The image shows {_a(scene.size_word)} {scene.colour} {scene.shape} "
              f"{_POSITION_PHRASES[scene.position]} on {_a(scene.background)} background.")
    return ChatSample("describe", [("user", "<image>\nDescribe the image."), ("assistant", answer)], [image])


def _compare(rng: np.random.Generator, size: int) -> ChatSample:
    first = _scene(rng)
    second = _scene(rng, shape=_pick(rng, [s for s in CHAT_SHAPES if s != first.shape]))
    images = [render_scene(first, image_size=size, rng=rng), render_scene(second, image_size=size, rng=rng)]
    which = int(rng.integers(2))
    target = (first, second)[which].shape
    turns = [("user", f"<image>\n<image>\nWhich image shows {_a(target)}, the first or the second?"),
             ("assistant", f"The {('first', 'second')[which]}."),
             ("user", "What colour is the shape in the other one?"),
             ("assistant", (second, first)[which].colour)]
    return ChatSample("compare", turns, images)


def _text(rng: np.random.Generator, size: int) -> ChatSample:
    a, b = int(rng.integers(0, 5)), int(rng.integers(0, 5))
    if rng.random() < 0.5:
        turns = [("user", f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?"), ("assistant", str(a + b))]
    else:
        shape = _pick(rng, CHAT_SHAPES)
        turns = [("user", f"Spell the word {shape}."), ("assistant", " ".join(shape))]
    return ChatSample("text", turns, [])


_MAKERS: dict[str, Callable[[np.random.Generator, int], ChatSample]] = {
    "colour": _colour, "count": _count, "position": _position, "describe": _describe, "compare": _compare,
    "text": _text,
}


def chat_samples(n: int, seed: int, *, image_size: int = 32, kinds: tuple[str, ...] = KINDS,
                 system_rate: float = 0.25, follow_ups: bool = True) -> list[ChatSample]:
    """``n`` conversations; conversation ``i`` depends on (seed, i) only, so the first k are the same
    for any n >= k. ``kinds`` restricts the question kinds (the weights of those kept renormalised);
    without ``follow_ups`` each conversation stops after its first answer (the same images and first
    turn as with them: one question per image, what a model learns fastest)."""
    unknown = [k for k in kinds if k not in _MAKERS]
    if unknown:
        raise ValueError(f"unknown conversation kinds {unknown}; choose from {', '.join(KINDS)}")
    weights = np.array([w for k, w in zip(KINDS, _KIND_WEIGHTS) if k in kinds])
    chosen = [k for k in KINDS if k in kinds]
    out = []
    for i in range(n):
        rng = _stream(seed, "chat", str(i))
        kind = chosen[int(rng.choice(len(chosen), p=weights / weights.sum()))]
        sample = _MAKERS[kind](rng, image_size)
        if not follow_ups:
            sample.turns = sample.turns[:2]
        if rng.random() < system_rate:
            sample.system = _pick(rng, SYSTEM_PROMPTS)
        out.append(sample)
    return out


@functools.lru_cache(maxsize=1)
def _texts() -> tuple[str, ...]:
    texts: list[str] = []
    for s in chat_samples(200, seed=12345, image_size=8):
        texts += [t.replace("<image>", "") for _, t in s.turns] + ([s.system] if s.system else [])
    return tuple(texts)


def chat_texts() -> list[str]:
    """Text in the style of these conversations, for training a tiny model's tokenizer."""
    return list(_texts())


def _write_images(out_dir: Path, samples: list[ChatSample]) -> list[list[str]]:
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(samples):
        names = [f"images/{i:05d}_{j}.png" for j in range(len(s.images))]
        for name, image in zip(names, s.images):
            _save_png(image, out_dir / name)
        paths.append(names)
    return paths


def write_llava_json(out_dir: Path, n: int, seed: int, *, image_size: int = 32, name: str = "chat.json",
                     kinds: tuple[str, ...] = KINDS, follow_ups: bool = True) -> Path:
    """``out_dir/<name>`` in LLaVA's layout (``image`` for one image, ``images`` for several, none for
    text-only rows) and ``out_dir/images/``; returns the json path."""
    out_dir = Path(out_dir)
    samples = chat_samples(n, seed, image_size=image_size, kinds=kinds, follow_ups=follow_ups)
    records = []
    for i, (s, paths) in enumerate(zip(samples, _write_images(out_dir, samples))):
        roles = {"user": "human", "assistant": "gpt", "system": "system"}
        conv = ([{"from": "system", "value": s.system}] if s.system else [])
        conv += [{"from": roles[role], "value": text} for role, text in s.turns]
        record: dict[str, object] = {"id": f"{s.kind}-{i:05d}"}
        if len(paths) == 1:
            record["image"] = paths[0]
        elif paths:
            record["images"] = paths
        record["conversations"] = conv
        records.append(record)
    path = out_dir / name
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def _parts(text: str) -> list[dict[str, str]]:
    """``"<image>\\nWhat…"`` → typed content parts in order."""
    parts: list[dict[str, str]] = []
    for k, piece in enumerate(text.split("<image>")):
        if k:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def write_messages_jsonl(out_dir: Path, n: int, seed: int, *, image_size: int = 32, name: str = "chat.jsonl",
                         kinds: tuple[str, ...] = KINDS, follow_ups: bool = True) -> Path:
    """``out_dir/<name>``: one ``{"messages", "images"}`` object per line, content as typed parts
    (system prompts and assistant answers as plain strings, as TRL's examples write them)."""
    out_dir = Path(out_dir)
    samples = chat_samples(n, seed, image_size=image_size, kinds=kinds, follow_ups=follow_ups)
    lines = []
    for s, paths in zip(samples, _write_images(out_dir, samples)):
        messages: list[dict[str, object]] = [{"role": "system", "content": s.system}] if s.system else []
        messages += [{"role": role, "content": _parts(text) if role == "user" else text} for role, text in s.turns]
        lines.append(json.dumps({"messages": messages, "images": paths}))
    path = out_dir / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
