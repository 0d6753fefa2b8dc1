"""Several processes: data sharding, the launch warning, the engines refused, and real 2-process runs
(two gloo processes on CPUs) through `accelerate launch --num_processes 2` with each engine modaltune runs:
plain data parallelism (`--multi_gpu`), FSDP2 (`--use_fsdp --fsdp_version 2`) and DeepSpeed ZeRO-1/2
(`--use_deepspeed --zero_stage 1|2`). They are killed, resumed and end with the weights of a single process
trained on the same global batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _cli import invoke
from modaltune.trainer import distributed
from modaltune.trainer.batches import plan_epoch
from modaltune.trainer.loop import KILL_ENV


def test_shards_split_every_micro_batch_and_rebuild_it() -> None:
    plan = plan_epoch(18, 4, 2, seed=7, epoch=1, replay=(10, 2))
    for group in plan:
        for micro in group:
            shares = [distributed.shard(micro, distributed.Processes(rank, 2)) for rank in range(2)]
            assert sorted(map(str, shares[0] + shares[1])) == sorted(map(str, micro))
            # each process gets its share of the target rows and of the rehearsed ones
            assert abs(distributed.target_count(shares[0]) - distributed.target_count(shares[1])) <= 1
            assert all(any(k[0] == "replay" for k in share) for share in shares)
    single = distributed.Processes()
    assert distributed.shard(plan[0][0], single) == plan[0][0]


def test_launch_warning_names_the_single_process_launchers() -> None:
    # What `accelerate launch --cpu --num_processes 2` (and `--num_processes 2` without --multi_gpu on a
    # machine without GPUs) hands its one process: MASTER_ADDR, but no WORLD_SIZE.
    simple = {"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    cpu = distributed.launch_warning({**simple, "ACCELERATE_USE_CPU": "True"})
    assert cpu is not None and "--cpu" in cpu and "--multi_gpu --num_processes N" in cpu
    assert "--multi_gpu" in (distributed.launch_warning({**simple, "ACCELERATE_USE_CPU": "False"}) or "")
    # torchrun's processes (what --multi_gpu starts), a plain single-process launch, and no launcher at all
    assert distributed.launch_warning({**simple, "WORLD_SIZE": "2", "RANK": "1"}) is None
    assert distributed.launch_warning({"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True"}) is None
    assert distributed.launch_warning({}) is None


def test_fsdp1_and_megatron_are_refused_by_name(monkeypatch) -> None:
    assert "--fsdp_version 2" in (distributed.unsupported_engine("FSDP", 1) or "")
    assert distributed.unsupported_engine("FSDP", 2) is None
    # DeepSpeed runs; which of its ZeRO stages and settings is decided from its config (test_zero).
    assert distributed.unsupported_engine("DEEPSPEED") is None
    assert "MEGATRON_LM" in (distributed.unsupported_engine("MEGATRON_LM") or "")
    assert distributed.unsupported_engine("MULTI_CPU") is None and distributed.unsupported_engine("NO") is None

    # On CPUs accelerate reports no engine for `accelerate launch --use_fsdp`: the launcher's environment says it.
    class CpuAccelerator:
        distributed_type = "NO"
        state = object()

    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_RESHARD_AFTER_FORWARD", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.engine(CpuAccelerator()) == ("NO", None) and distributed.fsdp_settings(CpuAccelerator()) is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.engine(CpuAccelerator()) == ("FSDP", 1)  # accelerate's default version
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert distributed.engine(CpuAccelerator()) == ("FSDP", 2)
    assert distributed.fsdp_settings(CpuAccelerator()) == {"reshard_after_forward": False}
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert distributed.engine(CpuAccelerator()) == ("DEEPSPEED", None)


# ---- a real 2-process run ---------------------------------------------------------------------

#: 18 train rows, micro-batches of 4 (each process takes 2, the last one 1 each), 2 per step: 3 steps
#: an epoch. SGD: see the tolerance below.
def _args(model: Path, data: Path, out: Path) -> list[str]:
    return ["train", "--task", "classify", "--model", str(model), "--data", str(data), "--strategy", "full",
            "--epochs", "2", "--batch-size", "4", "--grad-accum", "2", "--optim.optimizer", "sgd", "--lr", "0.05",
            "--save-every", "1", "--seed", "7", "--quiet", "--output", str(out)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(args: list[str], launch: tuple[str, ...] = ("--multi_gpu",), **env: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` with 2 processes; ``launch`` picks the engine (``--use_fsdp`` replaces
    ``--multi_gpu``: accelerate takes one of them)."""
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", *launch,
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "modaltune", *args]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True,
                          timeout=400)


def _launch_script(script: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), str(script)]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=200)


def test_every_process_leaves_its_group_before_exiting(tmp_path) -> None:
    # The main process still scores and writes the run when the others are done; a process that exits
    # with a live gloo group aborts now and then (std::terminate), failing the whole launch. This script's
    # own exit hook is registered before the group exists, so it runs after modaltune's.
    script = tmp_path / "leave.py"
    script.write_text(
        "import atexit, torch\n"
        "from modaltune.trainer import distributed\n"
        # One string per print: the two processes share the pipe, and print's pieces interleave.
        "atexit.register(lambda: print(f'group live at exit: {torch.distributed.is_initialized()}', flush=True))\n"
        "print(f'world {distributed.processes().world}', flush=True)\n")
    done = _launch_script(script)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("world 2") == 2, done.stdout
    assert done.stdout.count("group live at exit: False") == 2, done.stdout


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run / "model" / "model.safetensors"))
    tensors.update({f"head.{k}": v for k, v in load_file(str(run / "model" / "classifier.safetensors")).items()})
    return tensors


def need_deepspeed() -> None:
    """Skip without DeepSpeed, except in CI, which installs it (`make test`): there its absence fails."""
    if os.environ.get("CI"):
        import deepspeed  # noqa: F401
    else:
        pytest.importorskip("deepspeed", reason="the deepspeed extra (make test installs it)")


#: The engines a 2-process run is launched with (accelerate takes one of them).
LAUNCHES = {
    "multi_gpu": ("--multi_gpu",),
    "fsdp2": ("--use_fsdp", "--fsdp_version", "2"),
    "zero1": ("--use_deepspeed", "--zero_stage", "1"),
    "zero2": ("--use_deepspeed", "--zero_stage", "2"),
}


@pytest.fixture(scope="module")
def single_run(tiny_clip, shape_folder, tmp_path_factory) -> Path:
    """The reference: one process, the same global batch."""
    single = tmp_path_factory.mktemp("single") / "run"

    class Quiet:
        def readouterr(self) -> tuple[str, str]:
            return "", ""

    code, _, err = invoke(Quiet(), *_args(tiny_clip, shape_folder, single))
    assert code == 0, err
    return single


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["multi_gpu", "fsdp2", "zero2"])
def test_two_processes_killed_and_resumed_match_one_process(engine, single_run, tiny_clip, shape_folder,
                                                            tmp_path) -> None:
    if engine.startswith("zero"):
        need_deepspeed()
    single, run, launch = single_run, tmp_path / engine, LAUNCHES[engine]
    # Each process dies (SIGKILL) at its 6th micro-batch (5 an epoch): inside epoch 2's first step; the
    # launcher then ends the other one. Checkpoints up to step 3 were written by the main process alone.
    killed = _launch(_args(tiny_clip, shape_folder, run), launch=launch, **{KILL_ENV: "6"})
    assert killed.returncode != 0
    assert not (run / "model").exists() and not (run / "metrics.json").exists()
    last = sorted(p.name for p in (run / "checkpoints").iterdir())[-1]
    assert last == "step-00000003", killed.stderr[-3000:]
    assert (run / "checkpoints" / last / "rng-1.json").is_file(), "the second process's RNG is checkpointed too"
    assert json.loads((run / "checkpoints" / last / "trainer_state.json").read_text())["processes"] == 2

    # The ZeRO-2 run resumes under ZeRO-1 (its checkpoint is in the single-process format), so stage 1
    # trains the last 3 steps here.
    resumed = _launch([*_args(tiny_clip, shape_folder, run), "--resume"],
                      launch=LAUNCHES["zero1" if engine == "zero2" else engine])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("macro_f1") == 1, "only the main process reports"

    # Reduction order is the only difference: each process sums its half of a micro-batch, the two halves
    # are added (all-reduce, FSDP's reduce-scatter, DeepSpeed's reduce then its division by 2 undone, exact
    # for 2), where one process sums the whole; ~1e-7 relative per gradient. SGD carries that through
    # linearly (AdamW divides by sqrt(v), which turns it into up to lr per step for a coordinate whose
    # gradient is ~0), so 6 steps stay far inside 1e-5 (measured: 6e-8 data-parallel and FSDP).
    a, b = _weights(single), _weights(run)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - v).abs().max().item() for k, v in _weights_at_start(tiny_clip, a).items())
    assert worst < 1e-5 < moved, (worst, moved)
    # The last checkpoint's optimizer state (SGD momentum) is in the single-process format, gathered whole
    # from FSDP's shards or ZeRO's partitions: a run resumes on any number of processes, any engine.
    mine, theirs = (load_file(str(r / "checkpoints" / "step-00000006" / "optimizer.safetensors"))
                    for r in (run, single))
    assert mine.keys() == theirs.keys() and len(mine) > 10
    assert max((mine[k] - theirs[k]).abs().max().item() for k in mine) < 1e-5

    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (single / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if h["kind"] == "step"] == list(range(1, 7)), "each step logged once"
    for mine_h, theirs_h in zip([h for h in history if h["kind"] == "step"], [h for h in ref if h["kind"] == "step"]):
        assert mine_h["loss"] == pytest.approx(theirs_h["loss"], rel=1e-5)  # the global micro-batch's mean loss
        assert mine_h["grad_norm"] == pytest.approx(theirs_h["grad_norm"], rel=1e-5)  # before clipping at 1
        assert mine_h["lr"] == pytest.approx(theirs_h["lr"], rel=1e-12)
    # Evaluation runs on the main process over every validation row: the single process's numbers.
    metrics, ref_metrics = (json.loads((r / "metrics.json").read_text()) for r in (run, single))
    assert metrics["run"]["val_rows"] == ref_metrics["run"]["val_rows"] == 12
    assert metrics["accuracy"] == ref_metrics["accuracy"]
    assert metrics["loss"] == pytest.approx(ref_metrics["loss"], abs=1e-5)
    # The exported model is a plain (unsharded, unpartitioned) transformers model.
    from transformers import CLIPModel

    state = CLIPModel.from_pretrained(str(run / "model")).state_dict()
    assert all(torch.equal(state[k], b[k]) for k in b if k in state)
    assert sum(k in state for k in b) > 10


def _weights_at_start(model_dir: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's tensors among ``like``'s names (the head is new, so it is left out)."""
    base = load_file(str(model_dir / "model.safetensors"))
    return {k: base[k] for k in like if k in base}


@pytest.mark.slow
def test_fsdp_frozen_blocks_and_an_empty_share_match_one_process(tiny_clip, shape_folder, tmp_path, capsys) -> None:
    # last-n freezes all but the top block (FSDP units with and without trainable parameters); 18 rows in
    # micro-batches of 17 leave the second step 1 row, so one process has none and runs a zero-weight forward
    # and backward for the others' collectives. (DeepSpeed's: test_zero.)
    args = [
        *"train --task classify --strategy last-n --layers 1 --epochs 1 --batch-size 17 --grad-accum 1".split(),
        *"--optim.optimizer sgd --lr 0.05 --seed 7 --quiet".split(),
        "--model",
        str(tiny_clip),
        "--data",
        str(shape_folder),
        "--output",
    ]
    single, run = tmp_path / "single", tmp_path / "fsdp"
    code, _, err = invoke(capsys, *args, str(single))
    assert code == 0, err
    done = _launch([*args, str(run)], launch=LAUNCHES["fsdp2"])
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _weights(single), _weights(run)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst  # measured 6e-8 (FSDP2)
    steps = [[json.loads(line) for line in (r / "history.jsonl").read_text().splitlines()] for r in (single, run)]
    for mine, theirs in zip(*steps):
        if mine["kind"] == "step":
            assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
            assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5)
