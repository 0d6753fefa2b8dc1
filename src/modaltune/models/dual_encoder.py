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


@register_adapter
class ClapAdapter(ModelAdapter):
    """CLAP: an HTSAT (Swin) audio tower whose blocks are its stages, and a RoBERTa text tower."""

    model_types = ("clap",)
    tower_specs = (
        ("audio", "audio_model", "audio_model.audio_encoder.layers"),
        ("text", "text_model", "text_model.encoder.layer"),
    )
    # HTSAT normalises the mel bins with a batch norm before the patch embedding.
    below_blocks = (*ModelAdapter.below_blocks, "batch_norm")
