"""`modaltune export --format onnx`: graphs checked against PyTorch, then run by onnxruntime alone and
agreeing with `modaltune predict` on the PyTorch model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnx_missing: pip install 'modaltune[onnx]' (make test installs it)")

from modaltune.errors import ConfigError  # noqa: E402
from modaltune.export.registry import ExportError, exporter_for  # noqa: E402
from modaltune.tasks.base import create_task  # noqa: E402


def _images(folder: Path, n: int) -> list[str]:
    return [str(p) for p in sorted(folder.rglob("*.png"))[:n]]


def _agree(onnx: list[dict], torch_: list[dict], key: str) -> None:
    """Same answer and ranking for each input, scores within 1e-4."""
    assert len(onnx) == len(torch_)
    for a, b in zip(onnx, torch_):
        assert a["input"] == b["input"] and a[key] == b[key]
        assert [t[key] for t in a["top"]] == [t[key] for t in b["top"]]
        assert [t["score"] for t in a["top"]] == pytest.approx([t["score"] for t in b["top"]], abs=1e-4)


@pytest.fixture(scope="module")
def clip_run(tiny_clip: Path, shape_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP linear probe (its head moved away from the prompt embeddings by training)."""
    from modaltune.api import train
    from modaltune.config import build_config

    out = tmp_path_factory.mktemp("onnx-run") / "run"
    train(build_config(task="classify", model=str(tiny_clip), data=str(shape_folder), strategy="linear-probe",
                       epochs=1, batch_size=6, seed=0, output=str(out)))
    return out


def test_classify_run_exports_checks_quantizes_and_predicts_as_pytorch(clip_run, shape_folder, run_cli,
                                                                       monkeypatch):
    result = run_cli("export", str(clip_run), "--format", "onnx", "--quantize", "int8")
    assert result.returncode == 0, result.stderr
    assert "parity with PyTorch" in result.stdout and "int8 on 12 validation rows" in result.stdout
    out = clip_run / "onnx"
    meta = json.loads((out / "modaltune_onnx.json").read_text())
    report = meta["report"]
    assert report["exporter"] == "dynamo" and report["max_abs_diff"] <= 1e-4
    for graph in ("media", "text"):
        assert (out / f"{graph}.onnx").is_file() and (out / f"{graph}.int8.onnx").is_file()
        checks = report["graphs"][graph]["checks"]
        assert {c["batch"] for c in checks} == {1, 3} and all(c["max_abs_diff"] <= 1e-4 for c in checks)
    labels = meta["state"]["labels"]
    assert (out / "labels.txt").read_text().splitlines() == labels == ["circle", "square", "triangle"]
    validation = report["validation"]
    assert validation["rows"] == 12 and validation["onnx"] == validation["pytorch"]
    assert max(validation["max_abs_diff"].values()) <= 1e-4
    int8 = report["int8"]["validation"]
    assert int8["rows"] == 12 and 0 <= int8["top1_agreement"] <= 1 and int8["metric"] == "accuracy"

    images = _images(shape_folder / "val", 3)
    expected = run_cli("predict", str(clip_run), *images)
    relabelled = run_cli("predict", str(clip_run), *images, "--labels", "square,circle")
    import modaltune.api

    def no_torch_model(*args, **kwargs):
        raise AssertionError("the ONNX path loaded the PyTorch model")

    monkeypatch.setattr(modaltune.api, "load_model", no_torch_model)
    got = run_cli("predict", str(out), *images)
    assert got.returncode == 0, got.stderr
    _agree([json.loads(line) for line in got.stdout.splitlines()],
           [json.loads(line) for line in expected.stdout.splitlines()], "label")
    # Other labels: zero-shot through the text graph, as the PyTorch classifier rebuilds its head.
    got = run_cli("predict", str(out), *images, "--labels", "square,circle")
    _agree([json.loads(line) for line in got.stdout.splitlines()],
           [json.loads(line) for line in relabelled.stdout.splitlines()], "label")


def test_vilt_vqa_exports_and_answers_as_pytorch(tiny_vilt, vqa_manifest, tmp_path):
    from PIL import Image

    from modaltune.api import predict
    from modaltune.export.onnx_export import export_onnx

    task = create_task("vqa", train_answers=["blue", "square", "green"])
    model = tmp_path / "model"
    task.save(task.load(tiny_vilt), model)
    # No run directory: the graph checks run on synthetic questions and images.
    report = export_onnx(model, tmp_path / "onnx", exporter="torchscript")
    assert report["max_abs_diff"] <= 1e-4 and "validation" not in report
    assert (tmp_path / "onnx" / "answers.txt").read_text().splitlines()[-3:] == ["blue", "square", "green"]
    images = [str(p) for p in sorted((vqa_manifest.parent / "images").glob("*.png"))[:3]]
    tall = tmp_path / "tall.png"  # another size: its own group through the graph
    Image.open(images[0]).resize((32, 48)).save(tall)
    question = "what colour is the circle?"
    expected = predict(model, [*images, tall], question=question)
    got = predict(tmp_path / "onnx", [*images, tall], question=question)
    _agree(got, expected, "answer")
    with pytest.raises(ConfigError, match="--question"):
        predict(tmp_path / "onnx", images)


def test_retrieve_export_ranks_texts_as_pytorch(tiny_clip, shape_folder, tmp_path):
    from modaltune.api import predict
    from modaltune.export.onnx_export import export_onnx

    task = create_task("retrieve")
    task.save(task.load(tiny_clip), tmp_path / "model")
    report = export_onnx(tmp_path / "model", tmp_path / "onnx", exporter="torchscript")
    assert set(report["graphs"]) == {"media", "text"} and report["max_abs_diff"] <= 1e-4
    images = _images(shape_folder / "val", 2)
    texts = ["a red circle", "a blue square on a plain background", "a triangle"]
    _agree(predict(tmp_path / "onnx", images, texts=texts), predict(tmp_path / "model", images, texts=texts), "text")
    embeddings = predict(tmp_path / "onnx", images)
    assert len(embeddings[0]["embedding"]) == len(predict(tmp_path / "model", images)[0]["embedding"])


def test_parity_check_fails_an_export_that_differs(tiny_clip, tmp_path, monkeypatch):
    """A graph whose numbers are off (here: noise added to the largest weight of the written file) is
    refused, and the folder is not left as a usable export."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from modaltune.export import onnx_export
    from modaltune.export.onnx_predict import META_FILE

    write = onnx_export._export

    def nudged(graph, file, exporter):
        write(graph, file, exporter)
        model = onnx.load(str(file))
        weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = numpy_helper.to_array(weight)
        noise = np.random.default_rng(0).normal(0, 0.05, values.shape).astype(values.dtype)
        weight.CopyFrom(numpy_helper.from_array(values + noise, weight.name))
        onnx.save(model, str(file))

    monkeypatch.setattr(onnx_export, "_export", nudged)
    task = create_task("retrieve")
    task.save(task.load(tiny_clip), tmp_path / "model")
    with pytest.raises(ExportError, match=r"differ from the PyTorch model by more than 0\.0001: media \(batch 3"):
        onnx_export.export_onnx(tmp_path / "model", tmp_path / "onnx", exporter="torchscript")
    assert not (tmp_path / "onnx" / META_FILE).exists()  # so predict refuses the folder


def test_generative_and_unknown_tasks_say_they_are_not_exported(tiny_blip_vqa, tmp_path, run_cli):
    from modaltune.export.onnx_export import export_onnx

    task = create_task("vqa")
    task.save(task.load(tiny_blip_vqa), tmp_path / "blip")
    with pytest.raises(ExportError, match=r"generative VQA \(blip\) is not exported to ONNX.*optimum"):
        export_onnx(tmp_path / "blip", tmp_path / "onnx")
    assert "captioning (BLIP, GIT) is not exported" in str(exporter_for("caption").unsupported(None, None))
    with pytest.raises(ExportError, match="task nope has no ONNX export; tasks that have one: classify, retrieve, vqa"):
        exporter_for("nope")
    result = run_cli("export", str(tmp_path / "blip"), "--format", "tflite")
    assert result.returncode == 2 and "the export format is onnx" in result.stderr
    result = run_cli("predict", str(tmp_path), str(tmp_path / "x.png"))
    assert result.returncode == 2
