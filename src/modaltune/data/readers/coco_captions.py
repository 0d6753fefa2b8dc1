"""COCO captions: a ``.json`` with ``images`` (``id``, ``file_name``) and ``annotations``
(``image_id``, ``caption``), as in ``captions_train2017.json``; one row per caption, id ``ann<id>``.

Sniffed from the top-level keys: ``images`` and ``annotations`` lists whose entries have ``caption``
(a COCO *instances* file has the same keys, with ``bbox`` entries, and is not claimed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from modaltune.data.fields import Field
from modaltune.data.readers.base import Reader, ReadResult, Source, dict_items
from modaltune.data.readers.records import LineError, rows_from_records
from modaltune.errors import DataError


class CocoCaptionsReader(Reader):
    name = "coco-captions"
    summary = "a COCO captions .json (top-level 'images' and 'annotations' whose entries have 'caption')"

    def sniff(self, source: Source) -> bool:
        if source.is_dir or source.suffix != ".json":
            return False
        data = source.json_or_none()
        if not _has_coco_lists(data):
            return False
        annotations = data["annotations"]
        return not annotations or any("caption" in a for a in dict_items(annotations))

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        data = source.json()
        if not _has_coco_lists(data):
            raise DataError(
                f"{source.path} is not a COCO captions file: it needs top-level 'images' and 'annotations' "
                f"lists. For one JSON object per line, name the file .jsonl (or pass --data-format jsonl).")
        return rows_from_records(_records(data), path=source.path, id_prefix=id_prefix, require=require)


def _has_coco_lists(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("images"), list) \
        and isinstance(data.get("annotations"), list)


def _records(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any] | LineError]]:
    """One record per caption annotation, keyed ``ann<id>`` in row ids."""
    files: dict[Any, Any] = {}
    for image in data["images"]:
        if isinstance(image, dict) and "id" in image:
            files[image["id"]] = image.get("file_name")
    for position, ann in enumerate(data["annotations"]):
        key = f"ann{ann.get('id', position)}" if isinstance(ann, dict) else f"ann#{position}"
        if not isinstance(ann, dict):
            yield key, LineError("bad_json", f"annotation {position} is not a JSON object")
        elif "caption" not in ann:
            yield key, LineError("missing_field", f"annotation {position} has no 'caption' (not a captions file?)")
        elif ann.get("image_id") not in files:
            yield key, LineError("missing_field", f"image_id {ann.get('image_id')!r} is not in 'images'")
        elif not isinstance(files[ann["image_id"]], str):
            yield key, LineError("missing_field", f"image {ann['image_id']!r} has no 'file_name'")
        else:
            yield key, {"image": files[ann["image_id"]], "caption": ann["caption"], "image_id": ann["image_id"]}

