"""Model adapters: the architecture facts of each model type, in one place per type.

Tasks and strategies ask an adapter which towers a model has (vision, text, audio, ...), where
each tower's transformer blocks are and which modules LoRA wraps, instead of hard-coding module
paths. A model type without an adapter of its own gets the structural fallback, which finds the
block stacks by shape. Third parties add types with ``register_adapter``.
"""

from modaltune.models.base import (
    ModelAdapter,
    StructuralAdapter,
    Tower,
    adapter_for,
    backbone_of,
    blocks_at,
    register_adapter,
    registered_model_types,
)

__all__ = ["ModelAdapter", "StructuralAdapter", "Tower", "adapter_for", "backbone_of", "blocks_at",
           "register_adapter", "registered_model_types"]
