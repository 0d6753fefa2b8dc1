"""The former name of `modaltune.tasks.dual_encoder` (CLIP was its first model family): imports of
``modaltune.tasks.clip`` keep working."""

from modaltune.tasks.dual_encoder import ClassifyTask, DualEncoderTask, RetrieveTask

__all__ = ["ClassifyTask", "DualEncoderTask", "RetrieveTask"]
