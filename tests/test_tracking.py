"""--report-to: what TensorBoard and MLflow hold of a run equals its history.jsonl and metrics.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modaltune.config import build_config
from modaltune.errors import ConfigError
from modaltune.trainer.tracking import config_params, final_values, history_values, metric_key, wandb_mode

# Tests never touch the network: MLflow 3 would send usage telemetry.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def tracked_run(tiny_clip: Path, shape_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny linear probe (2 epochs, a loss and validation metrics each) logged to TensorBoard and MLflow."""
    from modaltune.api import train

    out = tmp_path_factory.mktemp("tracked") / "run"
    cfg = build_config(task="classify", model=str(tiny_clip), data=str(shape_folder), strategy="linear-probe",
                       epochs=2, batch_size=6, seed=0, output=str(out),
                       report_to="tensorboard,mlflow")
    train(cfg)
    return out


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]


def _expected(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Tracker key -> (step, value) in the order history.jsonl has them."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in _history(run):
        step, values = history_values(entry)
        for key, value in values.items():
            series.setdefault(key, []).append((step, value))
    return series


def test_tensorboard_event_file_equals_history(tracked_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    expected = _expected(tracked_run)
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/accuracy", "eval/loss"} <= set(expected)
    events = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for key, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in points], key
        # TensorBoard stores float32
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-7), key
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    final = events.Scalars("final/accuracy")
    assert [e.value for e in final] == pytest.approx([metrics["accuracy"]], rel=1e-6)
    plots = {f"plots/{p.stem}" for p in (tracked_run / "plots").glob("*.png")}
    assert "plots/loss" in plots and set(tags["images"]) == plots
    assert "config/text_summary" in tags["tensors"] and "report/text_summary" in tags["tensors"]


def test_mlflow_store_equals_history_and_holds_the_run(tracked_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    where = json.loads((tracked_run / "tracking.json").read_text())["mlflow"]
    assert where["tracking_uri"].startswith("sqlite:///") and str(tracked_run.resolve()) in where["tracking_uri"]
    client = MlflowClient(where["tracking_uri"])
    run = client.get_run(where["run_id"])
    assert run.info.status == "FINISHED"
    for key, points in _expected(tracked_run).items():
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        assert [(m.step, m.value) for m in history] == points, key  # float64: exact
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    assert run.data.metrics["final/accuracy"] == metrics["accuracy"]
    assert run.data.metrics["final/zero_shot/accuracy"] == metrics["zero_shot"]["accuracy"]
    config = (tracked_run / "config.yaml").read_text()
    params = run.data.params
    assert params["strategy.name"] == "linear-probe" and params["runtime.report_to"] == '["tensorboard", "mlflow"]'
    assert float(params["optim.lr"]) == 1e-3 and "linear-probe" in config
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "metrics.json", "config.yaml", "history.jsonl", "plots"} <= artifacts
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run.info.run_id, "plots"))


def test_no_tracker_is_imported_unless_asked(tmp_path: Path) -> None:
    code = (
        "import sys, modaltune.api, modaltune.cli, modaltune.trainer.loop\n"
        "from accelerate import Accelerator\n"
        "from modaltune.run import RunDir\n"
        "from modaltune.trainer.tracking import tracking\n"
        f"with tracking([], RunDir(__import__('pathlib').Path({str(tmp_path)!r})), {{'a': 1}}) as t:\n"
        "    assert t.callbacks == []\n"
        "    t.finish({'accuracy': 1.0})\n"
        "loaded = [m for m in ('tensorboard', 'torch.utils.tensorboard', 'mlflow', 'wandb', 'tensorboardX')"
        " if m in sys.modules]\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_keys_params_and_final_values() -> None:
    assert metric_key("eval", "i2t_r@5") == "eval/i2t_r_at_5" and metric_key("step", "loss") == "train/loss"
    step, values = history_values({"kind": "step", "step": 3, "epoch": 0, "loss": 0.5, "grad_norm": None,
                                   "skipped": False, "lr": 1e-3})
    assert step == 3 and values == {"train/epoch": 0.0, "train/loss": 0.5, "train/skipped": 0.0, "train/lr": 1e-3}
    assert final_values({"accuracy": 0.5, "confusion_matrix": [[1]], "zero_shot": {"accuracy": 0.25},
                         "run": {"task": "classify", "steps": 4}}) == {
        "final/accuracy": 0.5, "final/zero_shot/accuracy": 0.25, "final/run/steps": 4.0}
    assert config_params({"optim": {"lr": None, "batch_size": 4}, "task": "classify", "runtime": {"report_to": []}}) \
        == {"optim.lr": "null", "optim.batch_size": 4, "task": "classify", "runtime.report_to": "[]"}


def test_wandb_goes_offline_without_key_or_network() -> None:
    assert wandb_mode({}, has_key=False, reachable=False) == "offline"
    assert wandb_mode({}, has_key=True, reachable=False) == "offline"
    assert wandb_mode({}, has_key=True, reachable=True) is None
    assert wandb_mode({"WANDB_MODE": "disabled"}, has_key=False, reachable=False) is None


def test_report_to_is_checked() -> None:
    cfg = build_config(task="classify", model="m", data="d", report_to="TensorBoard, mlflow,tensorboard")
    assert cfg.runtime.report_to == ["tensorboard", "mlflow"]
    assert build_config(task="classify", model="m", data="d", report_to="none").runtime.report_to == []
    with pytest.raises(ConfigError, match="tensorboard"):
        build_config(task="classify", model="m", data="d", report_to="tensorbored")
