"""DeepSpeed ZeRO (`accelerate launch --use_deepspeed --zero_stage 1|2`): the config modaltune runs with and
what it refuses, and a 2-process run where one process's loss is NaN: every process skips that step, as one
process does. (The 2-process runs that are killed, resumed and match one process are in test_distributed.)"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modaltune.errors import ConfigError
from modaltune.trainer import zero
from modaltune.trainer.loop import fit
from test_distributed import _free_port, need_deepspeed
from test_trainer import _NaNAt, _setup

# What `accelerate launch --use_deepspeed --zero_stage 2` hands the processes (accelerate 1.16).
LAUNCHED = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "zero_optimization": {
        "stage": 2,
        "offload_optimizer": {"device": "none", "nvme_path": None},
        "offload_param": {"device": "none", "nvme_path": None},
        "stage3_gather_16bit_weights_on_model_save": False,
    },
    "gradient_clipping": "auto",
    "steps_per_print": float("inf"),
    "fp16": {"enabled": False},
    "bf16": {"enabled": False},
}


def _config(raw: dict, **kw) -> dict:
    return zero.config(raw, **{"batch_size": 7, "grad_accum": 3, "max_grad_norm": 1.0, "world": 2, **kw})


def test_config_fills_in_modaltunes_settings() -> None:
    out = _config(LAUNCHED)
    # --batch-size is the global micro-batch: 7 rows over 2 processes is at most 4 each (bookkeeping for
    # DeepSpeed only; modaltune's plan decides the rows).
    assert out["train_micro_batch_size_per_gpu"] == 4 and out["gradient_accumulation_steps"] == 3
    assert out["train_batch_size"] == 4 * 3 * 2 and out["gradient_clipping"] == 1.0
    assert out["zero_allow_untested_optimizer"] is True and isinstance(out["steps_per_print"], int)
    # ZeRO-Offload runs modaltune's optimizer on the CPU (DeepSpeed would insist on its own CPU Adam).
    assert out["zero_force_ds_cpu_optimizer"] is False
    assert _config(LAUNCHED, max_grad_norm=None)["gradient_clipping"] == 0.0
    assert _config({**LAUNCHED, "gradient_clipping": 1.0})["gradient_clipping"] == 1.0  # the same value is fine
    assert LAUNCHED["train_batch_size"] == "auto", "the launcher's config is left as it was"


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"zero_optimization": {"stage": 3}}, ["ZeRO-3", "--use_fsdp --fsdp_version 2"]),
        ({"zero_optimization": {"stage": 0}}, ["--multi_gpu"]),
        ({"optimizer": {"type": "AdamW"}}, ["'optimizer' section", "--optim.optimizer"]),
        ({"scheduler": {"type": "WarmupLR"}}, ["'scheduler' section"]),
        ({"bf16": {"enabled": True}}, ["enables bf16", "--precision bf16"]),
        ({"fp16": {"enabled": True}}, ["enables fp16"]),
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme"}}}, ["offload_optimizer", "cpu"]),
        ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, ["offload_param", "ZeRO-3"]),
        ({"gradient_clipping": 0.5}, ["gradient_clipping=0.5", "--optim.max-grad-norm", "auto"]),
        ({"gradient_accumulation_steps": 8}, ["gradient_accumulation_steps=8", "--grad-accum"]),
        ({"train_micro_batch_size_per_gpu": 16}, ["train_micro_batch_size_per_gpu=16", "--batch-size"]),
    ],
)
def test_config_refuses_what_modaltune_does_not_run(change: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        _config({**LAUNCHED, **change})
    assert all(name in str(caught.value) for name in names), str(caught.value)


def test_cpu_runs_skip_the_op_deepspeed_compiles_for_inference(monkeypatch) -> None:
    # DeepSpeed's CPU backend compiles a shared-memory all-reduce (a minute of C++ on a fresh machine) that
    # only its inference engine uses; modaltune skips it. Guards the name it patches against a DeepSpeed upgrade.
    need_deepspeed()
    ds_comm = importlib.import_module("deepspeed.comm.torch")
    monkeypatch.setattr(ds_comm, "build_shm_op", ds_comm.build_shm_op)  # put back after the test
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setattr(zero, "_has_accelerator", lambda: False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    zero.prepare_cpu()  # not launched for DeepSpeed: nothing changes
    assert "DS_ACCELERATOR" not in os.environ and ds_comm.build_shm_op.__module__ == "deepspeed.comm.torch"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    zero.prepare_cpu()
    assert os.environ["DS_ACCELERATOR"] == "cpu" and ds_comm.build_shm_op() is None


_SCRIPT = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}]
import torch
from safetensors.torch import save_file
from modaltune.trainer import distributed
from modaltune.trainer.loop import fit
from test_trainer import _NaNAt, _setup

clip, shapes, out = map(Path, sys.argv[1:4])
rank = distributed.processes().rank
cfg, task, loaded, rows, val, run = _setup(clip, shapes, out / "two", **{overrides!r})  # the main one writes
result = fit(cfg, _NaNAt(task, {{1}} if rank == 1 else set()), loaded, rows, val, run)
print("skipped", rank, result.state.skipped_steps, flush=True)
save_file({{n: p.detach().clone() for n, p in loaded.model.named_parameters()}}, str(out / f"rank{{rank}}.safetensors"))
"""

#: 18 rows in micro-batches of 17: every second step has 1 row, and the second process none (it runs a
#: zero-weight backward for ZeRO-2's collectives); last-n leaves parameters out of DeepSpeed's partitions (and
#: without the feature cache, its loss is the task's, which _NaNAt makes NaN).
_OVERRIDES = dict(
    nan_policy="skip",
    optimizer="sgd",
    lr=0.05,
    epochs=2,
    batch_size=17,
    strategy="last-n",
    layers=1,
    feature_cache=False,
)


@pytest.mark.slow
def test_a_nan_loss_on_one_process_skips_the_step_on_every_process(tiny_clip, shape_folder, tmp_path) -> None:
    need_deepspeed()
    script = tmp_path / "nan.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parent), overrides=_OVERRIDES))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--use_deepspeed",
        "--zero_stage",
        "2",
        "--offload_optimizer_device",  # ZeRO-Offload: the optimizer state and step on the CPU
        "cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(script),
        str(tiny_clip),
        str(shape_folder),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped 0 1" in done.stdout and "skipped 1 1" in done.stdout, done.stdout
    history = [json.loads(line) for line in (tmp_path / "two" / "run" / "history.jsonl").read_text().splitlines()]
    skipped = [h["skipped"] for h in history if h["kind"] == "step"]
    assert skipped == [True, False, False, False], skipped
    assert all(h["grad_norm"] is None for h in history if h["kind"] == "step" and h["skipped"])

    # One process whose first loss is NaN: the same skipped step, the same weights after it.
    cfg, task, loaded, rows, val, run = _setup(tiny_clip, shape_folder, tmp_path / "single", **_OVERRIDES)
    assert fit(cfg, _NaNAt(task, {1}), loaded, rows, val, run).state.skipped_steps == 1
    single = {n: p.detach() for n, p in loaded.model.named_parameters()}
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in single), "the processes' weights stay identical"
    worst = max((single[k] - ranks[0][k]).abs().max().item() for k in single)
    assert worst < 1e-5, worst
