"""The simple boxes JSONL: one image per line, ``{"image": "a.jpg", "boxes": [[x, y, w, h], ...],
"labels": ["cat", ...]}``, with optional ``width`` / ``height`` (the annotated image size; read from
the image header when absent) and ``iscrowd`` (a list beside ``labels``); row id ``<file>:<line>``.

The reader's options (``--box-format``, ``--normalized``) say how the four numbers are written:
``xywh`` (top-left corner and size, COCO's; the default), ``xyxy`` (corners) or ``cxcywh`` (centre
and size, YOLO's and DETR's), in pixels or, with ``normalized``, as fractions of the image's width
and height. The categories are the file's labels, sorted.

Sniffed from the first line: a JSON object with ``boxes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from modaltune.data.boxes import BOX_FORMATS
from modaltune.data.fields import Field
from modaltune.data.readers.base import Reader, ReadResult, Source, read_text
from modaltune.data.readers.detection import RawBox, check_detection_fields, detection_row, first_record
from modaltune.data.readers.records import LineError
from modaltune.data.readers.tabular import _jsonl_records
from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError

_OWN_KEYS = {"image", "boxes", "labels", "width", "height", "iscrowd"}


class BoxesJsonlReader(Reader):
    name = "boxes-jsonl"
    summary = ("a .jsonl of boxes: one object per line with 'image', 'boxes' ([[x, y, w, h], ...]; "
               "--box-format, --normalized) and 'labels'")
    options: ClassVar[tuple[str, ...]] = ("box_format", "normalized")

    def sniff(self, source: Source) -> bool:
        if source.is_dir or source.suffix != ".jsonl":
            return False
        first = first_record(source)
        return first is not None and "boxes" in first

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str,
             box_format: str | None = None, normalized: bool = False) -> ReadResult:
        path = source.path
        box_format = box_format or "xywh"
        if box_format not in BOX_FORMATS:
            raise DataError(f"unknown box format {box_format!r}; use one of {', '.join(BOX_FORMATS)}")
        check_detection_fields(path, "a boxes JSONL file", require)
        root = path.parent.resolve()
        name = f"{id_prefix}{path.name}"
        parsed = [(f"{name}:{line}", record) for line, record in _jsonl_records(read_text(path))]
        if not parsed:
            raise DataError(f"{path} has no lines. Write one object per image: "
                            '{"image": "a.jpg", "boxes": [[x, y, w, h]], "labels": ["cat"]}')
        categories = tuple(sorted({str(label).strip() for _, r in parsed if isinstance(r, dict)
                                   and isinstance(r.get("labels"), list) for label in r["labels"]
                                   if isinstance(label, (str, int)) and str(label).strip()}))
        rows: list[Row] = []
        bad: list[BadRow] = []
        for row_id, record in parsed:
            row = _row(row_id, record, root=root, categories=categories, box_format=box_format,
                       normalized=normalized)
            if isinstance(row, BadRow):
                bad.append(row)
            else:
                rows.append(row)
        return rows, bad, root


def _row(row_id: str, record: dict[str, Any] | LineError, *, root: Path, categories: tuple[str, ...],
         box_format: str, normalized: bool) -> Row | BadRow:
    if isinstance(record, LineError):
        return BadRow(row_id, record.reason, record.detail)
    if "image" not in record:
        return BadRow(row_id, "missing_field", "no 'image' (the image file, relative to this file's folder)")
    boxes, labels = record.get("boxes"), record.get("labels", [])
    if not isinstance(boxes, list):
        return BadRow(row_id, "bad_box" if boxes is not None else "missing_field",
                      "'boxes' must be a list of [4 numbers] (write [] for an image with no objects)")
    if not isinstance(labels, list) or len(labels) != len(boxes):
        shown = len(labels) if isinstance(labels, list) else type(labels).__name__
        return BadRow(row_id, "missing_field", f"'labels' must be a list with one name per box: {len(boxes)} boxes, "
                                               f"labels {shown}")
    crowd = record.get("iscrowd", [0] * len(boxes))
    if not isinstance(crowd, list) or len(crowd) != len(boxes):
        return BadRow(row_id, "bad_json", "'iscrowd' must be a list with one 0/1 per box")
    raw = []
    for k, (coords, label, is_crowd) in enumerate(zip(boxes, labels, crowd)):
        if not isinstance(label, (str, int)) or isinstance(label, bool) or not str(label).strip():
            return BadRow(row_id, "unknown_category", f"box {k}: label {label!r} is not a category name")
        raw.append(RawBox(str(label).strip(), coords, iscrowd=is_crowd, where=f"box {k}"))
    size = (record["width"], record["height"]) if "width" in record and "height" in record else None
    extra = {k: v for k, v in record.items() if k not in _OWN_KEYS}
    return detection_row(row_id, record["image"], raw, root=root, categories=categories, size=size,
                         box_format=box_format, normalized=normalized, extra=extra)
