"""COCO instances: a ``.json`` with ``images`` (``id``, ``file_name``, ``width``, ``height``),
``annotations`` (``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in pixels, ``iscrowd``, ``area``)
and ``categories`` (``id``, ``name``), as ``instances_val2017.json``. One row per image, id
``<file>:img<id>``, with every box of the image; an image without annotations is a negative.
Categories come out in id order (`data.boxes.categories_of`).

Sniffed from the top-level keys: ``images``, ``annotations`` and ``categories`` lists, with ``bbox``
on the annotations (or no annotation at all) and no ``keypoints`` (a keypoints file). A COCO
*captions* file has no ``categories`` and its annotations have ``caption``: the two never collide.

Problems of one image (an unknown ``category_id``, a bad box, a box outside the image) make that
image a bad row; an annotation pointing at no image is reported under ``<file>:ann<id>``.

``file_name`` is looked up in the json's folder, then its ``<split>/``, ``images/<split>/`` and
``images/`` (``<split>`` from the file name: ``instances_val2017.json`` → ``val2017``); for COCO's
own layout (``annotations/instances_val2017.json`` beside ``val2017/``) the same places in the
folder above ``annotations/``. The first place holding one of the first images is the images root.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modaltune.data.fields import Field
from modaltune.data.readers.base import Reader, ReadResult, Source, dict_items
from modaltune.data.readers.detection import RawBox, check_detection_fields, detection_row
from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError


class CocoInstancesReader(Reader):
    name = "coco-instances"
    summary = ("a COCO instances .json (top-level 'images', 'annotations' with 'bbox' [x, y, w, h] pixels, "
               "'categories')")

    def sniff(self, source: Source) -> bool:
        if source.is_dir or source.suffix != ".json":
            return False
        data = source.json_or_none()
        if not _is_instances(data):
            return False
        annotations = dict_items(data["annotations"])
        return not any("keypoints" in a or "caption" in a for a in annotations) \
            and (not annotations or any("bbox" in a for a in annotations))

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        data = source.json()
        path = source.path
        if not _is_instances(data):
            raise DataError(f"{path} is not a COCO instances file: it needs top-level 'images', 'annotations' and "
                            f"'categories' lists.")
        check_detection_fields(path, "a COCO instances file", require)
        name = f"{id_prefix}{path.name}"
        categories = _categories(data["categories"], path)
        names = tuple(categories.values())
        images: dict[Any, dict[str, Any]] = {}
        rows: list[Row] = []
        bad: list[BadRow] = []
        for position, image in enumerate(data["images"]):
            if not isinstance(image, dict) or "id" not in image:
                bad.append(BadRow(f"{name}:image#{position}", "bad_json", f"images[{position}] is not an object "
                                                                          f"with an 'id'"))
                continue
            if image["id"] in images:
                raise DataError(f"{path}: image id {image['id']!r} appears twice in 'images'.")
            images[image["id"]] = image
        root = _image_root(path, [im.get("file_name") for im in list(images.values())[:20]])
        boxes: dict[Any, list[RawBox]] = {key: [] for key in images}
        broken: dict[Any, BadRow] = {}
        for position, ann in enumerate(data["annotations"]):
            where = f"annotation {ann.get('id', position)}" if isinstance(ann, dict) else f"annotations[{position}]"
            if not isinstance(ann, dict):
                bad.append(BadRow(f"{name}:ann#{position}", "bad_json", f"{where} is not a JSON object"))
                continue
            image_id = ann.get("image_id")
            if image_id not in images:
                bad.append(BadRow(f"{name}:ann{ann.get('id', f'#{position}')}", "missing_field",
                                  f"{where}: image_id {image_id!r} is not in 'images'"))
                continue
            if image_id in broken:
                continue
            category = categories.get(ann.get("category_id"))
            if category is None:
                broken[image_id] = BadRow(_row_id(name, image_id), "unknown_category",
                                          f"{where}: category_id {ann.get('category_id')!r} is not in 'categories' "
                                          f"(ids {', '.join(map(str, list(categories)[:10]))})")
                continue
            if "bbox" not in ann:
                broken[image_id] = BadRow(_row_id(name, image_id), "bad_box", f"{where} has no 'bbox'")
                continue
            boxes[image_id].append(RawBox(category, ann["bbox"], iscrowd=ann.get("iscrowd", 0),
                                          area=ann.get("area"), where=where))
        for image_id, image in images.items():
            row_id = _row_id(name, image_id)
            if image_id in broken:
                bad.append(broken[image_id])
                continue
            size = (image["width"], image["height"]) if "width" in image and "height" in image else None
            row = detection_row(row_id, image.get("file_name"), boxes[image_id], root=root, categories=names,
                                size=size, box_format="xywh", extra={"image_id": image_id})
            if isinstance(row, BadRow):
                bad.append(row)
            else:
                rows.append(row)
        if not rows and not bad:
            raise DataError(f"{path} lists no images. Add its 'images' (id, file_name, width, height).")
        return rows, bad, root


def _image_root(path: Path, names: list[Any]) -> Path:
    """The folder the images' ``file_name``s are relative to (see the module docstring); the json's
    own folder when none of the places holds any of ``names``."""
    folder = path.parent.resolve()
    split = path.stem.rsplit("_", 1)[-1] if "_" in path.stem else None
    bases = [folder] + ([folder.parent] if folder.name.lower() == "annotations" else [])
    places = [f"{split}", f"images/{split}", "images"] if split else ["images"]
    probes = [n for n in names if isinstance(n, str) and n.strip()]
    for candidate in (p for base in bases for p in (base, *(base / place for place in places))):
        if candidate.is_dir() and any((candidate / n).is_file() for n in probes):
            return candidate
    return folder


def _row_id(name: str, image_id: Any) -> str:
    return f"{name}:img{image_id}"


def _is_instances(data: Any) -> bool:
    return isinstance(data, dict) and all(isinstance(data.get(k), list)
                                          for k in ("images", "annotations", "categories"))


def _categories(items: list[Any], path: Any) -> dict[Any, str]:
    """category id → name, in id order; `DataError` for a nameless or repeated category (its boxes
    could not be told apart by name, which is what an open-vocabulary model reads)."""
    found: dict[Any, str] = {}
    for position, cat in enumerate(items):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str) \
                or not cat["name"].strip():
            raise DataError(f"{path}: categories[{position}] must be an object with an 'id' and a non-empty 'name', "
                            f"got {cat!r}")
        if cat["id"] in found:
            raise DataError(f"{path}: category id {cat['id']!r} appears twice in 'categories'.")
        found[cat["id"]] = cat["name"].strip()
    names = list(found.values())
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{path}: category names {repeated} are used by more than one category id; a detector asked "
                        f"by name cannot tell them apart. Give each category its own name.")
    try:
        order = sorted(found)
    except TypeError:  # ids of mixed types: keep the file's order
        order = list(found)
    return {key: found[key] for key in order}
