"""Training-time augmentation: random resized crop + horizontal flip of an image, in plain PIL, with
the example's targets moved the same way.

All randomness comes from the ``rng`` argument, so a loader can seed one ``random.Random`` per
(epoch, sample) and reproduce any batch exactly, independent of worker count or order.

A transform that moves pixels returns its `Geometry` too, and `augment_example` hands it to every
field of the example (`data.fields.Field.transform`): a field whose values are image coordinates
(boxes, points) maps them, the others stay as they are. So a family whose targets live in the
image adds a field type, not a branch here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from modaltune.data.rows import Example


@dataclass(frozen=True)
class Geometry:
    """Where an augmented image's pixels come from: the ``crop`` (left, top, width, height) of the
    source image in pixels, resized to ``size`` (width, height), then mirrored left-right if ``flipped``."""

    crop: tuple[int, int, int, int]
    size: tuple[int, int]
    flipped: bool

    def map_xy(self, x: float, y: float) -> tuple[float, float]:
        """A point in source pixel coordinates → the same point in the augmented image."""
        left, top, width, height = self.crop
        out_x = (x - left) * self.size[0] / width
        out_y = (y - top) * self.size[1] / height
        return (self.size[0] - out_x if self.flipped else out_x), out_y

    def map_box(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float] | None:
        """An (x0, y0, x1, y1) box in source pixels → the box in the augmented image, clipped to it;
        None when nothing of it is left inside the crop."""
        (ax, ay), (bx, by) = self.map_xy(box[0], box[1]), self.map_xy(box[2], box[3])
        x0, x1 = sorted((ax, bx))
        y0, y1 = sorted((ay, by))
        x0, x1 = max(0.0, x0), min(float(self.size[0]), x1)
        y0, y1 = max(0.0, y0), min(float(self.size[1]), y1)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def augment_example(example: Example, media: dict[str, Any], rng: random.Random) -> tuple[Example, dict[str, Any]]:
    """Augment an example's decoded ``media`` and move its targets with them.

    Today the image is cropped and flipped (`augment_image`) and every registered field of the
    example gets the `Geometry` through ``Field.transform``; other media pass through unchanged.
    """
    from modaltune.data.fields import field_named

    if "image" not in media:
        return example, media
    image, geometry = augment_image_geometry(media["image"], rng)
    changes = {}
    for name, value in example.values.items():
        kind = field_named(name)
        if kind is not None:
            moved = kind.transform(value, geometry)
            if moved is not value:
                changes[name] = moved
    return (example.replace(**changes) if changes else example), {**media, "image": image}


def augment_image(
    img: Image.Image,
    rng: random.Random,
    *,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> Image.Image:
    """`augment_image_geometry` without the geometry: the augmented image alone."""
    return augment_image_geometry(img, rng, scale=scale, ratio=ratio, flip=flip)[0]


def augment_image_geometry(
    img: Image.Image,
    rng: random.Random,
    *,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> tuple[Image.Image, Geometry]:
    """A random crop covering ``scale`` of the area at aspect ``ratio``, resized back to ``img.size``,
    then mirrored left-right with probability 0.5 when ``flip``; and the `Geometry` that maps the
    source's coordinates onto the result.

    The crop search follows torchvision's ``RandomResizedCrop``: 10 tries at a random area and
    log-uniform aspect, then a centre crop clamped to ``ratio`` if none fits.
    """
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
    left, top, width, height = _crop_box(img.width, img.height, rng, scale, ratio)
    # Crop first: resize(box=...) would blend in pixels from outside the box at its edges.
    out = img.crop((left, top, left + width, top + height)).resize(img.size, Image.Resampling.BILINEAR)
    flipped = flip and rng.random() < 0.5
    if flipped:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out, Geometry(crop=(left, top, width, height), size=img.size, flipped=flipped)


def _crop_box(
    width: int, height: int, rng: random.Random, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    # Fallback: the largest centred crop whose aspect lies within ``ratio``.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, max(1, round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = max(1, round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h
