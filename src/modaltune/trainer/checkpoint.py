"""Resumable checkpoints without pickle: safetensors for tensors, JSON for the rest.

A checkpoint is written into a temporary directory, every file fsynced, a sha256 manifest added
last, and the directory renamed into place, so a crash never leaves a half-written ``step-N``.
Loading checks the manifest first.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from modaltune.errors import ModaltuneError
from modaltune.trainer import distributed

MANIFEST = "manifest.json"
PREFIX = "step-"


@dataclass
class TrainerState:
    """Where training stands: enough to continue exactly where a checkpoint was taken."""

    step: int = 0
    epoch: int = 0
    #: Optimizer steps already taken in ``epoch`` (the data-order position within the epoch).
    group_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    bad_steps_in_a_row: int = 0
    skipped_steps: int = 0
    history_lines: int = 0
    #: How many processes trained (each one's RNG state is in the checkpoint).
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- tensors + JSON, no pickle -----------------------------------------------------------------

def _split_tree(tree: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list by a reference, collecting tensors by dotted key."""
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(tree, np.ndarray):
        tensors[prefix] = torch.from_numpy(tree.copy())
        return {"__ndarray__": prefix}
    if isinstance(tree, dict):
        return {"__dict__": [[k, _split_tree(v, f"{prefix}.{k}", tensors)] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        items = [_split_tree(v, f"{prefix}.{i}", tensors) for i, v in enumerate(tree)]
        return {"__tuple__": items} if isinstance(tree, tuple) else items
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot checkpoint a value of type {type(tree).__name__} at {prefix!r} without pickle")


def _join_tree(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__ndarray__" in node:
            return tensors[node["__ndarray__"]].numpy()
        if "__tuple__" in node:
            return tuple(_join_tree(v, tensors) for v in node["__tuple__"])
        # Keys keep their JSON-able type: optimizer state is keyed by int parameter ids.
        return {k: _join_tree(v, tensors) for k, v in node["__dict__"]}
    if isinstance(node, list):
        return [_join_tree(v, tensors) for v in node]
    return node


def save_tree(tree: Any, directory: Path, name: str) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tree(tree, name, tensors)
    (directory / f"{name}.json").write_text(json.dumps(skeleton))
    if tensors:
        save_file(tensors, str(directory / f"{name}.safetensors"))


def load_tree(directory: Path, name: str) -> Any:
    tensor_file = directory / f"{name}.safetensors"
    tensors = load_file(str(tensor_file)) if tensor_file.exists() else {}
    return _join_tree(json.loads((directory / f"{name}.json").read_text()), tensors)


# --- RNG -----------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- checkpoint directories ---------------------------------------------------------------------

def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what training can change; frozen weights are rebuilt from the base model on resume."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    rngs: Sequence[dict[str, Any]] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``step-N`` atomically. ``rngs`` are the RNG states of every process by rank (this
    process's own when None): rank 0's is ``rng``, rank r's ``rng-r``. ``weights`` and
    ``optimizer_state``, when given, replace the model's and optimizer's own (a sharded model's,
    gathered whole)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{state.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_file(trainable_state(model) if weights is None else weights, str(tmp / "model.safetensors"))
        save_tree(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp, "optimizer")
        save_tree(scheduler.state_dict(), tmp, "scheduler")
        for rank, rng in enumerate(rngs if rngs is not None else [rng_state()]):
            save_tree(rng, tmp, _rng_name(rank))
        (tmp / "trainer_state.json").write_text(json.dumps(state.to_dict(), indent=2))
        files = sorted(p for p in tmp.iterdir())
        for path in files:
            _fsync(path)
        manifest = {p.name: _sha256(p) for p in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _fsync(tmp / MANIFEST)
        _fsync(tmp)
        if final.exists():  # a re-run of the same step after a resume: replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify(directory: Path) -> None:
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ModaltuneError(f"checkpoint {directory} has no {MANIFEST}: it is incomplete")
    manifest = json.loads(manifest_path.read_text())
    for name, digest in manifest.items():
        path = directory / name
        if not path.is_file() or _sha256(path) != digest:
            raise ModaltuneError(f"checkpoint {directory} is corrupt: {name} does not match its sha256")


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_valid(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose manifest checks out, and a note for each newer one that did not."""
    problems: list[str] = []
    for path in reversed(list_checkpoints(root)):
        try:
            verify(path)
            return path, problems
        except ModaltuneError as exc:
            problems.append(str(exc))
    return None, problems


def _rng_name(rank: int) -> str:
    return "rng" if rank == 0 else f"rng-{rank}"


def load_checkpoint(
    directory: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int = 0
) -> TrainerState:
    """Put the checkpoint's weights, optimizer, schedule and RNG (process ``rank``'s, or rank 0's when
    the run had fewer processes) back; returns where training stood."""
    verify(directory)
    weights = load_file(str(directory / "model.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(set(n for n, p in params.items() if p.requires_grad) - set(weights))
    if missing:
        raise ModaltuneError(
            f"checkpoint {directory} does not match this model/strategy (missing {missing[:3]}...); "
            "resume with the same --strategy, --layers and model"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            distributed.copy_into(params[name], tensor)  # a sharded parameter takes its shard
    optimizer.load_state_dict(distributed.local_optimizer_state(load_tree(directory, "optimizer"), optimizer))
    scheduler.load_state_dict(load_tree(directory, "scheduler"))
    name = _rng_name(rank)
    set_rng_state(load_tree(directory, name if (directory / f"{name}.json").is_file() else "rng"))
    return TrainerState(**json.loads((directory / "trainer_state.json").read_text()))


def load_weights(directory: Path, model: nn.Module) -> None:
    """Only the trained weights of a checkpoint (to restore the best one at the end)."""
    verify(directory)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(str(directory / "model.safetensors")).items():
            params[name].copy_(tensor)


def prune(root: Path, *, keep_last: int, protect: set[int]) -> list[Path]:
    """Delete old checkpoints beyond ``keep_last``, never the newest nor any step in ``protect``."""
    checkpoints = list_checkpoints(root)
    keep = set(checkpoints[-max(keep_last, 1):])
    removed = []
    for path in checkpoints:
        if path in keep or int(path.name[len(PREFIX):]) in protect:
            continue
        shutil.rmtree(path)
        removed.append(path)
    for stale in root.glob(".tmp-*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    return removed
