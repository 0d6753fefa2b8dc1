"""From rows to batches: media decoding, seeded per-sample augmentation, epoch order, and the
preparation of the next batch in a background thread while the current step computes.

Randomness here is a pure function of (seed, epoch, index), never of a global RNG state, so a run
resumed from any step sees exactly the batches and augmentations an uninterrupted run sees, with
any number of DataLoader workers or a prefetching thread.
"""

from __future__ import annotations

import logging
import math
import queue
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from modaltune.data.rows import Row

Key = tuple[int, int]  # (epoch, row index)

logger = logging.getLogger(__name__)

# One collate runs at a time in this process. A training batch still being prepared in the
# background when an evaluation starts would otherwise run the processor concurrently with the
# evaluation's own collate (a fast tokenizer is not safe to reconfigure while another thread encodes).
# Re-entrant: a collate may itself prepare batches (a feature cache computing its features).
_PREPARING = threading.RLock()


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
    *, workers: int = 0, prefetch: bool = False,
) -> Iterator[Any]:
    """Batches in the given order; decoding and the processor run in ``workers`` processes, or, with
    none and ``prefetch``, the next batch is prepared in a background thread (`prefetched`)."""
    if not batches:
        return iter(())
    pin = torch.cuda.is_available()
    if workers == 0 and prefetch:
        return prefetched(dataset, batches, collate, pin=pin)
    if workers == 0:
        collate = _serialised(collate)
    # An explicit generator: otherwise creating the iterator draws from the global RNG, and a resumed
    # run (which creates one more iterator mid-epoch) would see different dropout masks.
    return iter(DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                           pin_memory=pin, generator=torch.Generator().manual_seed(0)))


def prefetched(dataset: Dataset, batches: Sequence[Sequence[Any]], collate: Callable[[list], Any],
               *, pin: bool = False, depth: int = 1) -> Iterator[Any]:
    """The batches a synchronous loader yields, in its order, each prepared (decoded, collated,
    pinned) in one background thread while the consumer works on the one before.

    Decoding, resizing and the processor's numpy/torch work release the GIL, as does the step's
    compute, so on a machine without spare cores for worker processes the data time hides behind
    the step. At most ``depth`` batches wait in the queue, plus the one being prepared.

    Exact resume and dropout masks rely on batch preparation never drawing from a global random
    generator (this module's randomness is keyed by (seed, epoch, index)): from a thread, such draws
    would interleave with the step's draws by timing. The first batch is therefore prepared in the
    calling thread with the global generators' states compared around it; if it drew from one, every
    batch of this loader is prepared synchronously. Later batches are checked for numpy's and
    Python's global generators (the step does not draw from those); a draw there ends the
    prefetching for the rest of the loader (that one batch was still prepared ahead, so a checkpoint
    taken meanwhile records the generator after its draw). The thread flushes subnormal floats if the
    caller's does.

    An error in the thread is raised here with its own type, message and traceback. The thread
    stops when the iterator is exhausted, closed, or dropped (a loop that breaks or raises): it
    finishes the batch in hand and exits; it is a daemon thread, so it never holds up the
    interpreter's exit.
    """
    if not batches:
        return
    prepare = _preparer(dataset, collate, pin)
    before = _global_rng_states()
    first = prepare(batches[0])
    drawn = _drawn_from(before)
    rest = list(batches[1:])
    if drawn or not rest:
        if drawn:
            logger.info("batch preparation draws from %s's global random generator: batches are prepared "
                        "in the training thread, not prefetched", drawn)
        yield first
        for keys in rest:
            yield prepare(keys)
        return

    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    # Flushing subnormals is a per-thread CPU mode: the training loop sets it on its own thread, and
    # a batch must come out the same whichever thread prepares it.
    flushing = flushes_denormals()

    def hand(item: tuple[str, Any]) -> bool:
        """Queues ``item`` unless the consumer stopped first (checked every 50 ms while the queue is full)."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            torch.set_flush_denormal(flushing)
            for keys in rest:
                if stop.is_set():
                    return
                states = _global_rng_states(torch_too=False)
                batch = prepare(keys)
                if _drawn_from(states):
                    hand(("last", batch))
                    return
                if not hand(("batch", batch)):
                    return
        except BaseException as exc:  # the consumer raises it as it is; it must never wait for nothing
            hand(("error", exc))

    thread = threading.Thread(target=work, name="modaltune-prefetch", daemon=True)
    thread.start()
    try:
        yield first
        for i in range(len(rest)):
            kind, value = ready.get()
            if kind == "error":
                raise value
            yield value
            if kind == "last":
                logger.info("batch preparation drew from a global random generator: the rest of the "
                            "epoch's batches are prepared in the training thread")
                for keys in rest[i + 1:]:
                    yield prepare(keys)
                return
    finally:
        stop.set()
        while not ready.empty():  # frees the waiting batch; the thread sees ``stop`` within 50 ms
            ready.get_nowait()
        thread.join()


def flushes_denormals() -> bool:
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 1.0)[0] == 0)  # 1e-39 is subnormal in float32


def _preparer(dataset: Dataset, collate: Callable[[list], Any], pin: bool) -> Callable[[Sequence[Any]], Any]:
    collate = _serialised(collate)

    def prepare(keys: Sequence[Any]) -> Any:
        batch = collate([dataset[key] for key in keys])
        return _pinned(batch) if pin else batch

    return prepare


def _serialised(collate: Callable[[list], Any]) -> Callable[[list], Any]:
    def run(items: list) -> Any:
        with _PREPARING:
            return collate(items)

    return run


def _pinned(batch: Any) -> Any:
    """``batch`` with its tensors in page-locked memory (what DataLoader's ``pin_memory`` does)."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: _pinned(v) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_pinned(v) for v in batch]
    if isinstance(batch, tuple):
        items = [_pinned(v) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else tuple(items)  # a namedtuple's fields
    return batch


def _global_rng_states(*, torch_too: bool = True) -> dict[str, Any]:
    states: dict[str, Any] = {"numpy": np.random.get_state(), "random": random.getstate()}
    if torch_too:
        states["torch"] = torch.random.get_rng_state()
    return states


def _drawn_from(before: dict[str, Any]) -> str | None:
    """The first global generator (torch, numpy, random) whose state moved since ``before``."""
    after = _global_rng_states(torch_too="torch" in before)
    if "torch" in before and not torch.equal(before["torch"], after["torch"]):
        return "torch"
    old, new = before["numpy"], after["numpy"]
    if old[2:] != new[2:] or not np.array_equal(old[1], new[1]):
        return "numpy"
    if before["random"] != after["random"]:
        return "random"
    return None
