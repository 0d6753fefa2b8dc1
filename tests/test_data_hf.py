"""`--data` from Hugging Face `datasets`: a save_to_disk folder (a DatasetDict of splits too) and Parquet
files, with media embedded as bytes reaching modaltune's own decoders and reason codes."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

from modaltune.data import load_dataset  # noqa: E402
from modaltune.data.fields import IMAGE_OR_AUDIO, LABEL, TEXT  # noqa: E402
from modaltune.data.media import load_image  # noqa: E402
from modaltune.data.media.embedded import embedded_media_dir  # noqa: E402
from modaltune.errors import DataError  # noqa: E402

CLASSIFY = (IMAGE_OR_AUDIO, LABEL)


def _png(colour: tuple[int, int, int], size: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


def _wav(seconds: float = 0.25, rate: int = 16000) -> bytes:
    import soundfile as sf

    out = io.BytesIO()
    sf.write(out, (0.1 * np.sin(np.arange(int(seconds * rate)) / 5)).astype("float32"), rate, format="WAV")
    return out.getvalue()


def _image_dataset(images: list[bytes], labels: list[int], column: str = "image") -> datasets.Dataset:
    features = datasets.Features({column: datasets.Image(), "label": datasets.ClassLabel(names=["red", "blue"])})
    return datasets.Dataset.from_dict({column: [{"bytes": b, "path": None} for b in images], "label": labels},
                                      features=features)


def test_save_to_disk_folder_gives_class_names_and_decodable_images(tmp_path: Path) -> None:
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    _image_dataset([red, blue, red], [0, 1, 0]).save_to_disk(str(tmp_path / "shapes"))
    rows, report = load_dataset(tmp_path / "shapes", require=CLASSIFY)
    assert [r.label for r in rows] == ["red", "blue", "red"]  # ClassLabel ids become their names
    assert [r.id for r in rows] == ["shapes:0", "shapes:1", "shapes:2"]
    assert report.label_counts == {"blue": 1, "red": 2}
    # The embedded bytes live once in the cache, content-addressed: identical images share one file.
    assert rows[0].image == rows[2].image != rows[1].image
    assert rows[0].image.is_relative_to(embedded_media_dir()) and rows[0].image.read_bytes() == red
    assert load_image(rows[1].image).getpixel((0, 0)) == (0, 0, 255)


def test_embedded_bytes_get_the_image_decoders_reason_codes(tmp_path: Path) -> None:
    good = _png((0, 255, 0))
    truncated = good[: len(good) // 2]
    _image_dataset([good, truncated, b"not an image at all"], [0, 1, 1]).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match="2 of 3 rows"):
        load_dataset(tmp_path / "d", require=CLASSIFY)
    rows, report = load_dataset(tmp_path / "d", require=CLASSIFY, skip_bad=True)
    assert [r.id for r in rows] == ["d:0"]
    assert {b.id: b.reason for b in report.bad} == {"d:1": "corrupt_image", "d:2": "not_an_image"}
    # The decompression-bomb rule reads the header of the embedded image as of any file.
    with pytest.raises(DataError, match=r"d:0: image_too_large — .* is 16x16 = 256 pixels, over the limit of 100"):
        load_dataset(tmp_path / "d", require=CLASSIFY, skip_bad=True, max_pixels=100)


def test_audio_column_is_read_without_datasets_decoding_it(tmp_path: Path) -> None:
    # datasets >= 4 decodes Audio only through torchcodec; the reader takes the stored bytes instead.
    clip = _wav()
    # (cast from the storage struct: encoding an Audio value needs torchcodec too)
    data = datasets.Dataset.from_dict({"audio": [{"bytes": clip, "path": "a.wav"},
                                                 {"bytes": clip[:200], "path": "b.wav"}],
                                       "label": ["tone", "tone"]}).cast_column("audio", datasets.Audio())
    data.save_to_disk(str(tmp_path / "sounds"))
    rows, report = load_dataset(tmp_path / "sounds", require=CLASSIFY, skip_bad=True)
    assert rows[0].audio.suffix == ".wav" and rows[0].label == "tone"
    assert [(b.id, b.reason) for b in report.bad] == [("sounds:1", "corrupt_audio")]


def test_parquet_embedded_bytes_relative_paths_and_paths_outside(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # datasets measures the files a path-only cell names from the working folder
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(_png((1, 2, 3)))
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.png"
    outside.write_bytes(_png((4, 5, 6)))
    features = datasets.Features({"img": datasets.Image(), "caption": datasets.Value("string")})
    data = datasets.Dataset.from_dict({
        "img": [{"bytes": _png((7, 8, 9)), "path": None}, {"bytes": None, "path": "pics/a.png"},
                {"bytes": None, "path": str(outside)}],
        "caption": ["a dark square", "another one", "far away"]}, features=features)
    data.to_parquet(str(tmp_path / "pairs.parquet"))
    # `img` fills the image field by its datasets.Image type; `caption` fills text by name.
    rows, report = load_dataset(tmp_path / "pairs.parquet", require=(IMAGE_OR_AUDIO, TEXT), skip_bad=True)
    assert [r.text for r in rows] == ["a dark square", "another one"]
    assert rows[1].image == (tmp_path / "pics" / "a.png").resolve()
    [bad] = report.bad
    assert (bad.id, bad.reason) == ("pairs.parquet:2", "path_escapes_root")
    assert "save_to_disk" in bad.detail  # how to embed the files instead


def test_missing_column_and_missing_extra_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets.Dataset.from_dict({"image": [{"bytes": _png((1, 1, 1)), "path": None}], "tag": ["x"]},
                               features=datasets.Features({"image": datasets.Image(), "tag": datasets.Value("string")})
                               ).to_parquet(str(tmp_path / "x.parquet"))
    with pytest.raises(DataError, match=r"no label column\. Found columns: image, tag"):
        load_dataset(tmp_path / "x.parquet", require=CLASSIFY)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if the hub extra were not installed
    with pytest.raises(DataError, match=r"pip install 'modaltune\[hub\]'"):
        load_dataset(tmp_path / "x.parquet", require=CLASSIFY)


@pytest.mark.slow
def test_train_on_a_dataset_dict_of_splits(tiny_clip: Path, tmp_path: Path, capsys) -> None:
    from _cli import invoke

    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    splits = {split: _image_dataset([_png(colours[name]) for name in colours for _ in range(n)],
                                    [i for i in range(2) for _ in range(n)])
              for split, n in (("train", 4), ("validation", 2))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))  # dd/dataset_dict.json, dd/train/, …
    code, out, err = invoke(capsys, "train", "--task", "classify", "--model", str(tiny_clip), "--data",
                            str(tmp_path / "dd"), "--strategy", "linear-probe", "--epochs", "1", "--quiet",
                            "--output", str(tmp_path / "run"))
    assert code == 0, err
    import json

    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["split"] == "the data's own val/ folder"
    assert report["train"]["rows_ok"] == 8 and report["val"]["rows_ok"] == 4
    assert report["train"]["label_counts"] == {"blue": 4, "red": 4}
