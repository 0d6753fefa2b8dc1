"""Grounding DINO's ODVG detection JSONL (Open-GroundingDino's training format): one image per line,
``{"filename": ..., "height": h, "width": w, "detection": {"instances": [{"bbox": [x0, y0, x1, y1],
"label": 0, "category": "charger"}, ...]}}``, boxes as corners in pixels; row id ``<file>:<line>``.

A box's category is its ``category`` name, else its ``label`` id looked up in the label map
(``{"0": "charger", ...}``) found beside the file as ``<stem>.label_map.json`` (the stem is the name
up to its first dot) or ``label_map.json``. The categories come out in label-id order: the label
map's, else the ids seen in the file. Lines of ODVG's *grounding* kind (``"grounding": {"caption",
"regions"}``, phrase grounding) carry no category list and are reported, not read.

Sniffed from the first line: a JSON object with ``filename`` and ``detection`` (or ``grounding``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modaltune.data.fields import Field
from modaltune.data.readers.base import Reader, ReadResult, Source, read_text
from modaltune.data.readers.detection import RawBox, check_detection_fields, detection_row, first_record
from modaltune.data.readers.records import LineError
from modaltune.data.readers.tabular import _jsonl_records
from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError


class OdvgReader(Reader):
    name = "odvg"
    summary = ("an ODVG .jsonl (Grounding DINO): one object per line with 'filename', 'width', 'height' and "
               "'detection': {'instances': [{'bbox': [x0, y0, x1, y1], 'label', 'category'}]}")

    def sniff(self, source: Source) -> bool:
        if source.is_dir or source.suffix != ".jsonl":
            return False
        first = first_record(source)
        return first is not None and "filename" in first and ("detection" in first or "grounding" in first)

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        path = source.path
        check_detection_fields(path, "an ODVG detection file", require)
        root = path.parent.resolve()
        name = f"{id_prefix}{path.name}"
        label_map = _label_map(path)
        parsed: list[tuple[str, dict[str, Any] | LineError]] = [
            (f"{name}:{line}", record) for line, record in _jsonl_records(read_text(path))]
        if not parsed:
            raise DataError(f"{path} has no lines. Write one ODVG object per image.")
        categories = _categories([r for _, r in parsed if isinstance(r, dict)], label_map)
        rows: list[Row] = []
        bad: list[BadRow] = []
        for row_id, record in parsed:
            row = _row(row_id, record, root=root, categories=categories, label_map=label_map)
            if isinstance(row, BadRow):
                bad.append(row)
            else:
                rows.append(row)
        return rows, bad, root


def _label_map(path: Path) -> dict[int, str] | None:
    for candidate in (path.with_name(path.name.split(".")[0] + ".label_map.json"), path.with_name("label_map.json")):
        if candidate.is_file():
            try:
                data = json.loads(read_text(candidate))
                return {int(k): str(v).strip() for k, v in data.items()}
            except (ValueError, AttributeError, TypeError) as exc:
                raise DataError(f"{candidate} must be a JSON object of label id → category name, like "
                                f'{{"0": "cat", "1": "dog"}}: {exc}') from exc
    return None


def _instances(record: dict[str, Any]) -> list[Any] | None:
    detection = record.get("detection")
    if not isinstance(detection, dict):
        return None
    instances = detection.get("instances", [])
    return instances if isinstance(instances, list) else None


def _categories(records: list[dict[str, Any]], label_map: dict[int, str] | None) -> tuple[str, ...]:
    """Category names in label-id order: the label map's, then ids seen in the file, then any
    category name that came without an id (sorted)."""
    by_id: dict[int, str] = dict(label_map or {})
    loose: set[str] = set()
    for record in records:
        for inst in _instances(record) or []:
            if not isinstance(inst, dict):
                continue
            label, category = inst.get("label"), inst.get("category")
            if isinstance(category, str) and category.strip():
                if isinstance(label, int) and not isinstance(label, bool):
                    by_id.setdefault(label, category.strip())
                else:
                    loose.add(category.strip())
    ordered = [by_id[k] for k in sorted(by_id)]
    seen = set(ordered)
    return tuple(dict.fromkeys(ordered)) + tuple(sorted(loose - seen))


def _row(row_id: str, record: dict[str, Any] | LineError, *, root: Path, categories: tuple[str, ...],
         label_map: dict[int, str] | None) -> Row | BadRow:
    if isinstance(record, LineError):
        return BadRow(row_id, record.reason, record.detail)
    if "detection" not in record and "grounding" in record:
        return BadRow(row_id, "missing_field", "an ODVG grounding line (caption + regions) has no category list; "
                                               "only ODVG detection lines ('detection': {'instances': ...}) are read")
    instances = _instances(record)
    if instances is None:
        return BadRow(row_id, "missing_field", "no 'detection': {'instances': [...]} (write [] for an image with no "
                                               "objects)")
    boxes = []
    for k, inst in enumerate(instances):
        where = f"instance {k}"
        if not isinstance(inst, dict) or "bbox" not in inst:
            return BadRow(row_id, "bad_box", f"{where} is not an object with a 'bbox'")
        category = inst.get("category")
        if not (isinstance(category, str) and category.strip()):
            label = inst.get("label")
            if label_map is None or not isinstance(label, int) or label not in label_map:
                why = "no label map beside the file" if label_map is None else "not in the label map"
                return BadRow(row_id, "unknown_category", f"{where} has no 'category' and its label {label!r} is "
                                                          f"{why}")
            category = label_map[label]
        boxes.append(RawBox(category.strip(), inst["bbox"], iscrowd=inst.get("iscrowd", 0), where=where))
    size = (record["width"], record["height"]) if "width" in record and "height" in record else None
    return detection_row(row_id, record.get("filename"), boxes, root=root, categories=categories, size=size,
                         box_format="xyxy")
