"""Which parameters train: apply a strategy to a task's model, and export the result.

Every strategy is expressed through the Task protocol (blocks, top parameters, probe parameters,
LoRA targets), so it works the same for every family.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from modaltune.errors import ConfigError
from modaltune.tasks.base import Loaded, Task

STRATEGIES = ("zero-shot", "linear-probe", "last-n", "full", "lora", "scratch")


@dataclass
class StrategyInfo:
    strategy: str
    layers: int | None
    trainable_params: int
    total_params: int
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoraOptions:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0


def apply_strategy(
    task: Task, loaded: Loaded, strategy: str, *, layers: int | None = None, lora: LoraOptions | None = None
) -> StrategyInfo:
    """Freeze/unfreeze (or wrap with PEFT) ``loaded.model`` in place for ``strategy``."""
    model = loaded.model
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy != "last-n" and layers is not None and strategy != "auto":
        raise ConfigError(f"--layers only applies to --strategy last-n (got strategy {strategy!r})")

    if strategy in ("full", "scratch"):
        # "Everything" the task uses: a tower outside the forward pass (CLIP's text tower when
        # classifying with a head) would get no gradient and only inflate the trainable count.
        _train_only(model, task.used_parameters(loaded))
        description = "every parameter the task uses trains" + (" from a random init" if strategy == "scratch" else "")
    elif strategy == "zero-shot":
        model.requires_grad_(False)
        description = "no training: the base model as it is"
    elif strategy == "linear-probe":
        _train_only(model, task.probe_parameters(loaded))
        description = "pretrained model frozen; only the head trains"
    elif strategy == "last-n":
        description = _apply_last_n(task, loaded, layers)
    else:
        description = _apply_lora(task, loaded, lora or LoraOptions())

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if strategy != "zero-shot" and trainable == 0:
        raise ConfigError(f"strategy {strategy!r} leaves no trainable parameter for task {task.name!r}")
    return StrategyInfo(strategy, layers, trainable, total, description)


def _train_only(model: nn.Module, prefixes: list[str]) -> None:
    model.requires_grad_(False)
    matched = False
    for name, param in model.named_parameters():
        if any(name == p or (p.endswith(".") and name.startswith(p)) for p in prefixes):
            param.requires_grad_(True)
            matched = True
    if prefixes and not matched:
        raise ConfigError(f"none of the parameters {prefixes} exist in the model; this task/model pair is unsupported")


def _apply_last_n(task: Task, loaded: Loaded, layers: int | None) -> str:
    blocks = task.blocks(loaded)
    depth = min(len(b) for b in blocks.values())
    if layers is None:
        raise ConfigError("--strategy last-n needs --layers N (how many of the last blocks of each encoder train)")
    if not 1 <= layers <= depth:
        sizes = ", ".join(f"{name}: {len(b)}" for name, b in blocks.items())
        raise ConfigError(f"--layers must be between 1 and {depth} for this model (blocks per encoder: {sizes})")
    _train_only(loaded.model, task.top_parameters(loaded))
    for encoder in blocks.values():
        for block in encoder[-layers:]:
            block.requires_grad_(True)
    towers = " and ".join(blocks)
    return f"last {layers} block(s) of the {towers} encoder(s) + head, projections and final norms train"


def _apply_lora(task: Task, loaded: Loaded, options: LoraOptions) -> str:
    from peft import LoraConfig, get_peft_model

    model = loaded.model
    head = task.probe_parameters(loaded) if not _is_backbone_only(task, loaded) else []
    to_save = task.lora_modules_to_save(loaded)
    config = LoraConfig(
        r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
        target_modules=task.lora_targets(loaded), bias="none",
        modules_to_save=to_save or None,
    )
    model.requires_grad_(False)
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`: nothing the user can change.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.backbone = get_peft_model(model.backbone, config)
    for name, param in model.named_parameters():
        if any(name.startswith(p) for p in head):
            param.requires_grad_(True)
    return f"LoRA adapters (r={options.rank}, alpha={options.alpha}) on attention projections; the rest frozen"


def _is_backbone_only(task: Task, loaded: Loaded) -> bool:
    """True when the task's probe parameters live inside the backbone (then LoRA alone trains)."""
    return all(p.startswith("backbone.") for p in task.probe_parameters(loaded))


def is_peft(loaded: Loaded) -> bool:
    return hasattr(loaded.model.backbone, "merge_and_unload")


def export(task: Task, loaded: Loaded, directory: Path, *, consume: bool = False) -> None:
    """Write ``directory`` (the run's ``model/``): plain-transformers weights; LoRA also keeps its adapter.

    For LoRA the adapter goes to ``directory/adapter`` (loadable with ``PeftModel.from_pretrained``),
    and the merged weights to ``directory`` itself. The in-memory model is left untouched, unless
    ``consume``: then LoRA merges in place instead of merging a copy, so exporting costs no second
    set of weights (a run's peak memory would otherwise be set here, not in training).
    """
    import copy

    if not is_peft(loaded):
        task.save(loaded, directory)
        return
    loaded.model.backbone.save_pretrained(directory / "adapter")
    merged = copy.copy(loaded.model)  # shallow: shares the head, replaces only the backbone attribute
    merged._modules = dict(loaded.model._modules)
    backbone = loaded.model.backbone if consume else copy.deepcopy(loaded.model.backbone)
    merged.backbone = backbone.merge_and_unload()
    task.save(Loaded(merged, loaded.processor, loaded.meta), directory)
    if consume:
        loaded.model = merged  # what is left is the plain merged model, not a PEFT wrapper
