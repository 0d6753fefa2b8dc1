"""Format readers (`data.formats`), validation and reports (`data.validate`), splitting (`data.split`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from modaltune.data import (
    REASONS,
    BadRow,
    DataReport,
    Row,
    discover_splits,
    load_dataset,
    read_rows,
    train_val_split,
)
from modaltune.data.validate import validate_rows
from modaltune.errors import ConfigError, DataError


def _img(path: Path, color=(200, 10, 10), size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _folder(root: Path, spec: dict[str, int]) -> Path:
    for label, n in spec.items():
        for i in range(n):
            _img(root / label / f"{i:03d}.png", color=(i * 10 % 256, 0, 0))
    return root


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- image folders ------------------------------------------------------------------------------


def test_image_folder_labels_ids_and_stray_files(tmp_path):
    root = _folder(tmp_path / "data", {"cat": 2, "dog": 1})
    _img(root / "dog" / "UPPER.JPG")
    (root / ".DS_Store").write_bytes(b"\0junk")
    (root / "cat" / ".hidden.png").write_bytes(b"")
    (root / ".git").mkdir()
    (root / "cat" / "notes.txt").write_text("hi")
    (root / "README.md").write_text("my data")
    _img(root / "loose.png")
    _img(root / "cat" / "siamese" / "x.png")

    rows, bad, media_root = read_rows(root)
    assert media_root == root.resolve()
    assert [(r.id, r.label) for r in rows] == [
        ("cat/000.png", "cat"),
        ("cat/001.png", "cat"),
        ("dog/000.png", "dog"),
        ("dog/UPPER.JPG", "dog"),
    ]
    assert all(r.image.is_absolute() and r.image.is_file() for r in rows)
    assert {(b.id, b.reason) for b in bad} == {
        ("README.md", "unsupported_file"),
        ("cat/notes.txt", "unsupported_file"),
        ("loose.png", "missing_field"),
        ("cat/siamese/", "unsupported_file"),
    }
    assert "move it into" in next(b.detail for b in bad if b.id == "loose.png")


def test_flat_folder_without_labels_when_label_not_required(tmp_path):
    _img(tmp_path / "a.png")
    rows, bad, _ = read_rows(tmp_path, require=("image",))
    assert [(r.id, r.label) for r in rows] == [("a.png", None)] and bad == []


def test_image_folder_cannot_satisfy_text(tmp_path):
    _folder(tmp_path, {"cat": 1})
    with pytest.raises(DataError, match="image folder.*text.*manifest"):
        read_rows(tmp_path, require=("image", "text"))


def test_whole_input_errors_say_what_where_and_how(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope.*Accepted: an image folder"):
        read_rows(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"No images found in .*empty.*\.csv / \.jsonl"):
        read_rows(tmp_path / "empty")
    (tmp_path / "data.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"Unsupported data file .*data\.xlsx.*\.parquet.*\.jsonl"):
        read_rows(tmp_path / "data.xlsx")
    (tmp_path / "data.parquet").write_bytes(b"PAR1")  # a parquet reader exists now: a broken file is named as such
    with pytest.raises(DataError, match=r"data\.parquet is not a readable Parquet file"):
        read_rows(tmp_path / "data.parquet")
    (tmp_path / "data.json").write_text("[]")
    with pytest.raises(DataError, match="one JSON object per line"):
        read_rows(tmp_path / "data.json")


# --- splits -------------------------------------------------------------------------------------


def test_discover_splits_with_aliases(tmp_path):
    _folder(tmp_path / "train", {"a": 1})
    _folder(tmp_path / "Validation", {"a": 1})
    (tmp_path / "test").mkdir()
    (tmp_path / "notes").mkdir()
    assert discover_splits(tmp_path) == {
        "train": tmp_path / "train",
        "val": tmp_path / "Validation",
        "test": tmp_path / "test",
    }
    assert discover_splits(tmp_path / "train") == {}
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="several folders for the 'val' split"):
        discover_splits(tmp_path)


def test_read_split_image_folder_and_manifest(tmp_path):
    _folder(tmp_path / "train", {"cat": 2, "dog": 2})
    _img(tmp_path / "valid" / "imgs" / "v.png")
    _jsonl(tmp_path / "valid" / "pairs.jsonl", [{"image": "imgs/v.png", "label": "cat"}])

    rows, bad, _ = read_rows(tmp_path, split="train")
    assert [r.id for r in rows][:1] == ["train/cat/000.png"] and len(rows) == 4 and bad == []
    rows, bad, root = read_rows(tmp_path, split="validation")
    assert [(r.id, r.label) for r in rows] == [("valid/pairs.jsonl:1", "cat")]
    assert root == (tmp_path / "valid").resolve()

    with pytest.raises(DataError, match=r"No 'test' split .*found: train/, valid/"):
        read_rows(tmp_path, split="test")
    with pytest.raises(DataError, match="split folders .*split='train'"):
        read_rows(tmp_path)
    with pytest.raises(DataError, match="Unknown split 'dev'"):
        read_rows(tmp_path, split="dev")


# --- manifests ----------------------------------------------------------------------------------


def test_csv_columns_aliases_extras_and_line_numbers(tmp_path):
    _img(tmp_path / "img" / "a.png")
    _img(tmp_path / "img" / "b.png")
    (tmp_path / "data.csv").write_text(
        "\ufeffImage,label,caption,source\n"  # BOM and a capitalised header, as Excel writes them
        "img/a.png, cat ,a cat,web\n"
        "\n"
        'img/b.png,dog,"a dog,\nrunning",cam\n'
        "img/a.png,cat,too,many,cells\n"
        ",,,\n"
        "img/b.png,,x\n",
        encoding="utf-8",
    )
    rows, bad, root = read_rows(tmp_path / "data.csv", require=("image", "text"))
    assert root == tmp_path.resolve()
    assert [r.id for r in rows] == ["data.csv:2", "data.csv:4", "data.csv:8"]
    first = rows[0]
    assert first.image == (tmp_path / "img" / "a.png").resolve()
    assert (first.label, first.text, first.extra) == ("cat", "a cat", {"source": "web"})
    assert rows[1].text == "a dog,\nrunning"
    assert rows[2].label == "" and rows[2].extra == {}  # a short row: source is absent, not ""
    assert [(b.id, b.reason) for b in bad] == [("data.csv:6", "bad_csv")]
    assert "quote values" in bad[0].detail


def test_jsonl_bad_lines_keep_their_line_numbers(tmp_path):
    _img(tmp_path / "a.png")
    path = _jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"image": "a.png", "text": "a red square", "id": 7},
            "",
            '{"image": "a.png", "text": oops}',
            "[1, 2]",
            {"image": "a.png", "text": ["two", "captions"]},
            {"image": 5, "text": "x"},
            {"image": "a.png", "caption": "alias", "label": 3},
        ],
    )
    rows, bad, _ = read_rows(path, require=("image", "text"))
    assert [(r.id, r.text, r.label, r.extra) for r in rows] == [
        ("pairs.jsonl:1", "a red square", None, {"id": 7}),
        ("pairs.jsonl:7", "alias", "3", {}),
    ]
    assert [(b.id, b.reason) for b in bad] == [
        ("pairs.jsonl:3", "bad_json"),
        ("pairs.jsonl:4", "bad_json"),
        ("pairs.jsonl:5", "bad_json"),
        ("pairs.jsonl:6", "bad_json"),
    ]
    assert "one line per caption" in bad[2].detail


def test_missing_required_column_names_file_found_and_expected(tmp_path):
    (tmp_path / "m.csv").write_text("image,name\na.png,x\n")
    with pytest.raises(DataError) as info:
        read_rows(tmp_path / "m.csv", require=("image", "label"))
    msg = str(info.value)
    assert "m.csv" in msg and "no label column" in msg and "Found columns: image, name" in msg
    assert "Expected: image, label" in msg
    _jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "title": "x"}])
    with pytest.raises(DataError, match="no text column.*caption is accepted"):
        read_rows(tmp_path / "m.jsonl", require=("image", "text"))
    (tmp_path / "h.csv").write_text("image,label\n")
    with pytest.raises(DataError, match="h.csv has no rows"):
        read_rows(tmp_path / "h.csv")
    (tmp_path / "latin.csv").write_bytes("image,label\nä.png,x\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8.*Save it as UTF-8"):
        read_rows(tmp_path / "latin.csv")


def test_media_paths_must_stay_inside_the_manifest_folder(tmp_path):
    data = tmp_path / "data"
    _img(tmp_path / "outside.png")
    _img(data / "sub" / "in.png")
    (data / "link.png").symlink_to(tmp_path / "outside.png")
    lines = [
        {"image": "../outside.png", "label": "a"},
        {"image": str(tmp_path / "outside.png"), "label": "a"},
        {"image": "link.png", "label": "a"},
        {"image": "C:\\pics\\x.png", "label": "a"},
        {"image": "sub/../sub/in.png", "label": "a"},
        {"image": "sub\\in.png", "label": "a"},
    ]
    rows, bad, _ = read_rows(_jsonl(data / "m.jsonl", lines))
    assert [b.id for b in bad] == ["m.jsonl:1", "m.jsonl:2", "m.jsonl:3", "m.jsonl:4"]
    assert {b.reason for b in bad} == {"path_escapes_root"}
    assert [r.image for r in rows] == [(data / "sub" / "in.png").resolve()] * 2


# --- validation ---------------------------------------------------------------------------------


def _every_reason_dataset(tmp_path: Path) -> Path:
    _img(tmp_path / "ok.png")
    _img(tmp_path / "ok2.png", color=(0, 200, 0))
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not really a jpeg")
    good = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    _img(tmp_path / "big.png", size=(40, 40))
    lines = [
        {"image": "ok.png", "label": "cat"},
        {"image": "missing.png", "label": "cat"},
        {"image": "zero.png", "label": "cat"},
        {"image": "text.jpg", "label": "cat"},
        {"image": "cut.png", "label": "cat"},
        {"image": "big.png", "label": "cat"},
        {"image": "../x.png", "label": "cat"},
        {"image": "ok.png", "label": "  "},
        {"image": "ok.png", "label": "horse"},
        {"image": "ok.png"},
        "{broken",
        {"image": "ok2.png", "label": "dog"},
    ]
    return _jsonl(tmp_path / "data.jsonl", lines)


def test_validation_reason_for_each_real_bad_file(tmp_path):
    path = _every_reason_dataset(tmp_path)
    rows, report = load_dataset(
        path, require=("image", "label"), known_labels={"cat", "dog"}, skip_bad=True, max_pixels=1000
    )
    assert [r.id for r in rows] == ["data.jsonl:1", "data.jsonl:12"]
    assert {b.id: b.reason for b in report.bad} == {
        "data.jsonl:2": "missing_file",
        "data.jsonl:3": "empty_file",
        "data.jsonl:4": "not_an_image",
        "data.jsonl:5": "corrupt_image",
        "data.jsonl:6": "image_too_large",
        "data.jsonl:7": "path_escapes_root",
        "data.jsonl:8": "empty_label",
        "data.jsonl:9": "unknown_label",
        "data.jsonl:10": "missing_field",
        "data.jsonl:11": "bad_json",
    }
    assert {b.reason for b in report.bad} <= set(REASONS)
    assert (report.rows_read, report.rows_ok, report.skipped) == (12, 2, True)
    assert report.label_counts == {"cat": 1, "dog": 1}
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["rows_bad"] == 10 and as_dict["reasons"]["bad_json"] == 1
    assert list(as_dict["reasons"]) == sorted(as_dict["reasons"])
    assert [b["id"] for b in as_dict["bad"]] == [f"data.jsonl:{i}" for i in range(2, 12)]  # file order
    assert set(as_dict["bad"][0]) == {"id", "reason", "detail"}


def test_empty_text_and_extra_required_fields():
    rows = [
        Row(id="r1", text="  "),
        Row(id="r2", text="ok", extra={"speaker": ""}),
        Row(id="r3", text="ok", extra={"speaker": "ann"}),
        Row(id="r4", text="ok"),
    ]
    # A field no reader registered is read from the manifest column of its name (kept in extra).
    from modaltune.data.fields import Field

    good, bad = validate_rows(rows, require=("text", Field("speaker")))
    assert [r.id for r in good] == ["r3"]
    assert [(b.id, b.reason) for b in bad] == [
        ("r1", "empty_text"),
        ("r2", "missing_field"),
        ("r4", "missing_field"),
    ]


def test_question_and_answers_are_row_fields_with_their_own_reasons():
    rows = [
        Row(id="q1", question=" ", answers=("red",)),
        Row(id="q2", question="what?", answers=()),
        Row(id="q3", question="what?"),
        Row(id="q4", question="what?", answers=("red", "")),
        Row(id="q5", question="what?", answers=("red",)),
        Row(id="c1", text=""),
    ]
    good, bad = validate_rows(rows[:5], require=("question", "answers"))
    assert [r.id for r in good] == ["q5"]
    assert [(b.id, b.reason) for b in bad] == [
        ("q1", "empty_question"), ("q2", "empty_answer"), ("q3", "missing_field"), ("q4", "empty_answer")]
    assert "answer or answers" in bad[2].detail
    from modaltune.data.fields import TEXT

    _, bad = validate_rows(rows[5:], require=(TEXT.named("caption", "empty_caption"),))
    assert [(b.reason, b.detail) for b in bad] == [("empty_caption", "'caption' is empty")]


def test_bad_rows_stop_the_run_with_an_actionable_message(tmp_path):
    path = _every_reason_dataset(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset(path, require=("image", "label"), known_labels={"cat", "dog"}, max_pixels=1000)
    msg = str(info.value)
    assert "10 of 12 rows in" in msg and "data.jsonl" in msg
    assert "data.jsonl:5: corrupt_image — " in msg
    assert "fix these rows or pass --skip-bad to skip them (they will be listed in data_report.json)" in msg
    assert REASONS["path_escapes_root"] in msg


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    path = _jsonl(tmp_path / "d.jsonl", [{"image": "zero.png", "label": "a"}])
    with pytest.raises(DataError, match="No usable rows"):
        load_dataset(path, require=("image", "label"), skip_bad=True)


def test_validation_never_modifies_user_files(tmp_path):
    path = _every_reason_dataset(tmp_path)
    _folder(tmp_path / "folder", {"cat": 2})
    (tmp_path / "folder" / "cat" / "bad.txt").write_text("x")
    before = _snapshot(tmp_path)
    load_dataset(path, require=("image", "label"), skip_bad=True, max_pixels=1000)
    load_dataset(tmp_path / "folder", require=("image", "label"), skip_bad=True)
    assert _snapshot(tmp_path) == before


def test_format_bad_truncates():
    report = DataReport(
        source="s", rows_read=25, rows_ok=0, bad=[BadRow(f"r{i}", "empty_text", "d") for i in range(25)]
    )
    text = report.format_bad()
    assert text.splitlines()[0].strip() == "r0: empty_text — d"
    assert len(text.splitlines()) == 21 and text.endswith("… and 5 more")
    assert "more" not in report.format_bad(limit=30)


def test_clean_folder_dataset_round_trip(tmp_path):
    _folder(tmp_path, {"b": 2, "a": 3})
    rows, report = load_dataset(tmp_path, require=("image", "label"))
    assert len(rows) == 5 and report.bad == [] and not report.skipped
    assert list(report.label_counts.items()) == [("a", 3), ("b", 2)]


# --- split --------------------------------------------------------------------------------------


def _rows(spec: dict[str, int]) -> list[Row]:
    return [Row(id=f"{label}/{i:03d}", label=label) for label, n in spec.items() for i in range(n)]


def test_split_is_stratified_deterministic_and_order_independent():
    rows = _rows({"a": 20, "b": 5, "c": 2, "d": 1})
    train, val = train_val_split(rows, val_fraction=0.2, seed=3)
    assert sorted(r.id for r in train + val) == sorted(r.id for r in rows)
    assert not {r.id for r in train} & {r.id for r in val}
    per_class = {lab: sum(r.label == lab for r in val) for lab in "abcd"}
    assert per_class == {"a": 4, "b": 1, "c": 1, "d": 0}
    assert {r.label for r in train} == {"a", "b", "c", "d"}  # every class keeps a training row
    assert [r.id for r in train] == sorted(r.id for r in train)

    again = train_val_split(list(reversed(rows)), val_fraction=0.2, seed=3)
    assert (again[0], again[1]) == (train, val)
    other = train_val_split(rows, val_fraction=0.2, seed=4)[1]
    assert {r.id for r in other} != {r.id for r in val}


def test_split_without_labels_and_edge_cases():
    rows = [Row(id=f"{i:02d}") for i in range(10)]
    train, val = train_val_split(rows, val_fraction=0.3, seed=0)
    assert (len(train), len(val)) == (7, 3)
    singletons = _rows({"a": 1, "b": 1, "c": 1})
    assert [len(x) for x in train_val_split(singletons)] == [2, 1]  # falls back to a plain split
    with pytest.raises(DataError, match="Cannot split 1 row"):
        train_val_split(rows[:1])
    with pytest.raises(ConfigError):
        train_val_split(rows, val_fraction=1.0)
