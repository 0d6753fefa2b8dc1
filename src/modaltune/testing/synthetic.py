"""A procedural "shapes world": coloured shapes on backgrounds, with captions and class folders.

Used by the offline demo, tests and benchmarks. Everything is a pure function of a seed (numpy
Generators only, never the global RNGs), and each class/split draws from its own stream, so
asking for more training images keeps the first ones and leaves val/test untouched.

Styles give a controllable domain shift: the same scene drawn `plain`, over `noise`, over
`stripes`, as an `outline`, `dark` (under-exposed) or blurred (`blur`).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 215, 40),
    "purple": (140, 60, 185),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS: dict[str, RGB] = {
    "white": (250, 250, 250),
    "grey": (128, 128, 128),
    "black": (10, 10, 10),
    "beige": (225, 210, 180),
    "navy": (25, 35, 80),
}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
STYLES = ("plain", "noise", "stripes", "outline", "dark", "blur")

# Shape centre as a fraction of the image side, and the radius range per size word.
_CENTRES = {
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "centre": (0.5, 0.5),
}
_RADII = {"small": (0.12, 0.15), "large": (0.21, 0.25)}
_POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
_SUPERSAMPLE = 4  # shapes are drawn 4x larger and box-filtered down: cheap anti-aliasing
_MIN_CONTRAST = 120.0  # Euclidean RGB distance, so a shape never vanishes into its background


# --------------------------------------------------------------------------- geometry

Point = tuple[float, float]


def _regular(n: int, start: float = -math.pi / 2) -> list[Point]:
    return [(math.cos(start + 2 * math.pi * i / n), math.sin(start + 2 * math.pi * i / n)) for i in range(n)]


def _star(points: int = 5, inner: float = 0.45) -> list[Point]:
    outer = _regular(2 * points)
    return [
        (x * (1 if i % 2 == 0 else inner), y * (1 if i % 2 == 0 else inner)) for i, (x, y) in enumerate(outer)
    ]


def _cross(arm: float = 0.34) -> list[Point]:
    a = arm
    return [
        (-a, -1),
        (a, -1),
        (a, -a),
        (1, -a),
        (1, a),
        (a, a),
        (a, 1),
        (-a, 1),
        (-a, a),
        (-1, a),
        (-1, -a),
        (-a, -a),
    ]


def _heart(steps: int = 48) -> list[Point]:
    # The classic parametric heart, scaled into the unit box (y grows downwards in images).
    pts = []
    for i in range(steps):
        t = 2 * math.pi * i / steps
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17, -(y + 2.5) / 15))
    return pts


# Unit polygons (radius 1 around the origin); circles, rings and crescents are drawn as ellipses.
_POLYGONS: dict[str, list[Point]] = {
    "square": [(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)],
    "triangle": [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)],
    "star": _star(),
    "cross": _cross(),
    "diamond": [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)],
    "hexagon": _regular(6, start=0.0),
    "heart": _heart(),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "heart", "hexagon", "crescent")


def _draw_mask(shape: str, cx: float, cy: float, r: float, angle: float, side: int) -> np.ndarray:
    """Filled shape as a uint8 mask of `side` x `side` pixels (already supersampled)."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)

    def disc(x: float, y: float, radius: float, fill: int) -> None:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)

    if shape == "circle":
        disc(cx, cy, r, 255)
    elif shape == "ring":
        disc(cx, cy, r, 255)
        disc(cx, cy, 0.55 * r, 0)
    elif shape == "crescent":
        disc(cx, cy, r, 255)
        disc(cx + 0.45 * r * math.cos(angle), cy - 0.45 * r * math.sin(angle) - 0.25 * r, 0.85 * r, 0)
    elif shape in _POLYGONS:
        cos, sin = math.cos(angle), math.sin(angle)
        points = [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in _POLYGONS[shape]]
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    return np.asarray(mask)


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion by a k x k square, separable; PIL's MinFilter is ~50x slower here."""
    out = mask
    for axis in (0, 1):
        padded = np.pad(out, [(k // 2, k // 2) if a == axis else (0, 0) for a in (0, 1)])
        n = out.shape[axis]
        shifted = [np.take(padded, range(i, i + n), axis=axis) for i in range(k)]
        out = np.minimum.reduce(shifted)
    return out


# --------------------------------------------------------------------------- backgrounds and styles


def _background(name: str, style: str, side: int, rng: np.random.Generator) -> np.ndarray:
    base = np.empty((side, side, 3), dtype=np.float32)
    base[:] = BACKGROUNDS[name]
    if style == "noise":
        base += rng.normal(0.0, 45.0, size=base.shape).astype(np.float32)
    elif style == "stripes":
        period = max(4, side // int(rng.integers(4, 9)))
        phase = int(rng.integers(0, period))
        yy, xx = np.mgrid[0:side, 0:side]
        stripe = ((xx + yy if rng.random() < 0.5 else xx - yy) + phase) // (period // 2) % 2 == 1
        # The second stripe colour: a clearly lighter (or, for light backgrounds, darker) shade.
        other = np.array(BACKGROUNDS[name], dtype=np.float32)
        other = np.where(other > 127, other - 60, other + 60)
        base[stripe] = other
    return base


def _finish(pixels: np.ndarray, style: str) -> Image.Image:
    if style == "dark":
        pixels = pixels * 0.4
    image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")
    if style == "blur":
        image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, image.width / 40)))
    return image


# --------------------------------------------------------------------------- rendering


def render(
    shape: str,
    colour: str,
    *,
    size_word: str = "large",
    position: str = "centre",
    background: str = "white",
    style: str = "plain",
    image_size: int = 64,
    rng: np.random.Generator | None = None,
) -> Image.Image:
    """Draw one shape. `rng` jitters position, radius, rotation and colour, and draws the noise."""
    for value, allowed, what in [
        (colour, COLOURS, "colour"),
        (size_word, SIZES, "size_word"),
        (position, POSITIONS, "position"),
        (background, BACKGROUNDS, "background"),
        (style, STYLES, "style"),
    ]:
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
    rng = rng if rng is not None else np.random.default_rng(0)

    side = image_size * _SUPERSAMPLE
    fx, fy = _CENTRES[position]
    cx = (fx + rng.uniform(-0.03, 0.03)) * side
    cy = (fy + rng.uniform(-0.03, 0.03)) * side
    r = rng.uniform(*_RADII[size_word]) * side
    angle = math.radians(rng.uniform(-12, 12))  # small, so a square never turns into a diamond
    mask = _draw_mask(shape, cx, cy, r, angle, side)
    if style == "outline":
        mask = mask - _erode(mask, max(3, int(0.22 * r)) | 1)
    # Box-filter down to the output size: soft edges, float alpha in [0, 1].
    alpha = np.asarray(Image.fromarray(mask).reduce(_SUPERSAMPLE), dtype=np.float32)[..., None] / 255.0

    fill = np.clip(np.array(COLOURS[colour], dtype=np.float32) + rng.normal(0.0, 8.0, size=3), 0, 255)
    pixels = _background(background, style, image_size, rng) * (1.0 - alpha) + fill * alpha
    return _finish(pixels, style)


# --------------------------------------------------------------------------- scenes and captions


@dataclass(frozen=True)
class Scene:
    """Everything that decides what an image shows (and so what its caption may say)."""

    shape: str
    colour: str
    size_word: str
    position: str
    background: str
    style: str


def _contrasting_backgrounds(colour: str) -> list[str]:
    fg = np.array(COLOURS[colour], dtype=np.float32)
    return [
        name
        for name, rgb in BACKGROUNDS.items()
        if np.linalg.norm(fg - np.array(rgb, np.float32)) >= _MIN_CONTRAST
    ]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(
    rng: np.random.Generator,
    *,
    styles: Sequence[str] = ("plain",),
    shape: str | None = None,
    colour: str | None = None,
) -> Scene:
    """A random scene; `shape` / `colour` pin that attribute (used for class folders)."""
    shape = shape or _pick(rng, SHAPES)
    colour = colour or _pick(rng, list(COLOURS))
    return Scene(
        shape=shape,
        colour=colour,
        size_word=_pick(rng, SIZES),
        position=_pick(rng, POSITIONS),
        background=_pick(rng, _contrasting_backgrounds(colour)),
        style=_pick(rng, styles),
    )


def render_scene(
    scene: Scene, *, image_size: int = 64, rng: np.random.Generator | None = None
) -> Image.Image:
    return render(
        scene.shape,
        scene.colour,
        size_word=scene.size_word,
        position=scene.position,
        background=scene.background,
        style=scene.style,
        image_size=image_size,
        rng=rng,
    )


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


# Every template names the shape and colour; size, position and background only some of the time.
_TEMPLATES: tuple[Callable[[Scene], str], ...] = (
    lambda s: f"{_a(s.colour)} {s.shape}",
    lambda s: f"{_a(s.size_word)} {s.colour} {s.shape}",
    lambda s: f"{_a(s.colour)} {s.shape} {_POSITION_PHRASES[s.position]}",
    lambda s: f"{_a(s.size_word)} {s.colour} {s.shape} {_POSITION_PHRASES[s.position]}",
    lambda s: f"{_a(s.colour)} {s.shape} on {_a(s.background)} background",
    lambda s: f"{_a(s.colour)} {s.shape} {_POSITION_PHRASES[s.position]} on {_a(s.background)} background",
    lambda s: f"there is {_a(s.size_word)} {s.colour} {s.shape}",
    lambda s: f"a picture of {_a(s.colour)} {s.shape}",
    lambda s: f"{_POSITION_PHRASES[s.position]} there is {_a(s.colour)} {s.shape}",
    lambda s: f"a {s.shape} coloured {s.colour}",
)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One of several templated captions for `scene`."""
    return _TEMPLATES[int(rng.integers(len(_TEMPLATES)))](scene)


def scene_corpus(
    n: int, seed: int, *, image_size: int = 64, styles: Sequence[str] = ("plain",)
) -> list[tuple[Scene, Image.Image, str]]:
    """`n` (scene, image, caption) triples; the scene says what was drawn."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, styles=styles)
        out.append((scene, render_scene(scene, image_size=image_size, rng=rng), caption(scene, rng)))
    return out


def caption_corpus(
    n: int, seed: int, *, image_size: int = 64, styles: Sequence[str] = ("plain",)
) -> list[tuple[Image.Image, str]]:
    """`n` (image, caption) pairs; the first k are the same for any n >= k."""
    return [
        (image, text) for _scene, image, text in scene_corpus(n, seed, image_size=image_size, styles=styles)
    ]


def vocabulary_texts() -> list[str]:
    """Every caption word in context: enough text to train a tokenizer for this world."""
    words = [*SHAPES, *COLOURS, *SIZES, *BACKGROUNDS]
    rng = np.random.default_rng(0)
    texts = [caption(sample_scene(rng, styles=STYLES), rng) for _ in range(400)]
    return texts + [f"a photo of a {word}" for word in words]


# --------------------------------------------------------------------------- writing to disk


def _save_png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG", compress_level=1)  # level 1: 3x faster, files only a bit larger


def write_caption_corpus(
    out_dir: Path, n: int, seed: int, *, image_size: int = 64, styles: Sequence[str] = ("plain",)
) -> Path:
    """Write `images/NNNNN.png` and `captions.jsonl` (paths relative to it); return the jsonl path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, text) in enumerate(caption_corpus(n, seed, image_size=image_size, styles=styles)):
        rel = f"images/{i:05d}.png"
        _save_png(image, out_dir / rel)
        lines.append(json.dumps({"image": rel, "text": text}))
    manifest = out_dir / "captions.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


#: Question templates of the VQA world: (question, the scene attribute that answers it).
VQA_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("what colour is the {shape}?", "colour"),
    ("what shape is this?", "shape"),
    ("what colour is the background?", "background"),
    ("is the {shape} {size_word}?", "size_word"),
)


def vqa_texts() -> list[str]:
    """Every question and answer word of the VQA world (for a tokenizer)."""
    rng = np.random.default_rng(1)
    texts = []
    for _ in range(200):
        scene = sample_scene(rng, styles=STYLES)
        for question, attribute in VQA_QUESTIONS:
            texts.append(f"{question.format(**scene.__dict__)} {getattr(scene, attribute)} yes no")
    return texts


def write_vqa_corpus(
    out_dir: Path, n: int, seed: int, *, image_size: int = 64, styles: Sequence[str] = ("plain",),
    annotators: int = 3, noise: float = 0.1,
) -> Path:
    """Write `images/NNNNN.png` and `vqa.jsonl`: one question per image with ``annotators`` answers, a
    ``noise`` share of them a wrong but plausible answer (as real annotators disagree)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    choices = {"colour": list(COLOURS), "shape": list(SHAPES), "background": list(BACKGROUNDS)}
    lines = []
    for i, (scene, image, _text) in enumerate(scene_corpus(n, seed, image_size=image_size, styles=styles)):
        rel = f"images/{i:05d}.png"
        _save_png(image, out_dir / rel)
        question, attribute = VQA_QUESTIONS[int(rng.integers(len(VQA_QUESTIONS)))]
        if attribute == "size_word":
            asked = _pick(rng, SIZES)
            question, truth = question.format(shape=scene.shape, size_word=asked), \
                ("yes" if asked == scene.size_word else "no")
            wrong = "no" if truth == "yes" else "yes"
        else:
            question, truth = question.format(shape=scene.shape), getattr(scene, attribute)
            wrong = _pick(rng, [c for c in choices[attribute] if c != truth])
        answers = [wrong if rng.random() < noise else truth for _ in range(annotators)]
        lines.append(json.dumps({"image": rel, "question": question, "answers": answers}))
    manifest = out_dir / "vqa.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def write_multi_caption_corpus(
    out_dir: Path, n: int, seed: int, *, captions: int = 3, image_size: int = 64,
    styles: Sequence[str] = ("plain",), coco: bool = False,
) -> Path:
    """``captions`` different captions per image: `captions.jsonl` (one line per caption), or with
    ``coco`` a COCO captions `captions.json`."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 7)
    images, annotations, lines = [], [], []
    for i, (scene, image, _text) in enumerate(scene_corpus(n, seed, image_size=image_size, styles=styles)):
        rel = f"images/{i:05d}.png"
        _save_png(image, out_dir / rel)
        images.append({"id": i, "file_name": rel, "width": image_size, "height": image_size})
        for k in range(captions):
            text = caption(scene, rng)
            annotations.append({"id": i * captions + k, "image_id": i, "caption": text})
            lines.append(json.dumps({"image": rel, "text": text}))
    if coco:
        manifest = out_dir / "captions.json"
        manifest.write_text(json.dumps({"images": images, "annotations": annotations}), encoding="utf-8")
    else:
        manifest = out_dir / "captions.jsonl"
        manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def _stream(seed: int, *keys: str) -> np.random.Generator:
    """An independent generator per (seed, keys): crc32 is stable across processes, unlike hash()."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def write_classification_folder(
    out_dir: Path,
    *,
    classes: Iterable[str],
    attribute: Literal["shape", "colour"],
    per_class: dict[str, int],
    seed: int,
    style: str = "plain",
    image_size: int = 64,
) -> Path:
    """Write `out_dir/<split>/<label>/NNNN.png` for each split in `per_class` (e.g. train/val/test).

    Images are labelled by `attribute`; everything else about them is random. Each (split, label)
    has its own random stream, so changing the train count does not change val or test.
    """
    classes = list(classes)
    allowed = SHAPES if attribute == "shape" else tuple(COLOURS) if attribute == "colour" else None
    if allowed is None:
        raise ValueError(f"attribute must be 'shape' or 'colour', not {attribute!r}")
    unknown = [c for c in classes if c not in allowed]
    if unknown:
        raise ValueError(f"unknown {attribute} classes {unknown}; choose from {', '.join(allowed)}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")

    out_dir = Path(out_dir)
    for split, count in per_class.items():
        for label in classes:
            folder = out_dir / split / label
            folder.mkdir(parents=True, exist_ok=True)
            rng = _stream(seed, split, label)
            for i in range(count):
                scene = sample_scene(rng, styles=(style,), **{attribute: label})
                _save_png(render_scene(scene, image_size=image_size, rng=rng), folder / f"{i:04d}.png")
    return out_dir
