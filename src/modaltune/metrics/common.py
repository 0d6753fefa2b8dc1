"""What every metric module shares: plain, rounded Python numbers for ``metrics.json``, and the one
rule that orders scores (classes, answers, retrieval candidates) wherever they are ranked."""

from __future__ import annotations

import torch

DECIMALS = 6


def _r(value: torch.Tensor | float) -> float:
    """A JSON-able float rounded so that metrics.json diffs stay readable."""
    return round(float(value), DECIMALS)


def rank_scores(scores: torch.Tensor) -> torch.Tensor:
    """Indices that order the last dimension of ``scores`` best first; equal scores: the higher index first.

    This is scikit-learn's rule (``top_k_accuracy_score`` ranks with a stable ascending argsort,
    reversed), so top-k accuracy equals scikit-learn's under ties too. Every place that ranks
    (evaluation's top-1 and top-k, ``predict``'s top label and list, retrieval ranks) uses this
    rule, so they agree when scores tie. NaN ranks above every number, as in NumPy's sort.
    """
    return torch.argsort(scores, dim=-1, stable=True).flip(-1)


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best indices along the last dimension, in ``rank_scores`` order."""
    return rank_scores(scores)[..., :k]
