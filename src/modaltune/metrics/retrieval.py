"""Recall@K both ways (image→text, text→image) through torchmetrics' hit rate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics.retrieval import RetrievalHitRate

from modaltune.metrics.common import _r


def retrieval_metrics(
    similarity: torch.Tensor,
    image_keys: Sequence[str],
    text_keys: Sequence[str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image→text and text→image recall@K for a paired set, COCO/Flickr style.

    ``similarity[i, j]`` scores the image of row ``i`` against the text of row ``j``; row ``i``'s
    image was paired with row ``i``'s text. ``image_keys`` / ``text_keys`` identify the same image
    file / the same caption across rows (``text_keys=None``: every row's text is distinct).

    Duplicates are handled as in the standard COCO protocol (5 captions per image):

    * Relevance: an (image, text) pair is correct when that image and that text were paired in
      *some* row, not only in the same row. So for COCO every one of an image's captions is a
      hit, and a caption shared by two images ("a dog") is a hit for both.
    * Each distinct image and each distinct text is one query and one gallery item (first row
      wins; duplicates embed identically at eval time). Otherwise a wrong image that appears in
      five rows would take five of the top-K slots, and images with many captions would weigh
      more in the i2t mean.

    Returns flat keys ``i2t_r@K`` and ``t2i_r@K`` for each K, and ``r_mean`` (their mean).
    """
    n = similarity.shape[0]
    if similarity.ndim != 2 or similarity.shape[1] != n:
        raise ValueError(f"similarity must be a square (rows × rows) matrix, got {tuple(similarity.shape)}")
    if len(image_keys) != n or (text_keys is not None and len(text_keys) != n):
        raise ValueError(f"need one image key and one text key per row ({n} rows)")
    if n == 0:
        raise ValueError("cannot compute retrieval metrics over zero pairs")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")

    img_ids, img_first = _dedupe(image_keys)
    txt_ids, txt_first = _dedupe(text_keys if text_keys is not None else range(n))
    sim = similarity.detach().float().cpu()[img_first][:, txt_first]  # distinct images × distinct texts
    relevant = torch.zeros(sim.shape, dtype=torch.bool)
    relevant[img_ids, txt_ids] = True  # every (image, text) pairing present in the data

    out: dict[str, float] = {}
    for direction, scores, rel in (("i2t", sim, relevant), ("t2i", sim.T, relevant.T)):
        for k, value in _hit_rates(scores, rel, ks).items():
            out[f"{direction}_r@{k}"] = value
    out["r_mean"] = _r(sum(out.values()) / len(out))
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


def _hit_rates(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Recall@K in the retrieval-benchmark sense for queries = rows of ``scores``.

    CLIP/COCO "R@K" is 1 for a query when *any* correct item is among its top K, averaged over
    queries: that is torchmetrics' RetrievalHitRate. RetrievalRecall is a different quantity
    (the fraction of *all* correct items found in the top K, so an image with 5 captions would
    score 0.2 at R@1 for a perfect model), and it also silently ignores candidates scoring <= 0,
    which cosine similarities often do.
    """
    num_queries, gallery = scores.shape
    # Hit rate@K only looks at each query's K best candidates, so handing torchmetrics just the
    # top max(K) per query gives the same values while keeping its per-query loop over tens,
    # not tens of thousands, of candidates. A query whose correct items all fall outside that
    # window then has no positive target, which RetrievalHitRate scores 0 ("neg"), as it should.
    window = min(max(ks), gallery)
    top_scores, top_idx = scores.topk(window, dim=1)
    top_relevant = relevant.gather(1, top_idx)
    indexes = torch.arange(num_queries).unsqueeze(1).expand(-1, window)
    result = {}
    for k in ks:
        metric = RetrievalHitRate(top_k=int(k), empty_target_action="neg")
        result[int(k)] = _r(metric(top_scores.flatten(), top_relevant.flatten(), indexes=indexes.flatten()))
    return result
