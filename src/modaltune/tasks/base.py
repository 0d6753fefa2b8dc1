"""The Task protocol and the task registry.

A task knows one model family and one job (classify images with CLIP, retrieve image-text pairs
with CLIP, ...). Everything else (strategies, trainer, run directory, CLI) talks to a task only
through this protocol, so a new family is one new module with ``@register("name")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from modaltune.data.rows import Row
from modaltune.errors import ConfigError, ModaltuneError

META_FILE = "modaltune.json"


@dataclass
class Loaded:
    """A model ready for a task: the trainable module, its processor, and what the task needs to know.

    ``model.backbone`` is always the Hugging Face model (possibly PEFT-wrapped); task heads, if any,
    sit beside it on ``model``.
    """

    model: nn.Module
    processor: Any
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    name: ClassVar[str]
    #: Tasks of one family share a backbone type, so one can be attached to another's model.
    family: ClassVar[str]
    #: Row fields every example must have (checked by data validation before anything runs).
    required: ClassVar[tuple[str, ...]]
    #: The validation metric early stopping and model selection maximise.
    primary_metric: ClassVar[str]
    #: Whether rows carry class labels (enables label checks, balancing, stratified splits).
    uses_labels: ClassVar[bool]
    #: The ``outputs`` entry holding one embedding per example (domain-shift measurement).
    feature_output: ClassVar[str]

    def load(self, source: str | Path, *, scratch: bool = False, trust_remote_code: bool = False) -> Loaded:
        """Model + processor from a hub name or directory; ``scratch`` builds from the config only."""

    def collate(self, loaded: Loaded, items: list[tuple[Row, Any]]) -> dict[str, torch.Tensor]:
        """(row, decoded media) pairs → model inputs, including targets when the rows have them."""

    def loss(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-batch training loss (a scalar)."""

    def outputs(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw per-example outputs for evaluation (logits, embeddings); cheap to concatenate."""

    def evaluate(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> dict[str, Any]:
        """The family's metrics over a whole evaluation set."""

    def predict(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> list[dict]:
        """Human-readable predictions, one JSON-able dict per row."""

    def blocks(self, loaded: Loaded) -> dict[str, list[nn.Module]]:
        """Ordered transformer blocks per encoder, for ``last-n``."""

    def top_parameters(self, loaded: Loaded) -> list[str]:
        """Parameter-name prefixes above the blocks (head, projections, final norms): trained by last-n."""

    def used_parameters(self, loaded: Loaded) -> list[str]:
        """Parameter-name prefixes the task's forward pass uses: what ``full`` and ``scratch`` train."""

    def probe_parameters(self, loaded: Loaded) -> list[str]:
        """Parameter-name prefixes of the head a linear probe trains."""

    def lora_targets(self, loaded: Loaded) -> list[str]:
        """Module-name suffixes PEFT LoRA wraps (attention projections of the encoders in use)."""

    def save(self, loaded: Loaded, directory: Path) -> None:
        """Write ``directory`` so that plain transformers loads the backbone and this task reloads all."""

    def attach(self, other: Loaded) -> Loaded:
        """This task's model around ``other``'s backbone, shared and not copied, with any head of its own
        frozen: how an old task is scored on, and rehearsed into, the model being adapted."""

    @classmethod
    def chance(cls, rows: list[Row]) -> float:
        """The primary metric a model that knows nothing scores on ``rows``."""

    # Optional members:
    # * ``cache_split(loaded, strategy, layers) -> feature_cache.CacheSplit | None`` cuts the model at
    #   the frozen/trainable boundary so the trainer can cache the frozen part's outputs. Tasks
    #   without it (or returning None) always train through the whole model.
    # * ``options_from_rows(train_rows) -> dict`` (classmethod): constructor options learnt from the
    #   training data (VQA's answer vocabulary).
    # * ``eval_rows(rows) -> rows``: merge rows before scoring (captioning: one row per image).
    # * ``lora_modules_to_save(loaded) -> list[str]``: modules trained in full beside LoRA adapters.
    # * ``field_names``: user-facing names of row fields in messages and reason codes.


_REGISTRY: dict[str, Callable[..., Task]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding a task family under ``name``; duplicate names are a programming error."""

    def wrap(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is already registered by {_REGISTRY[name]!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_tasks() -> list[str]:
    _import_builtin_tasks()
    return sorted(_REGISTRY)


def task_class(name: str) -> type:
    """The registered class for ``name`` (its class attributes: required fields, metric, ...)."""
    _import_builtin_tasks()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; available tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def family_tasks(family: str) -> list[str]:
    """Registered task names of one model family."""
    _import_builtin_tasks()
    return sorted(name for name, cls in _REGISTRY.items() if getattr(cls, "family", None) == family)


def create_task(name: str, **options: Any) -> Task:
    """A task instance by registered name; ``options`` are the family's own (labels, prompts...)."""
    return task_class(name)(**options)


def _import_builtin_tasks() -> None:
    # Imported lazily so that `import modaltune` stays cheap and heavy families load only when used.
    from modaltune.tasks import caption, clip, vqa  # noqa: F401


def load_error(source: str | Path, exc: Exception) -> ModaltuneError:
    """The error for a model that cannot be loaded, with what to check."""
    hint = (
        "a local directory must hold config.json, the weights and the processor files"
        if Path(source).exists()
        else "a hub name needs network access (HF_HUB_OFFLINE must not be set) or a cached copy"
    )
    return ModaltuneError(f"could not load model {str(source)!r}: {exc}\nHint: {hint}.")


def unwrap(backbone: nn.Module) -> nn.Module:
    """The plain transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(backbone, "get_base_model", None)
    return get_base() if callable(get_base) else backbone


class BackboneModel(nn.Module):
    """A task model that is the Hugging Face model alone, as ``.backbone`` (every task model has one)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """``modaltune.json`` beside the saved model: which task, and what it needs to reload."""
    import json

    (Path(directory) / META_FILE).write_text(json.dumps({"format": 1, **meta}, indent=2) + "\n")


def read_meta(directory: Path) -> dict[str, Any] | None:
    import json

    path = Path(directory) / META_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
