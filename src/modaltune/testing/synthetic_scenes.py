"""Synthetic detection scenes: coloured shapes on textured, noisy backgrounds, with exact boxes.

Everything is a pure function of the seed: `draw_scene` gives one image and its `Box`es,
`write_scenes` a whole set on disk as a COCO instances ``.json`` (and, on request, the simple
boxes JSONL and Grounding DINO's ODVG JSONL with its label map), all three describing the same
boxes. Images are small (64-128 px) so tests and the demo stay fast on a CPU.

A box is the exact pixel extent of its shape as drawn (PIL's ``getbbox`` of the shape's own mask:
x1, y1 exclusive), and shapes do not overlap, so every box is fully visible. A share of the images
(``negatives``) holds no object at all: valid negatives for a detector.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from modaltune.data.boxes import Box

#: The shapes that can be drawn, each a category by default.
SHAPES = ("circle", "square", "triangle", "star")
#: Saturated object colours, far from the muted backgrounds.
COLOURS = {"red": (220, 30, 30), "green": (30, 190, 50), "blue": (40, 70, 230), "yellow": (240, 220, 30)}


@dataclass(frozen=True)
class SceneFiles:
    """What `write_scenes` wrote: the COCO instances json (always), the optional JSONL files, the
    images folder, the category names in the files' order, and how many images hold no object."""

    root: Path
    coco: Path
    images: Path
    categories: tuple[str, ...]
    count: int
    negatives: int
    boxes: int
    jsonl: Path | None = None
    odvg: Path | None = None
    label_map: Path | None = None


def draw_scene(
    seed: int,
    *,
    size: tuple[int, int] = (96, 96),
    categories: tuple[str, ...] = ("circle", "square", "triangle"),
    max_objects: int = 3,
    negative: bool = False,
    colour_in_label: bool = False,
) -> tuple[Image.Image, list[Box]]:
    """One scene of ``size`` (width, height): 1..``max_objects`` shapes of ``categories`` (each a
    shape name from `SHAPES`) in random colours, sizes and places, or none when ``negative``.

    With ``colour_in_label`` a box's label is ``"red circle"`` (categories then come out as colour +
    shape, for prompts that need more than the shape)."""
    unknown = [c for c in categories if c not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; draw from {SHAPES}")
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    image = _background(size, rng, nprng)
    boxes: list[Box] = []
    if negative:
        return image, boxes
    draw = ImageDraw.Draw(image)
    taken: list[tuple[int, int, int, int]] = []
    short = min(size)
    for _ in range(rng.randint(1, max_objects)):
        for _attempt in range(20):  # find a free place; give up on this object if the scene is full
            side = rng.randint(max(8, short // 8), max(9, int(short * 0.45)))
            x0, y0 = rng.randint(0, size[0] - side), rng.randint(0, size[1] - side)
            bounds = (x0, y0, x0 + side, y0 + side)
            if all(_apart(bounds, other, gap=2) for other in taken):
                break
        else:
            continue
        shape = rng.choice(categories)
        colour_name = rng.choice(sorted(COLOURS))
        mask = Image.new("L", size, 0)
        _draw_shape(ImageDraw.Draw(mask), shape, bounds, rng, fill=255)
        extent = mask.getbbox()
        if extent is None:
            continue
        draw.bitmap((0, 0), mask, fill=COLOURS[colour_name])
        taken.append(bounds)
        label = f"{colour_name} {shape}" if colour_in_label else shape
        boxes.append(Box(label, tuple(float(v) for v in extent)))  # type: ignore[arg-type]
    return image, boxes


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _background(size: tuple[int, int], rng: random.Random, nprng: np.random.Generator) -> Image.Image:
    """A muted base colour, a gradient, a few faint stripes and pixel noise: texture for the model
    to see past, never saturated enough to look like an object."""
    w, h = size
    base = np.array([rng.randint(70, 170) for _ in range(3)], dtype=np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    gradient = (np.cos(angle) * xs / w + np.sin(angle) * ys / h)[..., None] * rng.uniform(-30, 30)
    period = rng.uniform(6, 16)
    stripes = (np.sin((xs * np.cos(angle + 1) + ys * np.sin(angle + 1)) * 2 * math.pi / period)[..., None]
               * rng.uniform(4, 12))
    noise = nprng.normal(0, rng.uniform(6, 14), size=(h, w, 3))
    pixels = np.clip(base + gradient + stripes + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").filter(ImageFilter.SMOOTH)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, bounds: tuple[int, int, int, int], rng: random.Random,
                fill: int) -> None:
    x0, y0, x1, y1 = bounds
    right, bottom = x1 - 1, y1 - 1  # PIL's ellipse/rectangle include their last coordinate
    if shape == "circle":
        draw.ellipse((x0, y0, right, bottom), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, right, bottom), fill=fill)
    elif shape == "triangle":
        apex = rng.uniform(x0 + (x1 - x0) * 0.2, x0 + (x1 - x0) * 0.8)
        draw.polygon([(apex, y0), (right, bottom), (x0, bottom)], fill=fill)
    else:  # star: five points, radius to the box's half side
        cx, cy, r = (x0 + right) / 2, (y0 + bottom) / 2, (right - x0) / 2
        points = [(cx + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
                   cy - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5)) for i in range(10)]
        draw.polygon(points, fill=fill)


def write_scenes(
    folder: str | Path,
    *,
    seed: int = 0,
    count: int = 32,
    size: tuple[int, int] | None = None,
    categories: tuple[str, ...] = ("circle", "square", "triangle"),
    max_objects: int = 3,
    negatives: float = 0.15,
    colour_in_label: bool = False,
    jsonl: bool = False,
    odvg: bool = False,
    name: str = "instances",
) -> SceneFiles:
    """``count`` scenes as PNGs under ``folder/images/`` and ``folder/<name>.json`` (COCO instances);
    with ``jsonl`` also ``<name>.jsonl`` (simple boxes JSONL: ``image``, ``boxes`` xywh pixels,
    ``labels``), with ``odvg`` ``<name>.odvg.jsonl`` + ``<name>.label_map.json``.

    ``size`` fixes every image's (width, height); by default each image gets its own between 64 and
    128 px a side (so batches mix sizes). A ``negatives`` share of the images holds no object.
    Scene ``i`` is `draw_scene` of a seed derived from ``(seed, i)``: the files are a pure function
    of the arguments.
    """
    root = Path(folder)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = tuple(f"{c} {s}" for c in sorted(COLOURS) for s in categories) if colour_in_label else tuple(categories)
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    negative_ids = set(rng.sample(range(count), round(count * negatives))) if count else set()
    coco: dict[str, Any] = {"info": {"description": f"modaltune synthetic scenes, seed {seed}"}, "images": [],
                            "annotations": [], "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}
    jsonl_lines, odvg_lines = [], []
    for i in range(count):
        scene_size = size or (rng.randint(64, 128), rng.randint(64, 128))
        image, boxes = draw_scene(rng.randrange(2**31), size=scene_size, categories=categories,
                                  max_objects=max_objects, negative=i in negative_ids,
                                  colour_in_label=colour_in_label)
        file_name = f"images/{i:04d}.png"
        image.save(root / file_name)
        w, h = image.size
        coco["images"].append({"id": i + 1, "file_name": file_name, "width": w, "height": h})
        for box in boxes:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1,
                                        "category_id": cat_id[box.label], "bbox": list(box.xywh),
                                        "area": box.width * box.height, "iscrowd": 0})
        jsonl_lines.append({"image": file_name, "boxes": [list(b.xywh) for b in boxes],
                            "labels": [b.label for b in boxes]})
        odvg_lines.append({"filename": file_name, "height": h, "width": w, "detection": {"instances": [
            {"bbox": list(b.xyxy), "label": cat_id[b.label] - 1, "category": b.label} for b in boxes]}})
    coco_path = root / f"{name}.json"
    coco_path.write_text(json.dumps(coco))
    files: dict[str, Path] = {}
    if jsonl:
        files["jsonl"] = root / f"{name}.jsonl"
        files["jsonl"].write_text("".join(json.dumps(line) + "\n" for line in jsonl_lines))
    if odvg:
        files["odvg"] = root / f"{name}.odvg.jsonl"
        files["odvg"].write_text("".join(json.dumps(line) + "\n" for line in odvg_lines))
        files["label_map"] = root / f"{name}.label_map.json"
        files["label_map"].write_text(json.dumps({str(i - 1): n for n, i in cat_id.items()}))
    return SceneFiles(root=root, coco=coco_path, images=images_dir, categories=names, count=count,
                      negatives=len(negative_ids), boxes=len(coco["annotations"]), **files)
