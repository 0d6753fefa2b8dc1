"""The training loop in-process: determinism, NaN policy, balancing, precision, checkpoints."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from modaltune.config import build_config
from modaltune.data import load_dataset
from modaltune.errors import ConfigError, ModaltuneError
from modaltune.run import RunDir
from modaltune.strategies import apply_strategy
from modaltune.tasks.base import create_task
from modaltune.trainer import checkpoint as ckpt
from modaltune.trainer.batches import class_weights, epoch_order, oversample_weights, steps_per_epoch
from modaltune.trainer.loop import fit


def _setup(tiny_clip: Path, shape_folder: Path, tmp_path: Path, **overrides):
    rows, _ = load_dataset(shape_folder / "train", require=("image", "label"))
    val, _ = load_dataset(shape_folder / "val", require=("image", "label"))
    values = dict(task="classify", model=str(tiny_clip), data=str(shape_folder), strategy="full", epochs=2,
                  batch_size=4, lr=1e-3, seed=3, output=str(tmp_path / "run"))
    values.update(overrides)
    cfg = build_config(**values)
    task = create_task("classify", labels=sorted({r.label for r in rows}))
    torch.manual_seed(cfg.seed)
    loaded = task.load(tiny_clip)
    apply_strategy(task, loaded, cfg.strategy.name, layers=cfg.strategy.layers)
    return cfg, task, loaded, rows, val, RunDir(Path(cfg.output)).create()


def _state(loaded) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def test_same_seed_same_data_gives_identical_weights(tiny_clip, shape_folder, tmp_path):
    results = []
    for i in range(2):
        cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path / str(i), augment=True)
        fit(cfg, task, loaded, rows, val, run)
        results.append(_state(loaded))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path / "other", augment=True, seed=4)
    fit(cfg, task, loaded, rows, val, run)
    assert not all(torch.equal(results[0][k], v) for k, v in _state(loaded).items())


def test_history_checkpoints_and_best_restore(tiny_clip, shape_folder, tmp_path):
    cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path, epochs=4, keep_last=1)
    result = fit(cfg, task, loaded, rows, val, run)
    history = run.read_history()
    evals = [h for h in history if h["kind"] == "eval"]
    assert len(evals) == 4 and [h["epoch"] for h in evals] == [1, 2, 3, 4]
    assert {"loss", "lr", "grad_norm"} <= set(history[0])
    steps = sorted(int(p.name.split("-")[1]) for p in ckpt.list_checkpoints(run.checkpoints))
    best = result.state.best_step
    assert steps[-1] == result.state.step and best in steps, "keep-last-K never deletes the newest nor the best"
    assert len(steps) <= 2
    best_score = max(h["accuracy"] for h in evals)
    assert result.state.best_metric == best_score
    # warmup then decay: the learning rate peaks after the first step and ends near zero
    lrs = [h["lr"] for h in history if h["kind"] == "step"]
    assert max(lrs) > lrs[-1] and lrs[-1] < 0.2 * max(lrs)


def test_early_stopping_stops(tiny_clip, shape_folder, tmp_path):
    cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path, epochs=30, lr=1e-7,
                                               early_stopping=2, warmup_ratio=0.0)
    result = fit(cfg, task, loaded, rows, val, run)
    assert result.stopped_early
    assert result.state.step < 30 * 3


class _NaNAt:
    """A task whose loss is NaN at the given (1-based) loss calls: a real NaN through the real loop."""

    def __init__(self, task, bad_calls):
        self._task, self._bad, self.calls = task, set(bad_calls), 0

    def __getattr__(self, name):
        return getattr(self._task, name)

    def loss(self, loaded, batch):
        self.calls += 1
        loss = self._task.loss(loaded, batch)
        return loss * float("nan") if self.calls in self._bad else loss


def test_nan_raise_names_the_step(tiny_clip, shape_folder, tmp_path):
    cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path)
    with pytest.raises(ModaltuneError, match=r"NaN/inf at step 2 \(epoch 1\)"):
        fit(cfg, _NaNAt(task, {2}), loaded, rows, val, run)


def test_nan_skip_counts_then_aborts(tiny_clip, shape_folder, tmp_path):
    cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path / "a", nan_policy="skip")
    before = _state(loaded)
    result = fit(cfg, _NaNAt(task, {1, 3}), loaded, rows, val, run)
    assert result.state.skipped_steps == 2
    assert [h["skipped"] for h in run.read_history() if h["kind"] == "step"][:3] == [True, False, True]
    assert not all(torch.equal(before[k], v) for k, v in _state(loaded).items())

    cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path / "b", nan_policy="skip",
                                               max_bad_steps=3)
    with pytest.raises(ModaltuneError, match="3 optimizer steps in a row"):
        fit(cfg, _NaNAt(task, set(range(1, 100))), loaded, rows, val, run)


def test_bf16_and_sgd_and_accumulation_run(tiny_clip, shape_folder, tmp_path):
    cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path, precision="bf16", optimizer="sgd",
                                               grad_accum=2, schedule="linear")
    before = _state(loaded)
    result = fit(cfg, task, loaded, rows, val, run)
    assert result.state.step == 2 * 3  # 5 micro-batches an epoch → 3 optimizer steps
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters()), "autocast keeps fp32 master weights"
    assert not all(torch.equal(before[k], v) for k, v in _state(loaded).items())


def test_oversampling_balances_classes_and_class_weights():
    labels = ["a"] * 90 + ["b"] * 10
    order = epoch_order(len(labels), seed=0, epoch=0, weights=oversample_weights(labels))
    drawn = Counter(labels[i] for i in order)
    assert 35 <= drawn["b"] <= 65, drawn
    assert sorted(epoch_order(10, seed=1, epoch=2)) == list(range(10))
    assert epoch_order(10, seed=1, epoch=2) == epoch_order(10, seed=1, epoch=2) != epoch_order(10, seed=1, epoch=3)
    weights = class_weights(labels, ["a", "b", "c"])
    assert weights[1] / weights[0] == pytest.approx(9.0) and weights[2] == 0.0


def test_checkpoint_roundtrip_and_corruption_detected(tiny_clip, shape_folder, tmp_path):
    cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path, epochs=1)
    fit(cfg, task, loaded, rows, val, run)
    latest = ckpt.list_checkpoints(run.checkpoints)[-1]
    files = {p.name for p in latest.iterdir()}
    assert {"model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "rng.json",
            "trainer_state.json", "manifest.json"} <= files
    assert not any(name.endswith((".pt", ".pkl", ".bin")) for name in files), "no pickle"
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] == 5 and state["epoch"] == 1 and state["group_in_epoch"] == 0

    blob = bytearray((latest / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (latest / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ModaltuneError, match="corrupt"):
        ckpt.verify(latest)
    found, problems = ckpt.latest_valid(run.checkpoints)
    assert found != latest and len(problems) == 1


def test_optimizer_state_roundtrip_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ckpt.save_tree(opt.state_dict(), tmp_path, "optimizer")
    restored = ckpt.load_tree(tmp_path, "optimizer")
    original = opt.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for pid, entry in original["state"].items():
        for key, value in entry.items():
            assert torch.equal(restored["state"][pid][key], value)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        build_config(task="classify", model="m", data="d", batch_size=0)
    with pytest.raises(ConfigError, match="layers is only used by strategy last-n"):
        build_config(task="classify", model="m", data="d", strategy="full", layers=2)
    bad = tmp_path / "c.yaml"
    bad.write_text("task: classify\nmodel: m\ndata: d\nepochz: 3\n")
    with pytest.raises(ConfigError, match="epochz"):
        build_config(bad)


def test_named_loss_parts_are_logged_and_the_total_is_what_trains(tiny_clip, shape_folder, tmp_path, monkeypatch):
    from modaltune.tasks.clip import ClassifyTask

    plain = ClassifyTask.loss

    def with_parts(self, loaded, batch):  # what a multi-part loss (detection: class + L1 + GIoU) returns
        ce = plain(self, loaded, batch)
        return {"loss": ce, "ce": ce, "half_ce": ce / 2}

    cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path, epochs=1, feature_cache=False)
    monkeypatch.setattr(ClassifyTask, "loss", with_parts)
    fit(cfg, task, loaded, rows, val, run)
    steps = [entry for entry in run.read_history() if entry["kind"] == "step"]
    assert steps and all(s["loss_ce"] == pytest.approx(s["loss"]) for s in steps)
    assert all(s["loss_half_ce"] == pytest.approx(s["loss"] / 2) for s in steps)


def test_a_loss_dict_without_its_total_is_refused() -> None:
    from modaltune.trainer.terms import loss_parts, part_key

    with pytest.raises(ValueError, match="total under 'loss'.*\\['ce'\\]"):
        loss_parts({"ce": torch.tensor(1.0)})
    assert part_key("ce") == "loss_ce" and part_key("loss_bbox") == "loss_bbox"


def test_a_callback_sees_the_loop_and_can_stop_it(tiny_clip, shape_folder, tmp_path):
    from modaltune.trainer.callbacks import Callback

    class StopAfterFirstEval(Callback):
        def __init__(self):
            self.seen = []

        def on_micro_batch_end(self, event):
            self.seen.append(("micro", event.state.step))

        def on_evaluate(self, event):
            self.seen.append(("eval", event.state.step, event.metrics["accuracy"]))
            event.stop = True

    cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path, epochs=3, feature_cache=False)
    watcher = StopAfterFirstEval()
    result = fit(cfg, task, loaded, rows, val, run, callbacks=[watcher])
    evals = [s for s in watcher.seen if s[0] == "eval"]
    assert len(evals) == 1 and result.stopped_early
    steps = [entry for entry in run.read_history() if entry["kind"] == "step"]
    per_epoch = steps_per_epoch(len(rows), cfg.batch_size, cfg.grad_accum)
    assert evals[0][1] == steps[-1]["step"] == per_epoch  # stopped at the first evaluation, of 3 epochs
    assert sum(1 for s in watcher.seen if s[0] == "micro") == len(steps) * cfg.grad_accum
