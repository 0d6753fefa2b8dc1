"""A seeded train/validation split for data that does not come split already."""

from __future__ import annotations

import random
from collections import defaultdict

from modaltune.data.rows import Row
from modaltune.errors import ConfigError, DataError


def train_val_split(
    rows: list[Row], *, val_fraction: float = 0.2, seed: int = 0, stratify_by_label: bool = True
) -> tuple[list[Row], list[Row]]:
    """Split ``rows`` into (train, val), both ordered by row id.

    Rows are sorted by id before shuffling, so the same data and seed give the same split whatever
    order the files were listed in. With labels, each class is split on its own: every class with
    at least 2 rows gets at least 1 validation row and keeps at least 1 training row, so rare
    classes are neither missing from validation nor lost to training. A class with a single row
    stays in train.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(rows) < 2:
        raise DataError(
            f"Cannot split {len(rows)} row(s) into train and validation; add more data or pass a separate --val set."
        )
    ordered = sorted(rows, key=lambda r: r.id)
    rng = random.Random(seed)

    val_ids: set[str] = set()
    if stratify_by_label and any(r.label is not None for r in ordered):
        groups: dict[str, list[Row]] = defaultdict(list)
        for row in ordered:
            groups[row.label if row.label is not None else ""].append(row)
        for label in sorted(groups):  # fixed group order keeps the rng sequence reproducible
            group = groups[label]
            if len(group) >= 2:
                val_ids.update(r.id for r in _pick(group, val_fraction, rng))
    if not val_ids:  # unlabeled, or every class a singleton: fall back to a plain random split
        val_ids = {r.id for r in _pick(ordered, val_fraction, rng)}

    train = [r for r in ordered if r.id not in val_ids]
    val = [r for r in ordered if r.id in val_ids]
    return train, val


def _pick(group: list[Row], val_fraction: float, rng: random.Random) -> list[Row]:
    """A random ``val_fraction`` of ``group`` (at least 1, leaving at least 1 behind); needs len >= 2."""
    n_val = min(max(1, int(len(group) * val_fraction + 0.5)), len(group) - 1)
    return rng.sample(group, n_val)
