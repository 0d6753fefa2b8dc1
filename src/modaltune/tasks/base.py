"""The Task contract and the task registry.

A task knows one model family and one job (classify images with CLIP, retrieve image-text pairs
with CLIP, ...). Everything else (strategies, trainer, run directory, CLI) talks to a task only
through this contract, so a new family is one new module: a ``Task`` subclass with
``@register("name")``, found by package discovery (or an entry point, from another package).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from modaltune.data.fields import Field
from modaltune.data.rows import BadRow, Row
from modaltune.errors import ConfigError, ModaltuneError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from modaltune.feature_cache import CacheSplit

META_FILE = "modaltune.json"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelOptions:
    """How a model's weights are loaded: ``from_pretrained``'s dtype, device placement and attention kernel."""

    dtype: str | None = None  # "fp32" | "bf16" | "fp16" | "auto" (the checkpoint's own); None: transformers' default
    device_map: str | None = None  # e.g. "auto" (spread over the GPUs and CPU), "cpu", "cuda:0"
    attn_implementation: str | None = None  # "eager" | "sdpa" | "flash_attention_2" | ...
    quantize: str | None = None  # "4bit" | "8bit": bitsandbytes, CUDA only

    def __post_init__(self) -> None:
        check_quantize(self.quantize)

    def kwargs(self, *, from_config: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained`` (or ``from_config``, which places nothing)."""
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": "auto"}
        out: dict[str, Any] = {}
        if self.quantize is not None and not from_config:
            from transformers import BitsAndBytesConfig

            compute = dtypes.get(self.dtype or "bf16", torch.bfloat16)
            out["quantization_config"] = (
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=compute if compute != "auto" else torch.bfloat16)
                if self.quantize == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
        if self.dtype is not None:
            out["dtype"] = dtypes[self.dtype] if not (from_config and self.dtype == "auto") else torch.float32
        if self.device_map is not None and not from_config:
            out["device_map"] = self.device_map
        if self.attn_implementation is not None:
            out["attn_implementation"] = self.attn_implementation
        return out


QUANTIZE = ("4bit", "8bit")


def check_quantize(quantize: str | None) -> None:
    """--quantize needs bitsandbytes and a CUDA GPU: said before anything loads, not as a crash later."""
    if quantize is None:
        return
    if quantize not in QUANTIZE:
        raise ConfigError(f"--quantize {quantize!r}: use one of {', '.join(QUANTIZE)}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--quantize {quantize} loads the weights with bitsandbytes, which needs a CUDA GPU, and "
                          "this machine has none; drop --quantize (LoRA alone still trains few parameters), or "
                          "run on a CUDA machine")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"--quantize {quantize} needs bitsandbytes: pip install 'modaltune[quantize]'")


@dataclass
class Loaded:
    """A model ready for a task: the trainable module, its processor, and what the task needs to know.

    ``model.backbone`` is always the Hugging Face model (possibly PEFT-wrapped); task heads, if any,
    sit beside it on ``model``.
    """

    model: nn.Module
    processor: Any
    meta: dict[str, Any] = field(default_factory=dict)
    #: Options for the media decoders that feed this model (``{"sampling_rate": 48000}`` for an
    #: audio model): decoded media arrive as the processor expects them.
    media_options: dict[str, Any] = field(default_factory=dict)
    #: What the task learnt from the training data or read back from a saved model (class labels,
    #: answer vocabulary and head mode, generation settings): JSON-able, written by ``save`` into
    #: ``modaltune.json`` under ``"state"`` and restored by ``load``. A task keeps it here, never on
    #: itself, so one task object can load, attach to and score several models.
    state: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """One model family doing one job. Subclass it, fill in the abstract methods, and register it.

    The optional members at the end have documented defaults; a task overrides them only when it
    has something to add, and callers use them directly (no probing for attributes).
    """

    name: ClassVar[str]
    #: Tasks of one family share a backbone type, so one can be attached to another's model.
    family: ClassVar[str]
    #: What the task reads from an example, as typed fields (`modaltune.data.fields`): each field
    #: parses its manifest columns, says when a value is missing or empty (with its reason code), and
    #: a media field names the media kinds it takes. Data validation checks them before anything runs.
    fields: ClassVar[tuple[Field, ...]]
    #: The validation metric early stopping and model selection maximise.
    primary_metric: ClassVar[str]
    #: Whether rows carry class labels (enables label checks, balancing, stratified splits).
    uses_labels: ClassVar[bool] = False
    #: The task's own settings (a pydantic model): the config section named after the task and its
    #: command-line options (``--<task>.<field>``); its fields reach the constructor as keyword arguments.
    Options: ClassVar[type[BaseModel] | None] = None
    #: The ``outputs`` entry holding one embedding per example (domain-shift measurement).
    feature_output: ClassVar[str]

    @abstractmethod
    def load(self, source: str | Path, *, scratch: bool = False, trust_remote_code: bool = False,
             options: ModelOptions | None = None) -> Loaded:
        """Model + processor from a hub name or directory; ``scratch`` builds from the config only;
        ``options`` says how the weights are loaded (dtype, device map, attention kernel)."""

    @abstractmethod
    def collate(self, loaded: Loaded, items: list[tuple[Row, Any]]) -> dict[str, torch.Tensor]:
        """(row, decoded media) pairs → model inputs, including targets when the rows have them."""

    @abstractmethod
    def loss(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        """Per-batch training loss: a scalar, or ``{"loss": total, "<part>": ...}`` whose parts are logged."""

    @abstractmethod
    def outputs(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw per-example outputs for evaluation (logits, embeddings); cheap to concatenate."""

    @abstractmethod
    def evaluate(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> dict[str, Any]:
        """The family's metrics over a whole evaluation set."""

    @abstractmethod
    def predict(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> list[dict]:
        """Human-readable predictions, one JSON-able dict per row."""

    @abstractmethod
    def blocks(self, loaded: Loaded) -> dict[str, list[nn.Module]]:
        """Ordered transformer blocks per encoder, for ``last-n``."""

    @abstractmethod
    def top_parameters(self, loaded: Loaded) -> list[str]:
        """Parameter-name prefixes above the blocks (head, projections, final norms): trained by last-n."""

    @abstractmethod
    def used_parameters(self, loaded: Loaded) -> list[str]:
        """Parameter-name prefixes the task's forward pass uses: what ``full`` and ``scratch`` train."""

    @abstractmethod
    def probe_parameters(self, loaded: Loaded) -> list[str]:
        """Parameter-name prefixes of the head a linear probe trains."""

    @abstractmethod
    def lora_targets(self, loaded: Loaded) -> str | list[str]:
        """PEFT ``target_modules``: a regex over full module names, or module-name suffixes."""

    @abstractmethod
    def save(self, loaded: Loaded, directory: Path) -> None:
        """Write ``directory`` so that plain transformers loads the backbone and this task reloads all."""

    @abstractmethod
    def attach(self, other: Loaded) -> Loaded:
        """This task's model around ``other``'s backbone, shared and not copied, with any head of its own
        frozen: how an old task is scored on, and rehearsed into, the model being adapted."""

    @classmethod
    @abstractmethod
    def chance(cls, rows: list[Row]) -> float:
        """The primary metric a model that knows nothing scores on ``rows``."""

    # ---- optional members, with their defaults ------------------------------------------------

    def cache_split(self, loaded: Loaded, strategy: str, layers: int | None) -> CacheSplit | None:
        """Cut the model at the frozen/trainable boundary so the trainer can cache the frozen part's
        outputs (``feature_cache``). Default: no cut, training runs through the whole model."""
        return None

    @classmethod
    def options_from_rows(cls, rows: list[Row]) -> dict[str, Any]:
        """Constructor options learnt from the training rows (VQA's answer vocabulary). Default: none."""
        return {}

    def eval_rows(self, rows: list[Row]) -> list[Row]:
        """Rows as scored (captioning merges an image's captions into one row). Default: unchanged."""
        return rows

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> float | None:
        """How much this micro-batch's (mean) loss weighs in an optimizer step, when it is a mean over a
        number of items that varies by batch (a chat model's target tokens): the trainer then scales
        each micro-batch's loss by its weight over the step's total, so the step minimises the mean
        over every item of the accumulated batch, however it is split. Default None: micro-batches
        weigh the same."""
        return None

    def usable_rows(self, loaded: Loaded, rows: Sequence[Row]) -> tuple[list[Row], list[BadRow]]:
        """The rows this loaded model can take, and the others with their reason codes (a chat
        conversation over the length limit once its images are expanded: only the model's processor
        can tell). A run drops the others before anything trains. Default: every row."""
        return list(rows), []

    def lora_modules_to_save(self, loaded: Loaded) -> list[str]:
        """Modules trained in full beside LoRA adapters (a new head). Default: none."""
        return []


_REGISTRY: dict[str, type[Task]] = {}
#: Entry-point group through which another package adds task families (pyproject.toml:
#: ``[project.entry-points."modaltune.tasks"] mine = "my_package.my_task"``; loading it registers).
ENTRY_POINT_GROUP = "modaltune.tasks"
_discovered = False


def register(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator adding a task family under ``name``; duplicate names are a programming error."""

    def wrap(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"@register({name!r}) needs a subclass of modaltune.tasks.Task, got {cls!r}")
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is already registered by {_REGISTRY[name]!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_tasks() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def task_class(name: str) -> type[Task]:
    """The registered class for ``name`` (its class attributes: required fields, metric, ...)."""
    _discover()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; available tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def family_tasks(family: str) -> list[str]:
    """Registered task names of one model family."""
    _discover()
    return sorted(name for name, cls in _REGISTRY.items() if cls.family == family)


def create_task(name: str, **options: Any) -> Task:
    """A task instance by registered name; ``options`` are the family's own (labels, prompts...)."""
    return task_class(name)(**options)


def _discover() -> None:
    """Import every family once: each module of this package (no hand-kept list) and each entry point
    of ``ENTRY_POINT_GROUP``. Lazy, so that ``import modaltune`` stays cheap."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # first, since the modules imported below import this one
    import modaltune.tasks as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:  # a broken plug-in must not take the built-in families down with it
            logger.warning("task family %r from %s could not be loaded and is skipped: %s", entry.name,
                           entry.value, exc)


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
