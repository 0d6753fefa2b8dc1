"""From rows to batches: media decoding, seeded per-sample augmentation, epoch order.

Randomness here is a pure function of (seed, epoch, index), never of a global RNG state, so a run
resumed from any step sees exactly the batches and augmentations an uninterrupted run sees, with
any number of DataLoader workers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from modaltune.data.rows import Row

Key = tuple[int, int]  # (epoch, row index)


class MediaDataset(Dataset):
    """Rows by (epoch, index) key → (row, {media name: decoded value}).

    Every media reference of a row is decoded by the decoder registered for its kind, with
    ``media_options`` (what the model needs, e.g. ``sampling_rate``; limits such as ``max_pixels``):
    each decoder takes the options meant for it and ignores the rest.
    """

    def __init__(self, rows: Sequence[Row], *, augment: bool = False, seed: int = 0,
                 max_pixels: int | None = None, media_options: dict[str, Any] | None = None) -> None:
        self.rows = list(rows)
        self.augment = augment
        self.seed = seed
        self.options = dict(media_options or {})
        if max_pixels is not None:
            self.options["max_pixels"] = max_pixels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Key | int) -> tuple[Row, dict[str, Any]]:
        from modaltune.data.augment import augment_example
        from modaltune.data.media import get_decoder

        epoch, index = key if isinstance(key, tuple) else (0, key)
        row = self.rows[index]
        media = {name: get_decoder(name).load(path, **self.options) for name, path in row.media.items()}
        if self.augment:
            row, media = augment_example(row, media, random.Random(f"{self.seed}:{epoch}:{index}"))
        return row, media


class MixedDataset(Dataset):
    """Target rows by (epoch, index), rehearsed old-task rows by ("replay", epoch, index); items come
    back tagged so that collation can hand each part to its own task."""

    def __init__(self, target: MediaDataset, replay: MediaDataset | None = None) -> None:
        self.target = target
        self.replay = replay

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, key: tuple) -> tuple[str, tuple[Row, Any]]:
        if len(key) == 3 and key[0] == "replay":
            assert self.replay is not None, "replay rows asked for without replay data"
            return "replay", self.replay[(key[1], key[2])]
        return "target", self.target[key]


def epoch_order(n: int, *, seed: int, epoch: int, weights: Sequence[float] | None = None) -> list[int]:
    """A permutation of the rows (or, with ``weights``, n draws with replacement: oversampling)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if weights is None:
        return torch.randperm(n, generator=generator).tolist()
    probs = torch.as_tensor(weights, dtype=torch.double)
    return torch.multinomial(probs, n, replacement=True, generator=generator).tolist()


def oversample_weights(labels: Sequence[str | None]) -> list[float]:
    """Per-row sampling weights that make every class equally likely in expectation."""
    counts: dict[str | None, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return [1.0 / counts[label] for label in labels]


def class_weights(labels: Sequence[str], classes: Sequence[str]) -> list[float]:
    """Inverse-frequency loss weights, normalised to mean 1 over the classes that occur."""
    counts = {c: 0 for c in classes}
    for label in labels:
        counts[label] += 1
    present = [c for c in classes if counts[c]]
    raw = {c: len(labels) / (len(present) * counts[c]) for c in present}
    return [raw.get(c, 0.0) for c in classes]


def chunk(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def plan_epoch(n: int, batch_size: int, grad_accum: int, *, seed: int, epoch: int,
               weights: Sequence[float] | None = None, replay: tuple[int, int] | None = None) -> list[list[list]]:
    """One epoch as optimizer steps of micro-batches of dataset keys.

    Target rows are keyed (epoch, index); with ``replay = (old rows, old examples per micro-batch)``
    every micro-batch also gets that many ("replay", epoch, index) keys, chosen by
    `forgetting.replay_indices` from the micro-batch's position alone (exact resume).
    """
    from modaltune.forgetting import replay_indices

    order = epoch_order(n, seed=seed, epoch=epoch, weights=weights)
    groups = chunk(chunk([(epoch, i) for i in order], batch_size), grad_accum)
    if replay is None:
        return groups
    n_old, per_batch = replay
    return [[micro + [("replay", epoch, j) for j in replay_indices(n_old, per_batch, seed=seed, epoch=epoch,
                                                                  micro_batch=g * grad_accum + m)]
             for m, micro in enumerate(group)] for g, group in enumerate(groups)]


def steps_per_epoch(n: int, batch_size: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(n / batch_size) / grad_accum)


def loader(
    dataset: Dataset, batches: list[list[Any]], collate: Callable[[list], Any],
    *, workers: int = 0,
) -> Iterator[Any]:
    """Batches in the given order; decoding and the processor run in ``workers`` processes."""
    if not batches:
        return iter(())
    # An explicit generator: otherwise creating the iterator draws from the global RNG, and a resumed
    # run (which creates one more iterator mid-epoch) would see different dropout masks.
    return iter(DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                           pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(0)))
