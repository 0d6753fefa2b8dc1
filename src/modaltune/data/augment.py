"""Training-time image augmentation: random resized crop + horizontal flip, in plain PIL.

All randomness comes from the ``rng`` argument, so a loader can seed one ``random.Random`` per
(epoch, sample) and reproduce any batch exactly, independent of worker count or order.
"""

from __future__ import annotations

import math
import random

from PIL import Image


def augment_image(
    img: Image.Image,
    rng: random.Random,
    *,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> Image.Image:
    """A random crop covering ``scale`` of the area at aspect ``ratio``, resized back to ``img.size``,
    then mirrored left-right with probability 0.5 when ``flip``.

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
    if flip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


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
