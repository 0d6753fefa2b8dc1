"""Recall@K both ways (image→text, text→image), the CLIP / COCO-Flickr protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from modaltune.metrics.common import _r

#: Queries scored at once; bounds the (queries × gallery) comparison tensors.
_CHUNK = 1024


def retrieval_metrics(
    similarity: torch.Tensor,
    image_keys: Sequence[str],
    *,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Image→text and text→image recall@K for a paired set, as LAION's CLIP_benchmark computes it.

    ``similarity[i, j]`` scores the image of row ``i`` against the text of row ``j``; row ``i``'s
    image was paired with row ``i``'s text. ``image_keys`` identify the same image file across
    rows (COCO has 5 caption rows per image).

    * Images are deduplicated by key (first row wins; copies embed identically): each distinct
      image is one i2t query and one t2i gallery item, so a wrong image listed in five rows does
      not take five of the top-K slots.
    * Every row's text is its own t2i query and i2t gallery item, duplicates included: a caption
      string that two images share ("a dog") is two queries, each relevant to its own image only.
    * R@K of a query is 1 when a relevant item ranks in its top K (not the share of relevant
      items found), averaged over queries.

    Ties: candidates are ranked by ``rank_scores``' rule (equal scores: the later row or the later
    distinct image first), so a query's rank never depends on which K are asked for. When a tie
    touches a query's best relevant item, ``retrieval_ties`` gives the number of such queries per
    direction and every value again with relevant items placed last among equal scores
    (``pessimistic``) and first (``optimistic``).

    Returns flat keys ``i2t_r@K`` and ``t2i_r@K`` for each K, and ``r_mean`` (their mean).
    """
    n = similarity.shape[0] if similarity.ndim else 0
    if similarity.ndim != 2 or similarity.shape[1] != n:
        raise ValueError(f"similarity must be a square (rows × rows) matrix, got {tuple(similarity.shape)}")
    if len(image_keys) != n:
        raise ValueError(f"need one image key per row ({n} rows), got {len(image_keys)}")
    if n == 0:
        raise ValueError("cannot compute retrieval metrics over zero pairs")
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    sim = similarity.detach().float().cpu()
    if torch.isnan(sim).any():
        raise ValueError("similarity has NaN scores; they cannot be ranked")

    img_ids, img_first = _dedupe(image_keys)
    sim = sim[img_first]  # distinct images × text rows
    relevant = torch.zeros(sim.shape, dtype=torch.bool)
    relevant[img_ids, torch.arange(n)] = True  # each text row is relevant to its own image only

    out: dict[str, Any] = {}
    bounds: dict[str, dict[str, float]] = {"pessimistic": {}, "optimistic": {}}
    tied: dict[str, int] = {}
    for direction, scores, rel in (("i2t", sim, relevant), ("t2i", sim.T, relevant.T)):
        rank, pessimistic, optimistic = _best_relevant_ranks(scores, rel)
        tied[f"{direction}_queries"] = int((pessimistic != optimistic).sum())
        for k in ks:
            out[f"{direction}_r@{k}"] = _hit_rate(rank, k)
            bounds["pessimistic"][f"{direction}_r@{k}"] = _hit_rate(pessimistic, k)
            bounds["optimistic"][f"{direction}_r@{k}"] = _hit_rate(optimistic, k)
    out["r_mean"] = _r(sum(out.values()) / len(out))
    if any(tied.values()):
        for values in bounds.values():
            values["r_mean"] = _r(sum(values.values()) / len(values))
        out["retrieval_ties"] = {**tied, **bounds}
    return out


def _dedupe(keys: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(id of each row's key, first row holding each distinct key), ids in first-seen order."""
    index: dict[Any, int] = {}
    first: list[int] = []
    ids = []
    for row, key in enumerate(keys):
        if key not in index:
            index[key] = len(first)
            first.append(row)
        ids.append(index[key])
    return torch.tensor(ids, dtype=torch.long), torch.tensor(first, dtype=torch.long)


def _best_relevant_ranks(
    scores: torch.Tensor, relevant: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """0-based rank of each query's best-ranked relevant item: by the rule, and its two tie bounds.

    Every query (row of ``scores``) has at least one relevant item. With ``best`` its highest
    relevant score and ``last`` the highest index among relevant items scoring ``best``, the
    ranking of ``rank_scores`` puts ahead of it exactly the items scoring more than ``best`` and
    the items after ``last`` scoring ``best`` (none of them relevant). Pessimistic: every
    non-relevant item scoring ``best`` ahead; optimistic: none of them.
    """
    ranks, pessimistic, optimistic = [], [], []
    positions = torch.arange(scores.shape[1])
    for start in range(0, scores.shape[0], _CHUNK):
        s, rel = scores[start:start + _CHUNK], relevant[start:start + _CHUNK]
        best = s.masked_fill(~rel, float("-inf")).amax(dim=1, keepdim=True)
        at_best = s == best
        last = torch.where(rel & at_best, positions, -1).amax(dim=1, keepdim=True)
        above = (s > best).sum(dim=1)
        ranks.append(above + (at_best & (positions > last)).sum(dim=1))
        pessimistic.append(above + (at_best & ~rel).sum(dim=1))
        optimistic.append(above)
    return torch.cat(ranks), torch.cat(pessimistic), torch.cat(optimistic)


def _hit_rate(rank: torch.Tensor, k: int) -> float:
    return _r((rank < k).double().mean())
