"""Metrics of a chat model on conversations: teacher-forced loss on the assistant tokens, and the
generated last answer against its reference by answer type.

Short answers (a few words: "two", "red circle") are scored as VQA answers, with exact match and VQA
accuracy (``metrics.vqa``: normalised answers); long answers (descriptions) as captions, with BLEU,
ROUGE-L and CIDEr on the official PTB tokens (``metrics.captions``). Each group's metrics are
computed over its rows only and are absent (None) when it has none; ``short_rows`` and
``long_rows`` say how many rows each covers.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from modaltune.metrics.common import _r


def answer_type(reference: str, short_words: int) -> str:
    """"short" for an answer of at most ``short_words`` words, else "long"."""
    return "short" if len(reference.split()) <= short_words else "long"


def token_metrics(loss_sum: torch.Tensor, tokens: torch.Tensor, correct: torch.Tensor) -> dict[str, float | None]:
    """Loss (mean cross-entropy per target token over the whole set), its perplexity and the share of
    target tokens predicted right (teacher forcing)."""
    total = float(tokens.sum())
    if total == 0:
        return {"loss": None, "perplexity": None, "token_accuracy": 0.0}
    loss = float(loss_sum.sum()) / total
    return {"loss": _r(loss), "perplexity": _r(math.exp(loss)) if loss < 50 else float("inf"),
            "token_accuracy": _r(float(correct.sum()) / total)}


def chat_metrics(outputs: dict[str, torch.Tensor], answers: list[str], references: list[str | None],
                 short_words: int) -> dict[str, Any]:
    """Every metric of a set of conversations: ``outputs`` holds per-row ``loss_sum``, ``tokens`` and
    ``correct``; ``answers`` the generated last answers; ``references`` the reference last answers
    (None for a conversation that ends without one)."""
    from modaltune.metrics.captions import caption_metrics
    from modaltune.metrics.vqa import vqa_metrics

    metrics: dict[str, Any] = ({"loss": None, "perplexity": None, "token_accuracy": 0.0} if "loss_sum" not in outputs
                               else dict(token_metrics(outputs["loss_sum"], outputs["tokens"], outputs["correct"])))
    short = [(a, r) for a, r in zip(answers, references) if r is not None and answer_type(r, short_words) == "short"]
    long = [(i, a, r) for i, (a, r) in enumerate(zip(answers, references))
            if r is not None and answer_type(r, short_words) == "long"]
    metrics.update({"exact_match": None, "vqa_accuracy": None, "bleu_4": None, "rouge_l": None, "cider": None,
                    "short_rows": len(short), "long_rows": len(long)})
    if short:
        metrics.update(vqa_metrics([a for a, _ in short], [[r] for _, r in short]))
    if long:
        scored = caption_metrics({str(i): a for i, a, _ in long}, {str(i): [r] for i, _, r in long})
        metrics.update({"bleu_4": scored["bleu_4"], "rouge_l": scored["rouge_l"], "cider": scored["cider"]})
    return metrics
