"""Boxes drawn on images (PIL ImageDraw): ``predict --save-images`` and the report's detection samples."""

from __future__ import annotations

import base64
import io
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

#: Outline colours; a label's colour is fixed by its name, so a class looks the same in every picture.
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))


def colour_of(label: str) -> tuple[int, int, int]:
    return PALETTE[zlib.crc32(label.encode()) % len(PALETTE)]


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str],
               scores: Sequence[float | None] | None = None) -> Image.Image:
    """A copy of ``image`` with each (x0, y0, x1, y1) pixel box outlined in its label's colour and
    captioned with its label (and score)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 200))
    for i, (box, label) in enumerate(zip(boxes, labels)):
        colour = colour_of(label)
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle((x0, y0, max(x0, x1), max(y0, y1)), outline=colour, width=width)
        score = scores[i] if scores is not None else None
        caption = label if score is None else f"{label} {float(score):.2f}"
        draw.text((x0 + 1, max(0.0, y0 - 10)), caption, fill=colour)
    return out


def boxes_png_uri(path: str | Path, boxes: Sequence[dict[str, Any]], *, size: int = 160) -> str:
    """An inline PNG of the image at ``path`` with ``boxes`` ({"box", "label", "score"?}) drawn,
    scaled so its longer side is ``size`` pixels (drawn at full size first, so boxes stay exact)."""
    from modaltune.data.media import load_image

    image = load_image(Path(path))
    drawn = draw_boxes(image, [b["box"] for b in boxes], [str(b["label"]) for b in boxes],
                       [b.get("score") for b in boxes])
    scale = size / max(drawn.size)
    if scale < 1 or max(drawn.size) < size // 2:  # small images are enlarged, so boxes can be seen
        drawn = drawn.resize((max(1, round(drawn.width * scale)), max(1, round(drawn.height * scale))),
                             Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    drawn.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
