"""Frozen-feature cache: run the frozen part of the model once, train the rest on stored tensors.

With a linear probe, or ``last-n`` without random augmentation, every epoch pushes the same images
through the same frozen layers. A task that can split its model at the frozen/trainable boundary
(``Task.cache_split``) hands back a `CacheSplit`; the trainer then computes the boundary tensors
once per dataset (pooled embeddings for a probe, hidden states after the last frozen block for
``last-n``) and trains and evaluates only the part above them.

The cache is a folder ``<cache dir>/features/<key>/`` with one ``features.npy`` (memory-mapped,
so a cache larger than RAM still works) and ``meta.json``. The key is a sha256 of everything the
tensors depend on: the frozen weights, the preprocessing config, the split point, the rows (path,
size, modification time) and the format version. Change any of them and a new key is computed;
stale entries are never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from modaltune.data.rows import Row

FORMAT = 1


@dataclass
class CacheSplit:
    """A task's model cut at the frozen/trainable boundary.

    ``encode`` maps a collated batch to the boundary tensor per example (no grad, frozen part);
    ``collate`` builds a training batch from (row, boundary tensor) pairs; ``loss`` and ``outputs``
    run the trainable part on such a batch (``outputs`` as ``Task.outputs`` would, for evaluation).
    """

    name: str  # the split point, part of the cache key (e.g. "classify:embeds", "classify:vision-block-2/4")
    frozen: list[nn.Module]  # modules whose weights the boundary tensors depend on
    encode: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    collate: Callable[[list[tuple[Row, torch.Tensor]]], dict[str, torch.Tensor]]
    loss: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    outputs: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    preprocessing: dict[str, Any]


def default_cache_dir() -> Path:
    from modaltune.run import user_cache_dir

    return user_cache_dir() / "features"


def _hash_modules(modules: Sequence[nn.Module], digest: Any) -> None:
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def _row_identity(row: Row) -> list[Any]:
    # The text is part of the row (a caption edited in the manifest must not hit the old entry).
    ident: list[Any] = [row.id, row.text]
    for media in (row.image, row.audio):
        if media is not None:
            stat = Path(media).stat()
            ident += [str(Path(media).resolve()), stat.st_size, stat.st_mtime_ns]
    return ident


def cache_key(split: CacheSplit, rows: Sequence[Row]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FORMAT, "split": split.name, "preprocessing": split.preprocessing},
                             sort_keys=True, default=str).encode())
    _hash_modules(split.frozen, digest)
    digest.update(json.dumps([_row_identity(r) for r in rows]).encode())
    return digest.hexdigest()[:24]


@torch.no_grad()
def compute_features(split: CacheSplit, collate: Callable[[list], dict[str, torch.Tensor]], rows: Sequence[Row],
                     out: Path, *, device: torch.device, batch_size: int = 64, workers: int = 0,
                     media_options: dict[str, Any] | None = None) -> np.ndarray:
    """Run the frozen part over ``rows`` in order into ``out`` (a .npy written batch by batch)."""
    from modaltune.trainer.batches import MediaDataset, chunk, loader

    memmap = None
    position = 0
    batches = chunk([(0, i) for i in range(len(rows))], batch_size)
    for batch in loader(MediaDataset(rows, media_options=media_options), batches, collate, workers=workers):
        feats = split.encode({k: v.to(device) for k, v in batch.items()}).float().cpu().numpy()
        if memmap is None:
            memmap = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(len(rows), *feats.shape[1:]))
        memmap[position:position + len(feats)] = feats
        position += len(feats)
    if memmap is None:
        raise ValueError("no rows to cache")
    memmap.flush()
    return memmap


def get_features(split: CacheSplit, collate: Callable[[list], dict[str, torch.Tensor]], rows: Sequence[Row], *,
                 root: Path, device: torch.device, batch_size: int = 64, workers: int = 0,
                 media_options: dict[str, Any] | None = None) -> tuple[np.ndarray, bool]:
    """The boundary tensors of ``rows`` (memory-mapped), computing them first when not cached.
    Returns (features, hit)."""
    key = cache_key(split, rows)
    folder = Path(root) / key
    meta = folder / "meta.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("rows") == len(rows):
            return np.load(folder / "features.npy", mmap_mode="r"), True
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        compute_features(split, collate, rows, tmp / "features.npy", device=device, batch_size=batch_size,
                         workers=workers, media_options=media_options)
        (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "split": split.name, "rows": len(rows),
                                                    "ids": [r.id for r in rows[:5]]}) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            shutil.rmtree(tmp)  # another process wrote the same key first: identical content
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return np.load(folder / "features.npy", mmap_mode="r"), False


class FeatureDataset(Dataset):
    """(epoch, index) keys -> (row, cached boundary tensor), the same keys MediaDataset takes."""

    def __init__(self, rows: Sequence[Row], features: np.ndarray) -> None:
        self.rows = list(rows)
        self.features = features

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> tuple[Row, torch.Tensor]:
        index = key[1] if isinstance(key, tuple) else key
        return self.rows[index], torch.from_numpy(np.array(self.features[index]))


@torch.no_grad()
def cached_outputs(split: CacheSplit, rows: Sequence[Row], features: np.ndarray, *, device: torch.device,
                   batch_size: int = 64) -> dict[str, torch.Tensor]:
    """``Task.outputs`` over ``rows`` from their cached boundary tensors (for evaluation)."""
    parts: dict[str, list[torch.Tensor]] = {}
    dataset = FeatureDataset(rows, features)
    for start in range(0, len(rows), batch_size):
        batch = split.collate([dataset[i] for i in range(start, min(start + batch_size, len(rows)))])
        out = split.outputs({k: v.to(device) for k, v in batch.items()})
        for k, v in out.items():
            parts.setdefault(k, []).append(v.detach().float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}
