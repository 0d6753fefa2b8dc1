"""Evaluation metrics as thin wrappers over torchmetrics and pycocoevalcap.

The metric math lives in torchmetrics (classification, retrieval) and pycocoevalcap (captioning);
this module only shapes inputs (lists → tensors, keys → relevance masks, captions → tokens) and
outputs (plain, rounded Python numbers that go straight into ``metrics.json``). VQA accuracy is
small enough to be written out here, following the official VQA evaluation script.
"""

from modaltune.metrics.captions import caption_metrics, caption_tokens
from modaltune.metrics.classification import classification_metrics
from modaltune.metrics.common import DECIMALS, rank_scores, top_indices
from modaltune.metrics.retrieval import retrieval_metrics
from modaltune.metrics.vqa import normalize_vqa_answer, vqa_metrics, vqa_scores

__all__ = ["DECIMALS", "caption_metrics", "caption_tokens", "classification_metrics", "normalize_vqa_answer",
           "rank_scores", "retrieval_metrics", "top_indices", "vqa_metrics", "vqa_scores"]
