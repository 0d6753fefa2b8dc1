"""Two-tower contrastive models: a media tower and a text tower with projections into one space."""

from __future__ import annotations

from modaltune.models.base import ModelAdapter, register_adapter


@register_adapter
class ClipAdapter(ModelAdapter):
    """CLIP and the models that copy its layout (SigLIP, SigLIP 2, MetaCLIP, ...)."""

    model_types = ("clip", "siglip", "siglip2")
    tower_specs = (
        ("vision", "vision_model", "vision_model.encoder.layers"),
        ("text", "text_model", "text_model.encoder.layers"),
    )
