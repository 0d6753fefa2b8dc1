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
    with pytest.raises(ExportError, match="no ONNX export; tasks that have one: classify, detect, retrieve, vqa"):
        exporter_for("nope")
    result = run_cli("export", str(tmp_path / "blip"), "--format", "tflite")
    assert result.returncode == 2 and "the export format is onnx" in result.stderr
    result = run_cli("predict", str(tmp_path), str(tmp_path / "x.png"))
    assert result.returncode == 2


@pytest.fixture(scope="module")
def owlvit_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny OWL-ViT saved as a modaltune detector of three categories."""
    from modaltune.testing.tiny_detect import build_owl

    texts = ["red circle", "blue square", "green triangle", "yellow star", "a photo of an object"]
    base = build_owl(tmp_path_factory.mktemp("tiny-owlvit"), kind="owlvit", texts=texts, seed=0)
    task = create_task("detect", labels=["red circle", "blue square", "green triangle"])
    loaded = task.load(base)
    import torch

    from modaltune.models.base import backbone_of

    # Random logit scales saturate every score at 1.0 (all ties); a unit scale and no shift leave
    # scores spread between 0.27 and 0.73, so rankings and thresholds say something.
    head = backbone_of(loaded.model).class_head
    with torch.no_grad():
        for layer in (head.logit_scale, head.logit_shift):
            layer.weight.zero_()
            layer.bias.zero_()
    model = tmp_path_factory.mktemp("owlvit-detector") / "model"
    task.save(loaded, model)
    return model


def _same_detections(onnx: list[dict], torch_: list[dict]) -> None:
    assert len(onnx) == len(torch_)
    for a, b in zip(onnx, torch_):
        assert a["input"] == b["input"] and a["labels"] == b["labels"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)
        assert [v for box in a["boxes"] for v in box] == pytest.approx([v for box in b["boxes"] for v in box], abs=0.02)


def test_owl_detector_exports_and_detects_as_pytorch(owlvit_detector, detect_scenes, tmp_path):
    """Image + text queries → logits and boxes; batch and query count are dynamic, so other labels work."""
    from modaltune.api import predict
    from modaltune.export.onnx_export import export_onnx

    out = tmp_path / "onnx"
    report = export_onnx(owlvit_detector, out, exporter="torchscript")
    checks = report["graphs"]["detect"]["checks"]
    assert report["max_abs_diff"] <= 1e-4 and {c["output"] for c in checks} == {"logits", "boxes", "image_embeds"}
    # traced on 3 images x 3 queries; checked on 1 image, 1 query and 5 queries too
    shapes = {(c["shapes"]["pixel_values"][0], c["shapes"]["input_ids"][0]) for c in checks}
    assert shapes == {(3, 3), (1, 3), (2, 1), (3, 5)}
    assert (out / "categories.txt").read_text().splitlines() == ["red circle", "blue square", "green triangle"]
    images = [str(p) for p in sorted((detect_scenes.parent / "images").glob("*.png"))[:3]]
    options = {"threshold": 0.0, "max_detections": 4}
    _same_detections(predict(out, images, **options), predict(owlvit_detector, images, **options))
    asked = ["yellow star", "red circle"]
    got = predict(out, images, labels=asked, **options)
    _same_detections(got, predict(owlvit_detector, images, task="detect", labels=asked, **options))
    assert {label for p in got for label in p["labels"]} <= set(asked)
    # the task's threshold applies to the runtime's scores too: one between the first answer's scores
    first = predict(out, images[:1], max_detections=2, threshold=0.0)[0]["scores"]
    middle = (first[0] + first[1]) / 2
    assert first[0] - first[1] > 2e-4, first
    cut = predict(out, images, threshold=middle)
    _same_detections(cut, predict(owlvit_detector, images, threshold=middle))
    assert len(cut[0]["boxes"]) == 1


def test_grounding_dino_and_chat_are_refused_with_the_reason(tiny_grounding_dino, tmp_path, run_cli):
    task = create_task("detect", labels=["red circle", "blue square"])
    task.save(task.load(tiny_grounding_dino), tmp_path / "gdino")
    result = run_cli("export", str(tmp_path / "gdino"), "--format", "onnx")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "Grounding DINO is not exported to ONNX" in message and "torch.isin" in message
    assert "modaltune serve RUN" in message and "OWLv2" in message
    assert not (tmp_path / "gdino" / "onnx").exists(), "nothing is written for a refused model"
    chat = exporter_for("chat").unsupported(None, None)
    assert "chat models" in chat and "not exported to ONNX" in chat and "optimum-cli export onnx" in chat


@pytest.mark.slow
def test_owlv2_run_exports_with_the_cli_and_predicts_through_onnxruntime(tiny_owlv2, detect_scenes, tmp_path,
                                                                         run_cli, monkeypatch):
    """A fine-tuned OWLv2 run through `modaltune export` (dynamo, int8): its validation scenes give
    the same mAP through onnxruntime, and `modaltune predict` runs the export without PyTorch's model."""
    from modaltune.api import train
    from modaltune.config import build_config

    run = tmp_path / "run"
    train(build_config(task="detect", model=str(tiny_owlv2), data=str(detect_scenes), strategy="full", epochs=1,
                       batch_size=4, val_fraction=0.25, seed=0, output=str(run)))
    result = run_cli("export", str(run), "--format", "onnx", "--quantize", "int8")
    assert result.returncode == 0, result.stderr
    assert "parity with PyTorch" in result.stdout and "through onnxruntime: map" in result.stdout
    report = json.loads((run / "onnx" / "modaltune_onnx.json").read_text())["report"]
    assert report["exporter"] == "dynamo" and report["max_abs_diff"] <= 1e-4
    validation = report["validation"]
    assert validation["metric"] == "map" and validation["onnx"] == pytest.approx(validation["pytorch"], abs=1e-6)
    assert validation["max_abs_diff"]["scores"] <= 1e-4 and validation["max_abs_diff"]["boxes"] <= 1e-2
    assert "int8" in report and report["int8"]["validation"]["metric"] == "map"

    images = [str(p) for p in sorted((detect_scenes.parent / "images").glob("*.png"))[:2]]
    expected = run_cli("predict", str(run), *images, "--threshold", "0", "--max-detections", "3")
    import modaltune.api

    def no_torch_model(*args, **kwargs):
        raise AssertionError("the ONNX path loaded the PyTorch model")

    monkeypatch.setattr(modaltune.api, "load_model", no_torch_model)
    got = run_cli("predict", str(run / "onnx"), *images, "--threshold", "0", "--max-detections", "3")
    assert got.returncode == 0, got.stderr
    _same_detections([json.loads(line) for line in got.stdout.splitlines()],
                     [json.loads(line) for line in expected.stdout.splitlines()])
    print(result.stdout)  # the export's report, for -s
