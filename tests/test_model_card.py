"""The run's model card (model/README.md in the hub's format) and pushing to the hub, offline."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from _cli import invoke
from modaltune import hub
from modaltune.config import build_config
from modaltune.model_card import render


def test_model_card_front_matter_and_body(tiny_clip_run: Path) -> None:
    card = ModelCard.load(tiny_clip_run / "model" / "README.md")
    metrics = json.loads((tiny_clip_run / "metrics.json").read_text())
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "zero-shot-image-classification"
    assert {"modaltune", "classify", "linear-probe", "clip"} <= set(data["tags"])
    assert "base_model" not in data  # a local folder is no hub id
    [result] = data["model-index"][0]["results"]
    reported = {m["type"]: m["value"] for m in result["metrics"]}
    assert reported == {k: metrics[k] for k in ("accuracy", "macro_f1", "loss")}
    assert result["dataset"]["split"] == "validation"
    # the body: task, strategy, data, and this model beside the zero-shot baseline
    zero = metrics["zero_shot"]["accuracy"]
    assert f"| accuracy | {metrics['accuracy']:.4f} | {zero:.4f} |" in card.text
    assert "**linear-probe** strategy" in card.text and "3 classes: circle (6), square (6), triangle (6)" in card.text


def test_model_card_names_a_hub_base_model(tiny_clip_run: Path) -> None:
    cfg = build_config(tiny_clip_run / "config.yaml").with_values({"model.name": "openai/clip-vit-base-patch32"})
    metrics = json.loads((tiny_clip_run / "metrics.json").read_text())
    report = json.loads((tiny_clip_run / "data_report.json").read_text())
    text = render(tiny_clip_run / "model", cfg=cfg, metrics=metrics, data_report=report)
    assert "base_model: openai/clip-vit-base-patch32" in text.split("---")[1]


def test_push_offline_is_a_message_not_a_traceback(tiny_clip_run: Path, capsys, tmp_path: Path) -> None:
    code, out, err = invoke(capsys, "push", str(tiny_clip_run), "someone/tiny-shapes")
    assert code == 2
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in out + err and "Traceback" not in out + err
    # train --push-to-hub says so before it trains anything
    code, out, err = invoke(capsys, "train", "--task", "classify", "--model", "m", "--data", str(tmp_path),
                            "--push-to-hub", "someone/x", "--output", str(tmp_path / "run"))
    assert code == 2 and "--push-to-hub someone/x: offline mode is on" in out + err
    assert not (tmp_path / "run").exists()


def test_push_without_network_is_a_message(tiny_clip_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(hub.HubError, match=r"cannot reach http://127\.0\.0\.1:\d+ to push someone/x"):
        hub.push(tiny_clip_run, "someone/x", token="hf_fake", endpoint=f"http://127.0.0.1:{port}")
