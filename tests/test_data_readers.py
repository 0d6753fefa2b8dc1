"""Source-layout readers (`data.readers`): sniffing, ``data_format`` overrides, the clear error for a
``.json`` no reader claims, the official VQA pair, and audio class folders through validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modaltune.config import build_config
from modaltune.data import load_dataset, read_rows, readers
from modaltune.data.readers import Reader, get_reader, reader_names, register_reader
from modaltune.data.readers.base import Source
from modaltune.errors import ConfigError, DataError
from modaltune.testing import synthetic_audio as sa

FORMAT_NAMES = ("vqa", "coco-instances", "coco-captions", "chat-json", "csv", "odvg", "boxes-jsonl", "chat-jsonl",
                "jsonl", "hf-dataset", "parquet", "folder")


def _img(path: Path, color=(200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def _json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _coco_captions(path: Path) -> Path:
    _img(path.parent / "images" / "a.png")
    return _json(path, {"images": [{"id": 7, "file_name": "images/a.png"}],
                        "annotations": [{"id": 1, "image_id": 7, "caption": "a red square"},
                                        {"id": 2, "image_id": 7, "caption": "red"}]})


def _vqa_pair(folder: Path, subtype: str = "val2014") -> tuple[Path, Path]:
    _img(folder / subtype / f"COCO_{subtype}_{42:012d}.jpg")
    questions = _json(folder / f"v2_OpenEnded_mscoco_{subtype}_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": subtype,
        "questions": [{"image_id": 42, "question": "What color is it?", "question_id": 420},
                      {"image_id": 42, "question": "Is it round?", "question_id": 421}]})
    answers = [{"answer": "red", "answer_confidence": "yes", "answer_id": i} for i in range(1, 10)]
    annotations = _json(folder / f"v2_mscoco_{subtype}_annotations.json", {
        "info": {}, "license": {}, "data_subtype": subtype, "data_type": "mscoco",
        "annotations": [
            {"question_type": "what color is the", "multiple_choice_answer": "red", "image_id": 42,
             "answer_type": "other", "question_id": 420,
             "answers": [*answers, {"answer": "dark red", "answer_confidence": "maybe", "answer_id": 10}]},
            {"question_type": "is it", "multiple_choice_answer": "no", "image_id": 42, "answer_type": "yes/no",
             "question_id": 421, "answers": [{"answer": "no", "answer_confidence": "yes", "answer_id": 1}]}]})
    return questions, annotations


# --- registry and sniffing ----------------------------------------------------------------------


def test_registry_names_order_and_duplicates():
    assert tuple(reader_names()) == FORMAT_NAMES  # specific layouts sniff before the general folder
    assert all(get_reader(name).summary for name in FORMAT_NAMES)
    with pytest.raises(ValueError, match="registered already"):
        register_reader(get_reader("csv"))
    with pytest.raises(DataError, match="Unknown data format 'xlsx'; use one of: vqa, coco-instances, "):
        get_reader("xlsx")


def test_each_layout_is_sniffed(tmp_path):
    image_folder = tmp_path / "folder"
    _img(image_folder / "cat" / "1.png")
    _img(image_folder / "dog" / "1.png")
    rows, _, _ = read_rows(image_folder)
    assert [(r.id, r.label) for r in rows] == [("cat/1.png", "cat"), ("dog/1.png", "dog")]

    _img(tmp_path / "m" / "a.png")
    (tmp_path / "m" / "data.csv").write_text("image,label\na.png,cat\n")
    assert [r.id for r in read_rows(tmp_path / "m" / "data.csv")[0]] == ["data.csv:2"]
    (tmp_path / "m" / "data.jsonl").write_text('{"image": "a.png", "label": "cat"}\n')
    assert [r.id for r in read_rows(tmp_path / "m" / "data.jsonl")[0]] == ["data.jsonl:1"]

    rows, _, _ = read_rows(_coco_captions(tmp_path / "coco" / "captions.json"), require=("image", "text"))
    assert [(r.id, r.text) for r in rows] == [("captions.json:ann1", "a red square"), ("captions.json:ann2", "red")]

    questions, _ = _vqa_pair(tmp_path / "vqa")
    rows, bad, _ = read_rows(questions, require=("image", "question", "answers"))
    assert bad == [] and [r.id for r in rows] == [f"{questions.name}:q420", f"{questions.name}:q421"]


def test_official_vqa_pair_from_the_folder_either_file_or_alone(tmp_path):
    questions, annotations = _vqa_pair(tmp_path / "vqa")
    need = ("image", "question", "answers")
    by_folder, _, root = read_rows(tmp_path / "vqa", require=need)
    assert root == (tmp_path / "vqa").resolve()
    first = by_folder[0]
    assert first.image == (tmp_path / "vqa" / "val2014" / f"COCO_val2014_{42:012d}.jpg").resolve()
    assert first.question == "What color is it?"
    assert first.answers == ("red",) * 9 + ("dark red",)
    assert first.extra == {"question_id": 420, "image_id": 42, "question_type": "what color is the",
                           "answer_type": "other", "multiple_choice_answer": "red"}
    assert read_rows(annotations, require=need)[0] == by_folder  # the annotations file finds its questions
    assert read_rows(tmp_path / "vqa", require=need, data_format="vqa")[0] == by_folder

    rows, report = load_dataset(tmp_path / "vqa", require=need)
    assert report.rows_ok == 2 and report.bad == []

    annotations.unlink()  # the test split: questions only
    rows, _, _ = read_rows(questions, require=("image", "question"))
    assert [r.answers for r in rows] == [None, None]
    with pytest.raises(DataError, match="no annotations file .* this task needs answers"):
        read_rows(questions, require=need)


def test_vqa_pair_of_different_splits_is_an_error(tmp_path):
    questions, _ = _vqa_pair(tmp_path / "a", subtype="val2014")
    _, annotations = _vqa_pair(tmp_path / "b", subtype="train2014")
    annotations.rename(tmp_path / "a" / annotations.name)
    (tmp_path / "a" / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(DataError, match="different splits .*train2014, val2014"):
        read_rows(questions, require=("image", "question", "answers"))


# --- a .json no reader claims -------------------------------------------------------------------


@pytest.mark.parametrize("data, found", [
    # (with its 'categories' a COCO instances file is read by coco-instances: tests/test_detect_data.py)
    ({"info": {}, "images": [{"id": 1, "file_name": "a.jpg"}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 16}]},
     r"a COCO instances file \(top-level keys 'info', 'images', 'annotations'; annotations "
     r"with 'bbox'\) without its 'categories' list"),
    # (a LLaVA conversations file is read by chat-json: tests/test_chat_data.py)
    ({"model": "x", "scores": [1, 2]}, r"a JSON object with top-level keys 'model', 'scores'"),
    ([{"image": "a.png", "label": "cat"}], r"a JSON list of 1 objects with keys 'image', 'label'"),
])
def test_unclaimed_json_says_what_it_found_and_what_is_accepted(tmp_path, data, found):
    path = _json(tmp_path / "data.json", data)
    with pytest.raises(DataError) as info:
        read_rows(path, require=("image", "text"))
    msg = str(info.value)
    assert __import__("re").search(found, msg), msg
    assert "not a COCO captions file" in msg and "one JSON object per line is JSONL" in msg
    assert f"--data-format name: {', '.join(FORMAT_NAMES)}." in msg
    # a folder holding that one .json reads it, and says the same
    with pytest.raises(DataError, match="categories|LLaVA|JSON object|JSON list"):
        read_rows(tmp_path, require=("image", "text"))


def test_coco_instances_is_not_read_as_captions_even_with_captions_beside(tmp_path):
    path = _json(tmp_path / "instances.json", {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]})
    with pytest.raises(DataError, match="COCO instances"):
        load_dataset(path, require=("image", "text"))
    # Asked for explicitly, the captions reader reads it and every annotation lacks a caption.
    rows, bad, _ = read_rows(path, require=("image", "text"), data_format="coco-captions")
    assert rows == [] and [(b.id, b.reason) for b in bad] == [("instances.json:ann1", "missing_field")]


# --- data_format overrides sniffing -------------------------------------------------------------


def test_data_format_overrides_the_extension_and_the_folder_rule(tmp_path):
    _img(tmp_path / "a.png")
    lines = '{"image": "a.png", "label": "cat"}\n{"image": "a.png", "label": "dog"}\n'
    (tmp_path / "pairs.json").write_text(lines)  # JSON lines in a .json
    with pytest.raises(DataError, match="not valid JSON: Extra data.*--data-format jsonl"):
        read_rows(tmp_path / "pairs.json")
    rows, _, _ = read_rows(tmp_path / "pairs.json", data_format="jsonl")
    assert [(r.id, r.label) for r in rows] == [("pairs.json:1", "cat"), ("pairs.json:2", "dog")]
    # a folder holding one data file: the format applies to that file
    assert read_rows(tmp_path, data_format="jsonl")[0] == rows

    (tmp_path / "table.txt").write_text("image,label\na.png,cat\n")
    with pytest.raises(DataError, match=r"Unsupported data file .*table\.txt"):
        read_rows(tmp_path / "table.txt")
    assert [r.label for r in read_rows(tmp_path / "table.txt", data_format="csv")[0]] == ["cat"]

    folder = tmp_path / "classes"
    _img(folder / "cat" / "1.png")
    (folder / "labels.csv").write_text("image,label\ncat/1.png,dog\n")
    assert [r.label for r in read_rows(folder)[0]] == ["dog"]  # sniffed: the folder holds a manifest
    rows, bad, _ = read_rows(folder, data_format="folder")  # forced: a class folder, the csv is a stray file
    assert [r.label for r in rows] == ["cat"]
    assert [(b.id, b.reason) for b in bad] == [("labels.csv", "unsupported_file")]

    with pytest.raises(DataError, match="--data-format folder reads a folder"):
        read_rows(tmp_path / "pairs.json", data_format="folder")
    with pytest.raises(DataError, match="--data-format csv reads a file, but .*classes/cat is a folder"):
        read_rows(folder / "cat", data_format="csv")
    with pytest.raises(DataError, match="not a COCO captions file: it needs top-level 'images'"):
        read_rows(_json(tmp_path / "other" / "x.json", {"images": []}), data_format="coco-captions")


def test_data_format_in_split_folders(tmp_path):
    for split in ("train", "val"):
        _img(tmp_path / split / "a.png")
        (tmp_path / split / "rows.json").write_text('{"image": "a.png", "label": "cat"}\n')
    rows, report = load_dataset(tmp_path, split="val", require=("image", "label"), data_format="jsonl")
    assert [r.id for r in rows] == ["val/rows.json:1"] and report.rows_ok == 1


def test_a_json_is_parsed_once_while_sniffing_and_reading(tmp_path, monkeypatch):
    path = _coco_captions(tmp_path / "captions.json")
    calls = []
    real = readers.base.json.loads
    monkeypatch.setattr(readers.base.json, "loads", lambda text: calls.append(1) or real(text))
    read_rows(path, require=("image", "text"))
    assert len(calls) == 1


def test_a_new_reader_plugs_in_before_the_folder_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_READERS", dict(readers._READERS))

    class Lines(Reader):
        """Text files of image paths, label after a tab."""

        name = "lines"
        summary = "a .tsv of image<TAB>label"

        def sniff(self, source: Source) -> bool:
            return source.suffix == ".tsv"

        def read(self, source, *, require, id_prefix):
            from modaltune.data.readers.records import rows_from_records

            records = ((i, dict(zip(("image", "label"), line.split("\t"))))
                       for i, line in enumerate(source.path.read_text().splitlines(), 1))
            return rows_from_records(records, path=source.path, id_prefix=id_prefix, require=require)

    register_reader(Lines(), before="folder")
    assert reader_names()[-2:] == ["lines", "folder"]
    _img(tmp_path / "a.png")
    (tmp_path / "d.tsv").write_text("a.png\tcat\n")
    assert [(r.id, r.label) for r in read_rows(tmp_path / "d.tsv")[0]] == [("d.tsv:1", "cat")]


# --- audio class folders ------------------------------------------------------------------------


def test_audio_folder_rows_and_validation_with_reason_codes(tmp_path):
    root = sa.write_audio_classification_folder(tmp_path / "sounds", classes=("tone", "noise"), per_class=2,
                                                seconds=0.2, formats=("wav", "flac"), sampling_rates=(16000,))
    rows, bad, media_root = read_rows(root, require=("audio", "label"))
    assert bad == [] and media_root == root.resolve()
    assert [(r.id, r.label, r.image) for r in rows] == [
        ("noise/0000.wav", "noise", None), ("noise/0001.flac", "noise", None),
        ("tone/0000.wav", "tone", None), ("tone/0001.flac", "tone", None)]
    assert all(r.audio is not None and r.audio.is_file() for r in rows)

    (root / "tone" / "fake.wav").write_text("not audio at all, just text")
    sa.write_audio(root / "noise" / "long.wav", sa.tone(440, 1.5, 8000), 8000)
    (root / "tone" / "notes.txt").write_text("hi")
    (root / "tone" / "empty.flac").write_bytes(b"")
    good, report = load_dataset(root, require=("audio", "label"), skip_bad=True, max_audio_seconds=1.0)
    assert len(good) == 4 and report.label_counts == {"noise": 2, "tone": 2}
    assert {b.id: b.reason for b in report.bad} == {
        "noise/long.wav": "audio_too_long",
        "tone/empty.flac": "empty_file",
        "tone/fake.wav": "not_audio",
        "tone/notes.txt": "unsupported_file",
    }
    assert ".flac" in next(b.detail for b in report.bad if b.id == "tone/notes.txt")
    # With the default limit (60 s) the 1.5 s clip is fine.
    _, report = load_dataset(root, require=("audio", "label"), skip_bad=True)
    assert "noise/long.wav" not in {b.id for b in report.bad}
    with pytest.raises(DataError, match=r"(?s)3 of 8 rows.*tone/fake.wav: not_audio — .*--skip-bad"):
        load_dataset(root, require=("audio", "label"))


def test_audio_manifest_rows_are_checked_by_the_audio_decoder(tmp_path):
    sa.write_audio(tmp_path / "a.wav", sa.tone(440, 0.1, 8000), 8000)
    (tmp_path / "b.wav").write_bytes(b"RIFF????WAVEjunk")
    lines = [{"audio": "a.wav", "label": "x"}, {"audio": "b.wav", "label": "y"}, {"audio": "c.wav", "label": "y"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    good, report = load_dataset(tmp_path / "d.jsonl", require=("audio", "label"), skip_bad=True)
    assert [r.id for r in good] == ["d.jsonl:1"]
    assert {b.id: b.reason for b in report.bad} == {"d.jsonl:2": "corrupt_audio", "d.jsonl:3": "missing_file"}


def test_mixed_images_and_audio_in_one_folder_is_an_error(tmp_path):
    _img(tmp_path / "cat" / "1.png")
    _img(tmp_path / "cat" / "2.png")
    sa.write_audio(tmp_path / "dog" / "bark.wav", np.zeros(80, dtype=np.float32), 8000)
    with pytest.raises(DataError, match=r"mixes media kinds: 1 audio file \(e\.g\. dog/bark\.wav\); 2 images "
                                        r"\(e\.g\. cat/1\.png\)\. One dataset holds one kind of media"):
        read_rows(tmp_path)


def test_a_folder_of_the_other_kind_than_the_task_needs(tmp_path):
    sa.write_audio(tmp_path / "sounds" / "dog" / "bark.wav", np.zeros(80, dtype=np.float32), 8000)
    with pytest.raises(DataError, match="is an audio folder, but this task reads images"):
        read_rows(tmp_path / "sounds", require=("image", "label"))
    _img(tmp_path / "pics" / "cat" / "1.png")
    with pytest.raises(DataError, match="is an image folder, but this task reads audio files"):
        read_rows(tmp_path / "pics", require=("audio", "label"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images found in .*empty, nor audio files"):
        read_rows(tmp_path / "empty", require=("audio", "label"))


def test_flat_audio_folder_without_labels_and_loose_clips_with(tmp_path):
    sa.write_audio(tmp_path / "a.ogg", sa.tone(440, 0.2, 16000), 16000)
    rows, bad, _ = read_rows(tmp_path, require=("audio",))
    assert [(r.id, r.audio.name) for r in rows] == [("a.ogg", "a.ogg")] and bad == []
    rows, bad, _ = read_rows(tmp_path, require=("audio", "label"))
    assert rows == [] and [(b.id, b.reason) for b in bad] == [("a.ogg", "missing_field")]
    assert bad[0].detail.startswith("audio file is directly in")


# --- config and API ------------------------------------------------------------------------------


def test_config_declares_data_format_and_audio_limit():
    cfg = build_config(task="classify", model="m", data="d", data_format="coco-captions", max_audio_seconds=5)
    assert (cfg.data_format, cfg.max_audio_seconds) == ("coco-captions", 5.0)
    assert build_config(task="classify", model="m", data="d").max_audio_seconds == 60.0
    with pytest.raises(ConfigError, match=r"data.format \[--data-format\]: unknown data format 'xml'; use one of: vqa"):
        build_config(task="classify", model="m", data="d", data_format="xml")
    with pytest.raises(ConfigError, match=r"data.max_audio_seconds \[--max-audio-seconds\]"):
        build_config(task="classify", model="m", data="d", max_audio_seconds=0)


def test_api_validate_and_splits_take_the_data_format(tmp_path):
    from modaltune.api import load_splits, validate
    from modaltune.tasks.base import task_class

    for i in range(6):
        _img(tmp_path / f"{i}.png", color=(i * 40, 0, 0))
    (tmp_path / "rows.json").write_text("".join(json.dumps({"image": f"{i}.png", "label": label}) + "\n"
                                                for i, label in enumerate(("cat", "dog") * 3)))
    with pytest.raises(DataError, match="--data-format jsonl"):
        validate("classify", tmp_path / "rows.json")
    assert validate("classify", tmp_path / "rows.json", data_format="jsonl")["all"]["rows_ok"] == 6
    cfg = build_config(task="classify", model="m", data=str(tmp_path / "rows.json"), data_format="jsonl")
    splits = load_splits(cfg, task_class("classify"))
    assert len(splits.train) + len(splits.val) == 6 and splits.labels == ["cat", "dog"]
