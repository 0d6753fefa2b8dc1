"""COCO detection metrics, computed by pycocotools' own ``COCOeval`` (``pip install modaltune[detect]``).

`coco_metrics` takes plain Python structures, writes them as in-memory COCO json (boxes as
``[x, y, w, h]``) and runs ``COCOeval(iouType="bbox")``: the numbers are the ones the COCO
leaderboards and most detection papers report, not a re-implementation.

Inputs
------
``ground_truth``: one entry per image, in order. An entry is a sequence of `data.boxes.Box`, or a
mapping with ``boxes`` (a sequence of `Box`, or of mappings with ``xyxy`` / ``box``, ``label``,
optional ``iscrowd`` and ``area``) and optionally ``image_id`` (any hashable; default: the position),
``width``, ``height`` (not used by COCOeval). An image with no boxes is a negative: every
detection on it is a false positive.

``predictions``: either a flat list of detections, each a mapping ``{"image_id", "box", "label",
"score"}`` (COCO's results layout, ``box`` in xyxy pixels), or one mapping per image ``{"boxes",
"labels", "scores"}`` (optionally with ``image_id``; otherwise aligned with ``ground_truth`` by
position). Labels are category names or indices into ``categories``. Score every detection (no
threshold): COCOeval keeps the ``max_detections`` best per image and class-agnostic ranking is its job.

Output keys
-----------
``map`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``map_small``, ``map_medium``, ``map_large`` (COCO's
area ranges: < 32², 32²–96², > 96² pixels), ``mar_1``, ``mar_10``, ``mar_100`` (AR at that many
detections per image; ``mar_<max_detections>`` when another maximum is asked for), ``mar_small``,
``mar_medium``, ``mar_large``; ``ap_per_class`` and ``ap50_per_class`` (category name → AP);
``images``, ``gt_boxes``, ``detections`` (counts). Where COCOeval has nothing to average it says
-1: no ground-truth box at all (every value), no box in an area range, or a category with no
ground-truth box (its per-class AP; such a category is left out of ``map`` as COCOeval leaves it).
Those values are **None** here (JSON ``null``), never a number that could be mistaken for a score.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

_STAT_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")


def _pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO  # type: ignore[import-untyped]
        from pycocotools.cocoeval import COCOeval  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - an install without the extra
        raise ImportError("COCO detection metrics need pycocotools: pip install 'modaltune[detect]'") from exc
    return COCO, COCOeval


def coco_metrics(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Any],
    categories: Sequence[str],
    *,
    max_detections: int = 100,
) -> dict[str, Any]:
    """COCO bbox metrics of ``predictions`` against ``ground_truth`` over ``categories`` (see the
    module docstring for the layouts and keys). `ValueError` for a label that is not a category, a
    detection on an image that is not in ``ground_truth``, or a malformed box."""
    if not categories:
        raise ValueError("coco_metrics needs the category names")
    if len(set(categories)) != len(categories):
        raise ValueError(f"category names repeat: {list(categories)}")
    if max_detections < 10:
        raise ValueError(f"max_detections must be at least 10 (COCO's AR@1 and AR@10 come first), got {max_detections}")
    cat_ids = {name: i + 1 for i, name in enumerate(categories)}
    image_ids: dict[Hashable, int] = {}
    annotations: list[dict[str, Any]] = []
    for position, entry in enumerate(ground_truth):
        key, boxes = _gt_entry(entry, position)
        if key in image_ids:
            raise ValueError(f"image_id {key!r} appears twice in the ground truth")
        image_id = image_ids[key] = len(image_ids) + 1
        for box in boxes:
            label, xyxy, iscrowd, area = _gt_box(box)
            x0, y0, x1, y1 = xyxy
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": _category(label, categories, cat_ids, "ground-truth box"),
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area if area is not None else (x1 - x0) * (y1 - y0),
                "iscrowd": int(bool(iscrowd)),
            })
    if not image_ids:
        raise ValueError("coco_metrics needs at least one ground-truth image")
    detections = [
        {"image_id": image_id, "category_id": _category(label, categories, cat_ids, "prediction"),
         "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
        for image_id, label, (x0, y0, x1, y1), score in _predictions(predictions, image_ids)
    ]

    COCO, COCOeval = _pycocotools()
    dataset = {"images": [{"id": i} for i in image_ids.values()], "annotations": annotations,
               "categories": [{"id": i, "name": name} for name, i in cat_ids.items()]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary table
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        if detections:
            dt = gt.loadRes(detections)
        else:  # loadRes cannot take an empty list; an empty result set is what it would mean
            dt = COCO()
            dt.dataset = {**dataset, "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats]
    keys = list(_STAT_KEYS)
    keys[8] = f"mar_{max_detections}"
    out: dict[str, Any] = {key: _value(v) for key, v in zip(keys, stats)}
    # precision[T, R, K, A, M]: IoU thresholds × recall points × classes × area ranges × max dets.
    precision = evaluator.eval["precision"]
    out["ap_per_class"] = {name: _mean_valid(precision[:, :, k, 0, -1]) for k, name in enumerate(categories)}
    out["ap50_per_class"] = {name: _mean_valid(precision[0, :, k, 0, -1]) for k, name in enumerate(categories)}
    out["images"] = len(image_ids)
    out["gt_boxes"] = len(annotations)
    out["detections"] = len(detections)
    return out


def _value(v: float) -> float | None:
    return None if v < 0 else v  # COCOeval's -1: nothing to average


def _mean_valid(values: Any) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _gt_entry(entry: Any, position: int) -> tuple[Hashable, Sequence[Any]]:
    if isinstance(entry, Mapping):
        boxes = entry.get("boxes")
        if boxes is None:
            raise ValueError(f"ground-truth image {position} has no 'boxes' (use [] for an image with no objects)")
        return entry.get("image_id", position), boxes
    if isinstance(entry, (list, tuple)):
        return position, entry
    raise ValueError(f"ground-truth image {position} must be a list of boxes or a mapping with 'boxes', "
                     f"got {type(entry).__name__}")


def _gt_box(box: Any) -> tuple[Any, Sequence[float], bool, float | None]:
    from modaltune.data.boxes import Box

    if isinstance(box, Box):
        return box.label, box.xyxy, box.iscrowd, box.area
    if isinstance(box, Mapping):
        xyxy = box.get("xyxy", box.get("box"))
        return box.get("label"), _xyxy(xyxy, "ground-truth box"), bool(box.get("iscrowd", False)), box.get("area")
    raise ValueError(f"a ground-truth box must be a Box or a mapping with 'xyxy' and 'label', got {box!r}")


def _xyxy(value: Any, what: str) -> tuple[float, float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"a {what} must be 4 numbers x0, y0, x1, y1 (pixels), got {value!r}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"a {what} must have x0 <= x1 and y0 <= y1 (xyxy pixels), got {value!r}")
    return x0, y0, x1, y1


def _category(label: Any, categories: Sequence[str], cat_ids: Mapping[str, int], what: str) -> int:
    if isinstance(label, str):
        if label not in cat_ids:
            raise ValueError(f"{what} label {label!r} is not one of the categories {list(categories)}")
        return cat_ids[label]
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(categories):
        return label + 1
    raise ValueError(f"{what} label {label!r} is neither a category name nor an index below {len(categories)}")


def _predictions(predictions: Sequence[Mapping[str, Any]],
                 image_ids: Mapping[Hashable, int]) -> list[tuple[int, Any, tuple[float, float, float, float], float]]:
    """(COCO image id, label, xyxy, score) per detection, from either prediction layout."""
    out = []
    positional = list(image_ids.values())
    for position, pred in enumerate(predictions):
        if not isinstance(pred, Mapping):
            raise ValueError(f"prediction {position} must be a mapping, got {type(pred).__name__}")
        if "scores" in pred:  # one image's detections
            key = pred.get("image_id", position)
            if "image_id" not in pred and position >= len(positional):
                raise ValueError(f"{len(predictions)} per-image predictions for {len(positional)} ground-truth images")
            image_id = image_ids.get(key) if "image_id" in pred else positional[position]
            if image_id is None:
                raise ValueError(f"predictions for image_id {key!r}, which is not in the ground truth")
            boxes, labels, scores = pred.get("boxes", []), pred.get("labels", []), pred["scores"]
            if not len(boxes) == len(labels) == len(scores):
                raise ValueError(f"prediction {position}: {len(boxes)} boxes, {len(labels)} labels and "
                                 f"{len(scores)} scores; they must pair up")
            for box, label, score in zip(boxes, labels, scores):
                out.append((image_id, label, _xyxy(list(box), "predicted box"), float(score)))
        else:
            key = pred.get("image_id")
            if key not in image_ids:
                raise ValueError(f"a detection on image_id {key!r}, which is not in the ground truth")
            out.append((image_ids[key], pred.get("label"), _xyxy(list(pred.get("box", ())), "predicted box"),
                        float(pred["score"])))
    return out
