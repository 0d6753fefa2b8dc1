"""Crash and resume, in real subprocesses: SIGKILL mid-epoch inside gradient accumulation, SIGTERM.

The bar is bit-identical final weights against an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from modaltune.trainer.loop import KILL_ENV

pytestmark = pytest.mark.slow


def _train_cmd(tiny_clip: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modaltune.cli", "train", "--task", "classify", "--model", str(tiny_clip),
            "--data", str(data), "--strategy", "full", "--epochs", "3", "--batch-size", "4", "--grad-accum", "2",
            "--lr", "1e-3", "--save-every", "1", "--augment", "--seed", "7", "--quiet", "--output", str(out), *extra]


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def _weights(run: Path) -> dict:
    tensors = load_file(str(run / "model" / "model.safetensors"))
    tensors.update({f"head.{k}": v for k, v in load_file(str(run / "model" / "classifier.safetensors")).items()})
    return tensors


def _assert_identical(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"


@pytest.fixture(scope="module")
def reference(tiny_clip, shape_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    done = _run(_train_cmd(tiny_clip, shape_folder, out))
    assert done.returncode == 0, done.stderr
    return out


def test_sigkill_inside_accumulation_then_resume_is_bit_identical(reference, tiny_clip, shape_folder, tmp_path):
    out = tmp_path / "run"
    # 18 train rows, batch 4 → 5 micro-batches an epoch, 3 optimizer steps (2+2+1). Micro-batch 8 is the
    # first half of epoch 2's second step: mid-epoch and inside an accumulation group.
    killed = _run(_train_cmd(tiny_clip, shape_folder, out), **{KILL_ENV: "8"})
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "model").exists()
    steps_before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps_before[-1] == "step-00000004"

    # Kill the resumed run once more (its 3rd micro-batch), then let a second resume finish.
    again = _run(_train_cmd(tiny_clip, shape_folder, out, "--resume"), **{KILL_ENV: "3"})
    assert again.returncode == -signal.SIGKILL
    finished = _run(_train_cmd(tiny_clip, shape_folder, out, "--resume"))
    assert finished.returncode == 0, finished.stderr

    _assert_identical(_weights(reference), _weights(out))
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    steps = [h["step"] for h in history if h["kind"] == "step"]
    assert steps == list(range(1, 10)), "history must hold each step once, without the redone ones twice"
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == ref_metrics["accuracy"] and metrics["loss"] == ref_metrics["loss"]


def test_sigterm_checkpoints_and_exits_143(tiny_clip, shape_folder, tmp_path):
    out = tmp_path / "run"
    cmd = _train_cmd(tiny_clip, shape_folder, out)
    cmd[cmd.index("--epochs") + 1] = "60"  # long enough to be caught mid-run
    cmd[cmd.index("--save-every") + 1] = "1000"  # only the SIGTERM checkpoint and the epoch ones
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = out / "history.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (history.exists() and history.read_text().count('"kind": "step"') >= 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    last_step = max(json.loads(line)["step"] for line in history.read_text().splitlines())
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints[-1] == f"step-{last_step:08d}", "the step in flight is finished and checkpointed"
    assert not (out / "model").exists()
