"""COCO detection metrics: pinned to pycocotools' COCOeval run directly in the test, plus cases whose
answer can be worked out by hand."""

from __future__ import annotations

import contextlib
import io

import pytest

pytest.importorskip("pycocotools")

from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from modaltune.data.boxes import Box  # noqa: E402
from modaltune.metrics.detection import coco_metrics  # noqa: E402

CATS = ["circle", "square", "triangle"]


def test_one_perfect_box_scores_one():
    m = coco_metrics([{"image_id": 0, "box": [10, 10, 50, 40], "label": "square", "score": 0.9}],
                     [[Box("square", (10, 10, 50, 40))]], CATS)
    assert m["map"] == pytest.approx(1.0) and m["map_50"] == pytest.approx(1.0) and m["map_75"] == pytest.approx(1.0)
    assert m["mar_100"] == pytest.approx(1.0)
    # 40x30 = 1200 px: a "medium" box (32² to 96²); no small or large box exists at all
    assert m["map_medium"] == pytest.approx(1.0) and m["map_small"] is None and m["map_large"] is None
    assert m["ap_per_class"] == {"circle": None, "square": pytest.approx(1.0), "triangle": None}
    assert (m["images"], m["gt_boxes"], m["detections"]) == (1, 1, 1)


def test_iou_06_counts_at_50_not_at_75():
    # gt 10x10, prediction its top 6 rows: IoU = 60 / 100 = 0.6
    m = coco_metrics([{"boxes": [[0, 0, 10, 6]], "labels": [1], "scores": [0.5]}],
                     [{"boxes": [Box("square", (0, 0, 10, 10))]}], CATS)
    assert m["map_50"] == pytest.approx(1.0)
    assert m["map_75"] == pytest.approx(0.0)
    # thresholds .50 .55 .60 hit (IoU 0.6 >= 0.6), the other seven of ten miss
    assert m["map"] == pytest.approx(0.3)


def test_false_positive_ranked_first_halves_ap():
    # one object; the best-scored detection is on a negative image: precision 1/2 at full recall
    truth = [{"image_id": "a", "boxes": [Box("circle", (0, 0, 20, 20))]}, {"image_id": "neg", "boxes": []}]
    preds = [{"image_id": "neg", "box": [0, 0, 20, 20], "label": "circle", "score": 0.9},
             {"image_id": "a", "box": [0, 0, 20, 20], "label": "circle", "score": 0.8}]
    m = coco_metrics(preds, truth, CATS)
    assert m["map"] == pytest.approx(0.5) and m["ap_per_class"]["circle"] == pytest.approx(0.5)
    assert m["mar_1"] == pytest.approx(1.0)  # recall counts per image: image a's one detection is right


def test_no_detections_score_zero_and_no_truth_is_none():
    m = coco_metrics([], [[Box("circle", (0, 0, 20, 20))]], CATS)
    assert m["map"] == 0.0 and m["mar_100"] == 0.0 and m["detections"] == 0
    empty = coco_metrics([{"image_id": 0, "box": [0, 0, 5, 5], "label": "circle", "score": 0.3}], [[]], CATS)
    assert empty["map"] is None and all(v is None for v in empty["ap_per_class"].values())


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="'dog' is not one of the categories"):
        coco_metrics([], [[Box("dog", (0, 0, 5, 5))]], CATS)
    with pytest.raises(ValueError, match="image_id 7"):
        coco_metrics([{"image_id": 7, "box": [0, 0, 5, 5], "label": "circle", "score": 0.3}], [[]], CATS)
    with pytest.raises(ValueError, match="x0 <= x1"):
        coco_metrics([{"image_id": 0, "box": [5, 0, 0, 5], "label": 0, "score": 0.3}], [[]], CATS)


# ---- pinned to COCOeval ------------------------------------------------------------------------

# A hand-made case: 4 images (one negative), 3 classes (triangle has no ground truth), a crowd box,
# small / medium / large objects, duplicates, misses, a confusion between classes, ties in score.
GT = {
    1: [("circle", [2, 3, 20, 18], 0), ("square", [40, 40, 60, 50], 0), ("circle", [150, 10, 110, 120], 0)],
    2: [("square", [5, 5, 8, 8], 0), ("square", [30, 30, 25, 25], 0), ("circle", [0, 60, 90, 70], 1)],
    3: [],
    4: [("circle", [10, 10, 40, 40], 0), ("square", [60, 10, 30, 30], 0), ("square", [100, 100, 6, 6], 0)],
}
DT = {  # (label, xywh, score)
    1: [("circle", [3, 3, 19, 18], 0.95), ("circle", [2, 4, 21, 16], 0.6), ("square", [45, 42, 55, 50], 0.8),
        ("circle", [155, 20, 100, 110], 0.7), ("triangle", [0, 0, 30, 30], 0.4)],
    2: [("square", [6, 5, 8, 9], 0.5), ("square", [31, 28, 26, 25], 0.9), ("circle", [5, 62, 80, 60], 0.85),
        ("circle", [100, 100, 10, 10], 0.3)],
    3: [("square", [10, 10, 20, 20], 0.75), ("circle", [0, 0, 64, 64], 0.2)],
    4: [("square", [12, 11, 38, 40], 0.88), ("circle", [11, 9, 40, 42], 0.5), ("square", [62, 12, 29, 28], 0.5),
        ("square", [98, 99, 9, 8], 0.45)],
}


def _reference() -> tuple[list[float], dict[str, float | None]]:
    """COCOeval on the same case, written as COCO json by hand (xywh), independently of modaltune."""
    cat_id = {name: i + 1 for i, name in enumerate(CATS)}
    anns, dets = [], []
    for image, boxes in GT.items():
        for label, xywh, crowd in boxes:
            anns.append({"id": len(anns) + 1, "image_id": image, "category_id": cat_id[label], "bbox": xywh,
                         "area": xywh[2] * xywh[3], "iscrowd": crowd})
    for image, boxes in DT.items():
        dets += [{"image_id": image, "category_id": cat_id[label], "bbox": xywh, "score": s}
                 for label, xywh, s in boxes]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in GT], "annotations": anns,
                      "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per_class = {}
    for name, k in cat_id.items():  # COCOeval restricted to one category
        with contextlib.redirect_stdout(io.StringIO()):
            one = COCOeval(gt, gt.loadRes(dets), "bbox")
            one.params.catIds = [k]
            one.evaluate()
            one.accumulate()
            one.summarize()
        per_class[name] = None if one.stats[0] < 0 else float(one.stats[0])
    return [float(s) for s in ev.stats], per_class


def _xyxy(xywh):
    x, y, w, h = xywh
    return (x, y, x + w, y + h)


def test_matches_cocoeval_on_a_hand_made_case():
    stats, per_class = _reference()
    truth = [{"image_id": image, "boxes": [Box(label, _xyxy(b), bool(crowd)) for label, b, crowd in boxes]}
             for image, boxes in GT.items()]
    flat = [{"image_id": image, "box": list(_xyxy(b)), "label": label, "score": s}
            for image, boxes in DT.items() for label, b, s in boxes]
    m = coco_metrics(flat, truth, CATS)
    keys = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
            "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]
    assert [m[k] for k in keys] == pytest.approx(stats, abs=1e-12)
    assert 0 < m["map"] < 1 and m["map_small"] is not None and m["map_large"] is not None  # the case is not trivial
    assert per_class["triangle"] is None and m["ap_per_class"]["triangle"] is None
    assert m["ap_per_class"] == pytest.approx(per_class, abs=1e-12)
    # the per-image layout with class indices gives the same numbers
    per_image = [{"boxes": [_xyxy(b) for _, b, _ in DT[image]],
                  "labels": [CATS.index(label) for label, _, _ in DT[image]],
                  "scores": [s for _, _, s in DT[image]]} for image in GT]
    assert coco_metrics(per_image, truth, CATS)["map"] == pytest.approx(m["map"], abs=1e-12)
