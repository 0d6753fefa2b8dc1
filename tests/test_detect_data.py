"""Detection data: the boxes field, the three readers, the box reason codes, the synthetic scenes,
and augmentation moving boxes with the pixels."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from PIL import Image

from modaltune.data import load_dataset, read_rows, validate_rows
from modaltune.data.augment import augment_example, augment_image_geometry
from modaltune.data.boxes import BOXES, Box, categories_of, image_size, to_xyxy
from modaltune.data.fields import IMAGE, TEXT, FieldError
from modaltune.data.rows import Example
from modaltune.errors import DataError
from modaltune.testing.synthetic_scenes import COLOURS, draw_scene, write_scenes

DETECT = (IMAGE, BOXES)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("scenes"), seed=3, count=12, jsonl=True, odvg=True)


def _by_image(rows):
    return {row.image.name: tuple((b.label, b.xyxy, b.iscrowd) for b in row.boxes) for row in rows}


# ---- synthetic scenes ---------------------------------------------------------------------------


def test_scenes_are_a_pure_function_of_the_seed(scenes, tmp_path):
    again = write_scenes(tmp_path / "again", seed=3, count=12, jsonl=True, odvg=True)
    assert again.coco.read_text() == scenes.coco.read_text()
    assert (again.images / "0005.png").read_bytes() == (scenes.images / "0005.png").read_bytes()
    other = write_scenes(tmp_path / "other", seed=4, count=12)
    assert other.coco.read_text() != scenes.coco.read_text()
    assert scenes.categories == ("circle", "square", "triangle") and scenes.negatives == 2 and scenes.boxes >= 12
    sizes = {Image.open(p).size for p in scenes.images.iterdir()}
    assert len(sizes) > 3 and all(64 <= s <= 128 for size in sizes for s in size)


def test_scene_boxes_are_the_exact_extent_of_each_shape():
    for seed in range(6):
        image, boxes = draw_scene(seed, size=(96, 80), categories=("circle", "square", "triangle", "star"),
                                  colour_in_label=True)
        pixels = np.asarray(image).astype(int)
        assert boxes
        for box in boxes:
            colour = np.array(COLOURS[box.label.split()[0]])
            x0, y0, x1, y1 = (int(v) for v in box.xyxy)
            inside = np.abs(pixels[y0:y1, x0:x1] - colour).sum(-1) == 0
            ys, xs = np.nonzero(inside)
            # the shape's own colour touches all four sides of its box
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, x1 - x0, y1 - y0), (seed, box)
    image, boxes = draw_scene(0, negative=True)
    assert boxes == [] and image.size == (96, 96)


# ---- readers ------------------------------------------------------------------------------------


def test_the_three_formats_read_the_same_boxes(scenes):
    coco, _, _ = read_rows(scenes.coco, require=DETECT)
    jsonl, _, _ = read_rows(scenes.jsonl, require=DETECT)
    odvg, _, _ = read_rows(scenes.odvg, require=DETECT)
    assert len(coco) == len(jsonl) == len(odvg) == 12
    assert _by_image(coco) == _by_image(jsonl) == _by_image(odvg)
    assert sum(not r.boxes for r in coco) == 2  # the negatives are rows, with no boxes
    for rows in (coco, jsonl, odvg):
        assert categories_of(rows) == ["circle", "square", "triangle"]
    assert coco[0].id == "instances.json:img1" and jsonl[0].id == "instances.jsonl:1"
    assert coco[0].extra["image_size"] == Image.open(coco[0].image).size


def test_box_formats_and_normalized_coordinates(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    xywh = [[10, 20, 30, 40], [100, 0, 100, 100]]
    forms = {"xywh": (xywh, False), "xyxy": ([[10, 20, 40, 60], [100, 0, 200, 100]], False),
             "cxcywh": ([[25, 40, 30, 40], [150, 50, 100, 100]], False),
             None: ([[0.05, 0.2, 0.15, 0.4], [0.5, 0.0, 0.5, 1.0]], True)}
    for box_format, (boxes, normalized) in forms.items():
        path = tmp_path / f"{box_format}.jsonl"
        path.write_text(json.dumps({"image": "a.png", "boxes": boxes, "labels": ["cat", "dog"]}) + "\n")
        rows, report = load_dataset(path, require=DETECT,
                                    reader_options={"box_format": box_format, "normalized": normalized or None})
        assert [b.xyxy for b in rows[0].boxes] == [pytest.approx((10, 20, 40, 60)), (100, 0, 200, 100)], box_format
        assert report.label_counts == {"cat": 1, "dog": 1}
    # reading options are for the reader that takes them
    with pytest.raises(DataError, match="--box-format applies to boxes-jsonl data, but .* coco-instances"):
        load_dataset(write_scenes(tmp_path / "s", count=2).coco, require=DETECT,
                     reader_options={"box_format": "xyxy"})
    assert to_xyxy([0.5, 0.5, 1, 1], "cxcywh", normalized=True, size=(10, 20)) == (0.0, 0.0, 10.0, 20.0)
    with pytest.raises(FieldError, match="not normalized"):
        to_xyxy([10, 10, 20, 20], "xywh", normalized=True, size=(50, 50))


def test_coco_instances_and_captions_are_told_apart(tmp_path, scenes):
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                    "annotations": [{"id": 1, "image_id": 1, "caption": "a cat"}]}))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert [r.text for r in read_rows(captions, require=(IMAGE, TEXT))[0]] == ["a cat"]
    with pytest.raises(DataError, match="is a COCO instances file: it gives each image its boxes, but this task "
                                        "needs image, text"):
        read_rows(scenes.coco, require=(IMAGE, TEXT))
    # an instances file without any annotation is still an instances file (it has categories)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
                                 "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    rows, bad, _ = read_rows(empty, require=DETECT)
    assert rows[0].boxes == () and categories_of(rows) == ["cat"] and not bad


def test_coco_layout_with_images_beside_the_annotations_folder(tmp_path):
    # coco/annotations/instances_val2017.json, images in coco/val2017/ (COCO's own download layout)
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    Image.new("RGB", (20, 10)).save(tmp_path / "coco" / "val2017" / "000000000139.jpg")
    annotations = tmp_path / "coco" / "annotations"
    annotations.mkdir()
    _coco(annotations, [{"id": 139, "file_name": "000000000139.jpg", "width": 20, "height": 10}],
          [{"id": 1, "image_id": 139, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0}]).rename(
        annotations / "instances_val2017.json")
    rows, report = load_dataset(annotations / "instances_val2017.json", require=DETECT)
    assert [(r.id, r.image, [b.label for b in r.boxes]) for r in rows] == [
        ("instances_val2017.json:img139", tmp_path / "coco" / "val2017" / "000000000139.jpg", ["dog"])]


# ---- reason codes -------------------------------------------------------------------------------


def _coco(tmp_path, images, annotations, categories=({"id": 1, "name": "cat"}, {"id": 2, "name": "dog"})):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return path


def test_bad_boxes_get_their_reason_codes(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 40x30, shown 30x40
    Image.new("RGB", (40, 30)).save(tmp_path / "r.jpg", exif=exif)
    assert image_size(tmp_path / "r.jpg") == (30, 40)
    cases = {  # image id → (size, bbox, category, expected reason or None)
        1: ((40, 30), [1, 1, 10, 10], 1, None),
        2: ((40, 30), [30, 20, 11, 10], 1, "fixed"),  # 1 px over the right edge: clipped and counted
        3: ((40, 30), [30, 20, 30, 10], 1, "box_outside_image"),
        4: ((40, 30), [5, 5, 0, 10], 2, "degenerate_box"),
        5: ((40, 30), [5, 5, 10], 1, "bad_box"),
        6: ((40, 30), [5, "5", 10, 10], 1, "bad_box"),
        7: ((40, 30), [5, math.nan, 10, 10], 1, "bad_box"),
        8: ((40, 30), [5, 5, -3, 10], 1, "bad_box"),
        9: ((40, 30), [5, 5, 10, 10], 9, "unknown_category"),
        10: ((64, 48), [5, 5, 10, 10], 1, "image_size_mismatch"),
        11: ((30, 40), [2, 2, 20, 30], 1, None),  # the EXIF-rotated image, annotated as shown
        12: ((40, 30), [2, 2, 20, 20], 1, "image_size_mismatch"),  # ... annotated as stored
        13: ((40, 30), [42, 5, 0, 10], 1, "degenerate_box"),  # a zero-width sliver just outside: nothing left
    }
    images = [{"id": k, "file_name": "r.jpg" if k in (11, 12) else "a.png", "width": s[0], "height": s[1]}
              for k, (s, _, _, _) in cases.items()]
    anns = [{"id": k, "image_id": k, "category_id": c, "bbox": b} for k, (_, b, c, _) in cases.items()]
    images.append({"id": 14, "file_name": "a.png", "width": 40, "height": 30})  # a negative
    anns.append({"id": 99, "image_id": 404, "category_id": 1, "bbox": [1, 1, 2, 2]})  # points at no image
    rows, report = load_dataset(_coco(tmp_path, images, anns), require=DETECT, skip_bad=True)
    got = {b.id: b.reason for b in report.bad}
    want = {f"instances.json:img{k}": r for k, (_, _, _, r) in cases.items() if r not in (None, "fixed")}
    want["instances.json:ann99"] = "missing_field"
    assert got == want
    assert sorted(r.id for r in rows) == sorted(f"instances.json:img{k}" for k in (1, 2, 11, 14))
    assert report.to_dict()["fixed"] == {"box_outside_image": 1}
    clipped = next(r for r in rows if r.id.endswith("img2")).boxes[0]
    assert clipped.xyxy == (30.0, 20.0, 40.0, 30.0)
    details = {b.id: b.detail for b in report.bad}
    assert "EXIF orientation" in details["instances.json:img12"]
    assert "'dog'" in details["instances.json:img4"] and "category_id 9" in details["instances.json:img9"]
    with pytest.raises(DataError, match="box_outside_image"):  # without skip_bad the run stops, listing them
        load_dataset(_coco(tmp_path, images, anns), require=DETECT)
    # the box labels of validation rows are checked against the training categories
    good, bad = validate_rows(rows, require=DETECT, known_labels={"dog"})
    assert {b.reason for b in bad} == {"unknown_category"} and [r.id for r in good] == ["instances.json:img14"]


def test_field_checks_rows_built_in_code(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    ok = Example("ok", image=tmp_path / "a.png", boxes=(Box("cat", (0.0, 0.0, 20.0, 10.0)),))
    outside = ok.replace(boxes=(Box("cat", (0.0, 0.0, 25.0, 10.0)),))
    flat = ok.replace(boxes=(Box("cat", (3.0, 0.0, 3.0, 10.0)),))
    missing = Example("none", image=tmp_path / "a.png")
    good, bad = validate_rows([ok, outside, flat, missing], require=DETECT)
    assert [r.id for r in good] == ["ok"]
    assert [(b.id, b.reason) for b in bad] == [("ok", "box_outside_image"), ("ok", "degenerate_box"),
                                               ("none", "missing_field")]


def test_odvg_label_map_and_jsonl_problems(tmp_path):
    Image.new("RGB", (50, 50)).save(tmp_path / "a.png")
    lines = [{"filename": "a.png", "height": 50, "width": 50,
              "detection": {"instances": [{"bbox": [1, 2, 11, 12], "label": 1}]}},
             {"filename": "a.png", "height": 50, "width": 50, "detection": {"instances": []}},
             {"filename": "a.png", "height": 50, "width": 50,
              "detection": {"instances": [{"bbox": [1, 2, 11, 12], "label": 7}]}},
             {"filename": "a.png", "grounding": {"caption": "a cat", "regions": []}}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{broken\n")
    (tmp_path / "train.label_map.json").write_text(json.dumps({"0": "cat", "1": "dog", "2": "bird"}))
    rows, bad, _ = read_rows(tmp_path / "train.jsonl", require=DETECT)
    assert [(r.id, [b.label for b in r.boxes]) for r in rows] == [("train.jsonl:1", ["dog"]), ("train.jsonl:2", [])]
    assert [(b.id, b.reason) for b in bad] == [("train.jsonl:3", "unknown_category"),
                                               ("train.jsonl:4", "missing_field"), ("train.jsonl:5", "bad_json")]
    assert categories_of(rows) == ["cat", "dog", "bird"]

    boxes = tmp_path / "j" / "boxes.jsonl"
    boxes.parent.mkdir()
    Image.new("RGB", (50, 50)).save(boxes.parent / "a.png")
    records = [{"image": "a.png", "boxes": [[1, 1, 5, 5]], "labels": ["cat"]},
               {"image": "a.png", "boxes": [[1, 1, 5, 5]], "labels": []},
               {"image": "missing.png", "boxes": [], "labels": []},
               {"image": "../a.png", "boxes": [], "labels": []},
               {"image": "a.png", "boxes": [[1, 1, 5, 5]], "labels": ["cat"], "width": 60, "height": 50}]
    boxes.write_text("".join(json.dumps(x) + "\n" for x in records))
    rows, report = load_dataset(boxes, require=DETECT, skip_bad=True)
    assert [r.id for r in rows] == ["boxes.jsonl:1"]
    assert [(b.id, b.reason) for b in report.bad] == [
        ("boxes.jsonl:2", "missing_field"), ("boxes.jsonl:3", "missing_file"), ("boxes.jsonl:4", "path_escapes_root"),
        ("boxes.jsonl:5", "image_size_mismatch")]


# ---- augmentation moves the boxes ---------------------------------------------------------------


def test_augmentation_moves_boxes_with_the_pixels():
    """Shapes in pure red, green, blue and white on black: after each random crop + resize + flip, the
    pixels of each colour are found where its moved box says; boxes that leave the crop are dropped."""
    from PIL import ImageDraw

    img = Image.new("RGB", (96, 72), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.ellipse((8, 10, 37, 39), fill=(255, 0, 0))
    draw.rectangle((50, 6, 89, 25), fill=(0, 255, 0))
    draw.polygon([(60, 40), (84, 68), (40, 68)], fill=(0, 0, 255))
    draw.rectangle((0, 62, 7, 71), fill=(255, 255, 255))  # in the corner: often cropped away
    boxes = (Box("circle", (8.0, 10.0, 38.0, 40.0)), Box("square", (50.0, 6.0, 90.0, 26.0)),
             Box("triangle", (40.0, 40.0, 85.0, 69.0)), Box("dot", (0.0, 62.0, 8.0, 72.0)))
    example = Example("e", image="x.png", boxes=boxes)
    kept = dropped = tight = 0
    flips = set()
    for seed in range(60):
        moved, media = augment_example(example, {"image": img}, random.Random(seed))
        assert example.boxes == boxes  # the input is untouched
        out = media["image"]
        same, geometry = augment_image_geometry(img, random.Random(seed))
        assert out.tobytes() == same.tobytes()  # the same draws as the pixels
        pixels = np.asarray(out).astype(int)
        found = {b.label: b for b in moved.boxes}
        for channel, box in enumerate(boxes):
            if channel == 3:  # white
                mask = (pixels > 40).all(-1)
            else:  # one pure colour; threshold low, since a sharp tip is faint after resampling
                mask = (pixels[..., channel] > 40) & (pixels[..., [c for c in range(3) if c != channel]] < 40).all(-1)
            if box.label not in found:
                dropped += 1
                ys, xs = np.nonzero(mask)  # nothing, or a sliver under a pixel wide before resizing
                assert len(xs) == 0 or min(np.ptp(xs), np.ptp(ys)) <= 3, (seed, box.label)
                continue
            kept += 1
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:  # a sliver at the crop's edge, too thin to show
                assert min(found[box.label].width, found[box.label].height) <= 3, (seed, box.label)
                continue
            seen = np.array((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
            target = np.array(found[box.label].xyxy)
            # bilinear resampling blurs an edge by about one source pixel, scaled by the resize
            left, top, width, height = geometry.crop
            if left <= box.xyxy[0] and top <= box.xyxy[1] and box.xyxy[2] <= left + width \
                    and box.xyxy[3] <= top + height:  # the whole shape is in the crop: the box is tight
                tight += 1
                assert np.allclose(seen, target, atol=3.0), (seed, box.label, seen, target)
            else:  # cut by the crop: the clipped box still bounds what is left of the shape
                assert (seen[:2] >= target[:2] - 3.0).all() and (seen[2:] <= target[2:] + 3.0).all(), \
                    (seed, box.label, seen, target)
        flips.add(("circle" in found) and found["circle"].xyxy[0] > 48)
    assert kept >= 150 and tight >= 60 and dropped >= 3 and flips == {True, False}


# ---- the command line ---------------------------------------------------------------------------


def test_validate_detect_on_the_command_line(capsys, tmp_path, scenes):
    from _cli import invoke

    code, out, err = invoke(capsys, "validate", "--task", "detect", "--data", str(scenes.coco), "--json")
    assert code == 0, err
    report = json.loads(out)["all"]
    assert report["rows_ok"] == 12 and sum(report["label_counts"].values()) == scenes.boxes

    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    (tmp_path / "boxes.jsonl").write_text(json.dumps({"image": "a.png", "boxes": [[0.5, 0.5, 1.0, 0.5]],
                                                      "labels": ["cat"]}) + "\n")
    args = ("validate", "--task", "detect", "--data", str(tmp_path / "boxes.jsonl"), "--json")
    code, out, err = invoke(capsys, *args, "--box-format", "cxcywh", "--normalized")
    assert code == 0 and json.loads(out)["all"]["rows_ok"] == 1, err
    code, out, err = invoke(capsys, *args)  # read as xywh pixels: a 1 x 0.5 px box, half a pixel tall, is fine
    assert code == 0, err
    code, _, err = invoke(capsys, *args, "--box-format", "xyxy")  # corners (0.5, 0.5) and (1, 0.5): no height
    assert code == 2 and "degenerate_box" in err
    code, _, err = invoke(capsys, "validate", "--task", "detect", "--data", str(scenes.coco), "--normalized")
    assert code == 2 and "--normalized applies to boxes-jsonl data" in err
