"""What the detection readers (``coco-instances``, ``odvg``, ``boxes-jsonl``) share: one image's
annotation → a `Row` with ``image`` and ``boxes`` (see `data.boxes` for what the row carries), or a
`BadRow` with the first problem found.

Boxes are converted to xyxy pixels and clipped to the image here, at read time, because only the
reader knows the file's box format and the annotated image size; validation later compares that
size with the decoded image (``image_size_mismatch``) and decodes the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modaltune.data.boxes import BOXES, Box, clip_boxes, fixed_counts, image_size, to_xyxy
from modaltune.data.fields import IMAGE, Field, FieldError, as_fields, describe
from modaltune.data.media.base import MediaError
from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError


class RawBox:
    """A box as the file writes it, before conversion: its label (a category name), its four
    numbers, the crowd flag and COCO's area, and where it came from (for messages)."""

    __slots__ = ("label", "coords", "iscrowd", "area", "where")

    def __init__(self, label: str, coords: Any, *, iscrowd: Any = False, area: Any = None, where: str = "") -> None:
        self.label = label
        self.coords = coords
        self.iscrowd = iscrowd
        self.area = area
        self.where = where


def detection_row(
    row_id: str,
    image: Any,
    boxes: Sequence[RawBox],
    *,
    root: Path,
    categories: tuple[str, ...],
    size: Any = None,
    box_format: str = "xywh",
    normalized: bool = False,
    extra: dict[str, Any] | None = None,
) -> Row | BadRow:
    """One image and its boxes → a `Row`, or the `BadRow` of its first problem.

    ``size`` is the annotated (width, height), or None to read it from the image header (a file
    that cannot be opened is then reported with the decoder's reason code). Each box is converted
    from ``box_format`` (fractions of the size with ``normalized``), its label checked against
    ``categories`` (when given), and clipped to the image within the tolerance (counted in
    ``extra["fixed"]``)."""
    try:
        path = IMAGE.parse(image, root=root, column="image")
    except FieldError as exc:
        return BadRow(row_id, exc.reason, exc.detail)
    if path is None:
        return BadRow(row_id, "missing_field", "no image file name")
    if size is None:
        try:
            size = image_size(path)
        except MediaError as exc:
            return BadRow(row_id, exc.reason, exc.detail)
    elif not _valid_size(size):
        return BadRow(row_id, "bad_json", f"the image width and height must be positive whole numbers, got {size!r}")
    size = (int(size[0]), int(size[1]))
    known = set(categories)
    converted = []
    for raw in boxes:
        where = f"{raw.where}: " if raw.where else ""
        if known and raw.label not in known:
            shown = ", ".join(categories[:10]) + (", …" if len(categories) > 10 else "")
            return BadRow(row_id, "unknown_category", f"{where}category {raw.label!r} is not one of {shown}")
        try:
            xyxy = to_xyxy(raw.coords, box_format, normalized=normalized, size=size)
        except FieldError as exc:
            return BadRow(row_id, exc.reason, where + exc.detail)
        area = raw.area if isinstance(raw.area, (int, float)) and not isinstance(raw.area, bool) and raw.area > 0 \
            else None
        converted.append(Box(raw.label, xyxy, iscrowd=bool(raw.iscrowd), area=float(area) if area else None))
    try:
        clipped, moved = clip_boxes(converted, size)
    except FieldError as exc:
        return BadRow(row_id, exc.reason, exc.detail)
    info = fixed_counts({**(extra or {}), "image_size": size, "categories": categories}, moved)
    return Row(row_id, image=path, boxes=clipped, extra=info)


def _valid_size(size: Any) -> bool:
    return (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and float(v).is_integer()
                    for v in size))


def check_detection_fields(path: Path, layout: str, require: Sequence[Field | str]) -> None:
    """`DataError` when the task needs a field a detection file cannot give (a caption, a label)."""
    fields = as_fields(require)
    missing = [f for f in fields if f.name not in (BOXES.name, IMAGE.name)
               and not (f.media and "image" in getattr(f, "kinds", ()))]
    if missing:
        raise DataError(
            f"{path} is {layout}: it gives each image its boxes, but this task needs {describe(fields)} "
            f"(no {', '.join(f.shown for f in missing)} here). Boxes are read by --task detect.")


def first_record(source: Any) -> dict[str, Any] | None:
    """The first non-blank line of a JSONL file as a JSON object, or None (for sniffing: reads at
    most 1 MB, never raises)."""
    import json

    try:
        with open(source.path, encoding="utf-8-sig") as f:
            for _ in range(1000):
                line = f.readline(1 << 20)
                if not line:
                    return None
                if line.strip():
                    obj = json.loads(line)
                    return obj if isinstance(obj, dict) else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return None
