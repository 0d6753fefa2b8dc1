"""What every metric module shares: plain, rounded Python numbers for ``metrics.json``."""

from __future__ import annotations

import torch

DECIMALS = 6


def _r(value: torch.Tensor | float) -> float:
    """A JSON-able float rounded so that metrics.json diffs stay readable."""
    return round(float(value), DECIMALS)
