"""Evaluation metrics as thin wrappers over torchmetrics and pycocoevalcap.

The metric math lives in torchmetrics (classification) and pycocoevalcap (captioning); this module
only shapes inputs (lists → tensors, captions → tokens) and outputs (plain, rounded Python numbers
that go straight into ``metrics.json``). Three are written out here, each checked against its
reference in tests/test_metrics_reference.py: VQA accuracy (the official VQA evaluation script),
retrieval R@K (LAION's CLIP_benchmark protocol, with a tie rule of its own) and top-k accuracy
(scikit-learn's ``top_k_accuracy_score``). Every ranking uses ``rank_scores``' tie rule.
"""

from modaltune.metrics.captions import caption_metrics, caption_tokens
from modaltune.metrics.classification import classification_metrics
from modaltune.metrics.common import DECIMALS, rank_scores, top_indices
from modaltune.metrics.retrieval import retrieval_metrics
from modaltune.metrics.vqa import (
    VQA_RULE,
    normalize_vqa_answer,
    official_round,
    vqa_accuracy_official,
    vqa_metrics,
    vqa_scores,
)

__all__ = ["DECIMALS", "VQA_RULE", "caption_metrics", "caption_tokens", "classification_metrics",
           "normalize_vqa_answer", "official_round", "rank_scores", "retrieval_metrics", "top_indices",
           "vqa_accuracy_official", "vqa_metrics", "vqa_scores"]
