"""Typed fields (`data.fields`) and the open `Example`: what a task declares is what readers parse and
validation checks, and a new field plugs in without editing the data core."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modaltune.data import load_dataset, validate_rows
from modaltune.data.fields import IMAGE, IMAGE_OR_AUDIO, LABEL, TEXT, Field, FieldError, register_field
from modaltune.data.rows import Example
from modaltune.errors import DataError
from modaltune.tasks.base import task_class
from modaltune.testing import synthetic_audio as sa


def _wav(path: Path, seconds: float = 0.2) -> Path:
    sa.write_audio(path, np.zeros(int(8000 * seconds), dtype=np.float32), 8000)
    return path


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


def test_example_sorts_keywords_into_media_and_values_and_is_immutable():
    ex = Example("a", image="x.png", label="cat", text=None)
    assert ex.media == {"image": Path("x.png")} and ex.values == {"label": "cat"}
    assert ex.label == "cat" and ex.text is None and ex.audio is None
    with pytest.raises(AttributeError, match="immutable"):
        ex.label = "dog"  # type: ignore[misc]
    assert ex.replace(label="dog").label == "dog" and ex.label == "cat"
    assert ex.replace(image=None).media == {}
    with pytest.raises(TypeError, match="no field 'lable'"):
        Example("b", lable="cat")
    with pytest.raises(AttributeError):
        ex.lable  # noqa: B018 - a typo is an error, not a silent None
    # DataLoader workers pickle examples
    assert pickle.loads(pickle.dumps(ex)) == ex and hash(pickle.loads(pickle.dumps(ex))) == hash(ex)


def test_tasks_declare_typed_fields():
    classify = task_class("classify").fields
    assert classify == (IMAGE_OR_AUDIO, LABEL) and IMAGE_OR_AUDIO.kinds == ("image", "audio")
    caption_text = task_class("caption").fields[1]
    assert (caption_text.name, caption_text.shown, caption_text.empty_reason) == ("text", "caption", "empty_caption")
    assert task_class("vqa").fields[0] is IMAGE


def test_a_media_field_of_several_kinds_takes_exactly_one(tmp_path):
    img, wav = _png(tmp_path / "a.png"), _wav(tmp_path / "a.wav")
    rows = [Example("img", image=img, label="x"), Example("snd", audio=wav, label="x"),
            Example("none", label="x"), Example("both", image=img, audio=wav, label="x")]
    good, bad = validate_rows(rows, require=task_class("classify").fields)
    assert [r.id for r in good] == ["img", "snd"]
    assert [(b.id, b.reason) for b in bad] == [("none", "missing_field"), ("both", "missing_field")]
    assert "no 'image or audio' value; this task needs image or audio, label" in bad[0].detail
    assert "both image and audio" in bad[1].detail


def test_classify_reads_audio_folders_and_manifests(tmp_path):
    for label in ("dog", "rain"):
        _wav(tmp_path / "sounds" / label / "1.wav")
    rows, report = load_dataset(tmp_path / "sounds", require=task_class("classify").fields)
    assert {(r.label, r.media["audio"].name) for r in rows} == {("dog", "1.wav"), ("rain", "1.wav")}
    assert report.label_counts == {"dog": 1, "rain": 1}
    # a task that reads images only says so for an audio folder
    with pytest.raises(DataError, match="is an audio folder, but this task reads images"):
        load_dataset(tmp_path / "sounds", require=task_class("vqa").fields)
    lines = [{"audio": "dog/1.wav", "label": "dog"}, {"audio": "../x.wav", "label": "dog"}]
    (tmp_path / "sounds" / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    rows, report = load_dataset(tmp_path / "sounds" / "m.jsonl", require=task_class("classify").fields,
                                skip_bad=True)
    assert [r.media for r in rows] == [{"audio": (tmp_path / "sounds" / "dog" / "1.wav").resolve()}]
    assert report.reason_counts() == {"path_escapes_root": 1}


def test_a_field_registered_by_a_family_is_parsed_validated_and_reported(tmp_path):
    """What a new family does for data of a new shape: one field type, registered from its module."""

    @dataclass(frozen=True)
    class Rating(Field):
        types: tuple[type, ...] = (int, float)
        type_words: str = "number from 1 to 5"

        def convert(self, value):
            if not 1 <= value <= 5:
                raise FieldError("bad_rating", f"rating {value} is outside 1..5")
            return float(value)

    rating = register_field(Rating("rating_for_test", columns=("rating_for_test", "stars_for_test")))
    _png(tmp_path / "a.png")
    lines = [{"image": "a.png", "stars_for_test": 4}, {"image": "a.png", "rating_for_test": "five"},
             {"image": "a.png", "rating_for_test": 9}, {"image": "a.png"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    rows, report = load_dataset(tmp_path / "m.jsonl", require=(IMAGE, rating), skip_bad=True)
    assert [r.rating_for_test for r in rows] == [4.0]
    assert [(b.id, b.reason) for b in report.bad] == [
        ("m.jsonl:2", "bad_json"), ("m.jsonl:3", "bad_rating"), ("m.jsonl:4", "missing_field")]
    assert "'rating_for_test' must be a number from 1 to 5, got str" in report.bad[0].detail
    with pytest.raises(ValueError, match="column 'caption' is claimed by field 'text'"):
        register_field(Field("title_for_test", columns=("caption",)))
    assert TEXT.columns == ("text", "caption")
