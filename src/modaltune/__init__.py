"""modaltune: adapt pretrained multimodal models to your own task and data.

The Python API mirrors the CLI: ``train``, ``evaluate``, ``predict``, ``validate``; tasks are
listed by ``list_tasks()``. Heavy libraries load only when a function needs them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["TrainConfig", "build_config", "evaluate", "list_tasks", "load_model", "predict", "train", "validate"]


def __getattr__(name: str) -> Any:
    # Lazy: `import modaltune` must not import torch/transformers (the CLI's --help stays fast).
    if name in ("train", "evaluate", "predict", "validate", "load_model"):
        from modaltune import api

        return getattr(api, name)
    if name in ("TrainConfig", "build_config"):
        from modaltune import config

        return getattr(config, name)
    if name == "list_tasks":
        from modaltune.tasks.base import list_tasks

        return list_tasks
    raise AttributeError(f"module 'modaltune' has no attribute {name!r}")
