"""How far the user's data is from what the base model knows, measured on the base model alone.

Three measurements, all from one frozen forward pass over (a seeded sample of) the data:

* **zero-shot score**: the task's primary metric with no training (CLIP: prompt classifier, or
  image-text retrieval). ``zero_shot_gain`` rescales it so chance is 0 and perfect is 1.
* **separability** (labelled tasks): leave-one-out nearest-centroid accuracy of the frozen
  embeddings, rescaled the same way. It answers "do the features already tell the classes apart,
  even if the prompts do not name them well?" - the case where a linear probe is enough. Nearest
  centroid rather than logistic regression because it has no hyper-parameters and is stable with 5
  examples per class.
* **Fréchet distance** between the embeddings of the data and of a reference set (e.g. data of the
  base model's original task), normalised by the two sets' total variance so that 0 means "same
  distribution" whatever the embedding scale; reported when a reference is given.

``familiarity`` = max(zero-shot gain, separability gain): how much of the task the frozen model
already solves one way or the other. ``shift`` = 1 - familiarity drives the advisor.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F

from modaltune.data.rows import Row
from modaltune.tasks.base import Loaded, Task

#: Rows looked at by default: enough for stable statistics, cheap on a CPU.
MAX_ROWS = 2000


def _gain(score: float, chance: float) -> float:
    if chance >= 1.0:
        return 0.0
    return max(0.0, min(1.0, (score - chance) / (1.0 - chance)))


def sample_rows(rows: Sequence[Row], limit: int, seed: int) -> list[Row]:
    rows = list(rows)
    if len(rows) <= limit:
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in picked]


def nearest_centroid_loo(features: torch.Tensor, labels: Sequence[str]) -> float | None:
    """Leave-one-out nearest-centroid accuracy (cosine); None when no class has 2 examples."""
    classes = sorted(set(labels))
    index = torch.tensor([classes.index(label) for label in labels])
    x = F.normalize(features.double(), dim=-1)
    sums = torch.zeros(len(classes), x.shape[1], dtype=x.dtype).index_add_(0, index, x)
    counts = torch.bincount(index, minlength=len(classes)).to(x.dtype)
    usable = counts[index] >= 2
    if not bool(usable.any()):
        return None
    centroids = F.normalize(sums / counts[:, None], dim=-1)
    sims = x @ centroids.T
    # Each example's own class centroid, recomputed without it.
    own = (sums[index] - x) / (counts[index] - 1).clamp(min=1)[:, None]
    sims[torch.arange(len(x)), index] = (x * F.normalize(own, dim=-1)).sum(-1)
    correct = (sims.argmax(-1) == index) & usable
    return float(correct.sum() / usable.sum())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2), via symmetric eigendecompositions."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle)


def normalised_frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance over the summed total variance (plus squared mean norms) of both sets: scale-free."""
    a, b = a.double(), b.double()
    scale = float(torch.cov(a.T).trace() + torch.cov(b.T).trace() + a.mean(0).pow(2).sum() + b.mean(0).pow(2).sum())
    return frechet_distance(a, b) / scale if scale > 0 else 0.0


def measure_shift(
    task: Task, loaded: Loaded, rows: Sequence[Row], *, reference: Sequence[Row] | None = None,
    reference_task: Task | None = None, batch_size: int = 64, max_rows: int = MAX_ROWS, seed: int = 0,
) -> dict[str, Any]:
    """The domain-shift measurements above for ``rows`` under the (frozen, base) model in ``loaded``."""
    from modaltune.inference import compute_outputs

    sample = sample_rows(rows, max_rows, seed)
    outputs = compute_outputs(task, loaded, sample, batch_size=batch_size)
    metric = task.primary_metric
    zero_shot = float(task.evaluate(loaded, outputs, sample)[metric])
    chance = task.chance(sample)
    result: dict[str, Any] = {
        "rows": len(sample), "metric": metric, "zero_shot": round(zero_shot, 6), "chance": round(chance, 6),
        "zero_shot_gain": round(_gain(zero_shot, chance), 6),
        "separability": None, "separability_gain": None, "frechet": None,
    }
    features = outputs[task.feature_output]
    if task.uses_labels:
        labels = [cast(str, row.label) for row in sample]  # a task that uses labels requires them on every row
        separability = nearest_centroid_loo(features, labels)
        if separability is not None:
            result["separability"] = round(separability, 6)
            result["separability_gain"] = round(_gain(separability, 1.0 / len(set(labels))), 6)
    if reference:
        ref_task = reference_task or task
        ref_loaded = ref_task.attach(loaded) if reference_task is not None else loaded
        ref_sample = sample_rows(reference, max_rows, seed)
        ref_features = compute_outputs(ref_task, ref_loaded, ref_sample, batch_size=batch_size)[ref_task.feature_output]
        result["frechet"] = round(normalised_frechet(features, ref_features), 6)
    familiarity = max(result["zero_shot_gain"], result["separability_gain"] or 0.0)
    result["familiarity"] = round(familiarity, 6)
    result["shift"] = round(1.0 - familiarity, 6)
    return result
