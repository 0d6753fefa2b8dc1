"""Which parameters train: apply a strategy to a task's model, and export the result.

Every strategy is expressed through the Task protocol (blocks, top parameters, probe parameters,
LoRA targets), so it works the same for every family.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from torch import nn

from modaltune.errors import ConfigError
from modaltune.models.base import backbone_of, blocks_at
from modaltune.tasks.base import Loaded, Task

if TYPE_CHECKING:
    from peft import PeftModel

STRATEGIES = ("zero-shot", "linear-probe", "last-n", "full", "lora", "scratch", "towers")
#: What a component (a tower, or "head": everything the task uses outside the towers) can do
#: under ``--strategy towers``.
TOWER_MODES = ("frozen", "full", "last-n", "lora")
#: Components besides the towers: the backbone's parameters outside every tower (CLIP's
#: projections, logit scale) and the task's own head.
PROJECTIONS = "projections"
HEAD = "head"


@dataclass
class StrategyInfo:
    strategy: str
    layers: int | None
    trainable_params: int
    total_params: int
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TowerSetting:
    """How one component trains: ``frozen``, ``full``, ``last-n`` (its last ``layers`` blocks) or ``lora``."""

    mode: str
    layers: int | None = None

    def __str__(self) -> str:
        return f"last-n {self.layers}" if self.mode == "last-n" else self.mode


_FROZEN = TowerSetting("frozen")


def parse_towers(spec: str | dict[str, str]) -> dict[str, TowerSetting]:
    """``"vision=last-n:2,text=frozen,head=full"`` (or the same as a mapping) → settings per component."""
    items = spec.items() if isinstance(spec, dict) else (
        part.split("=", 1) if "=" in part else (part, "") for part in spec.split(",") if part.strip())
    settings: dict[str, TowerSetting] = {}
    for name, value in items:
        name, value = name.strip(), str(value).strip().replace(" ", ":")
        mode, _, layers = value.partition(":")
        if not name or mode not in TOWER_MODES or (mode == "last-n") != bool(layers) or (
                layers and not layers.isdigit()):
            raise ConfigError(
                f"bad tower setting {name}={value!r}: write component=mode with mode one of frozen, full, "
                "last-n:N, lora, e.g. --towers 'vision=last-n:2,text=frozen,head=full'")
        if name in settings:
            raise ConfigError(f"component {name!r} is set twice in --towers")
        settings[name] = TowerSetting(mode, int(layers) if layers else None)
    if not settings:
        raise ConfigError("--strategy towers needs --towers, e.g. 'vision=last-n:2,text=frozen,head=full'")
    return settings


@dataclass
class LoraOptions:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0


def apply_strategy(
    task: Task, loaded: Loaded, strategy: str, *, layers: int | None = None, lora: LoraOptions | None = None,
    towers: str | dict[str, str] | None = None,
) -> StrategyInfo:
    """Freeze/unfreeze (or wrap with PEFT) ``loaded.model`` in place for ``strategy``.

    ``towers`` (with strategy "towers") sets each component on its own: a tower of the model
    (``vision``, ``text``, ...: see ``modaltune.models``), ``projections`` (the backbone's
    parameters outside the towers) or ``head`` (the task's own head). For CLIP, three strategies
    are shorthands for it: ``last-n N`` = each tower the task uses at ``last-n:N`` + projections,
    ``full`` = each tower it uses + projections + head, ``lora`` = ``lora`` on each tower it uses +
    head.
    """
    model = loaded.model
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if towers is not None and strategy == "lora":
        strategy = "towers"  # --strategy lora --components 'vision=frozen,projector=full,language=lora'
        if not any(setting.mode == "lora" for setting in parse_towers(towers).values()):
            raise ConfigError("--strategy lora with --components/--towers needs a component set to lora")
    if towers is not None and strategy != "towers":
        raise ConfigError(f"--towers only applies to --strategy towers or lora (got strategy {strategy!r})")
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
    elif strategy == "towers":
        description = _apply_towers(task, loaded, parse_towers(towers or ""), lora or LoraOptions())
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
    model = loaded.model
    head = task.probe_parameters(loaded) if not _is_backbone_only(task, loaded) else []
    model.requires_grad_(False)
    _wrap_lora(model, task.lora_targets(loaded), options, task.lora_modules_to_save(loaded))
    for name, param in model.named_parameters():
        if any(name.startswith(p) for p in head):
            param.requires_grad_(True)
    return f"LoRA adapters (r={options.rank}, alpha={options.alpha}) on attention projections; the rest frozen"


def _apply_towers(task: Task, loaded: Loaded, settings: dict[str, TowerSetting], options: LoraOptions) -> str:
    """Each component as set; components not named stay frozen."""
    from modaltune.models import adapter_for
    from modaltune.tasks.base import unwrap

    model = loaded.model
    backbone = unwrap(backbone_of(model))
    adapter = adapter_for(backbone)
    towers = adapter.towers(backbone)
    _check_towers(task, loaded, settings, towers, backbone)
    lora_towers = [name for name, setting in settings.items() if setting.mode == "lora"]
    head_trains = settings.get(HEAD, _FROZEN).mode == "full"

    model.requires_grad_(False)
    if lora_towers:
        # A tower trained in full beside LoRA adapters is trained (and saved in adapter/) whole, as
        # PEFT's modules_to_save: LLaVA's stage 2 is projector=full with language=lora.
        whole = [module for name, setting in settings.items() if setting.mode == "full" and name in towers
                 for module in adapter.component_modules(backbone, name)]
        _wrap_lora(model, adapter.lora_pattern(backbone, lora_towers), options,
                   whole + (task.lora_modules_to_save(loaded) if head_trains else []))
    inner = "backbone.base_model.model." if lora_towers else "backbone."
    used = _rebase(task.used_parameters(loaded), inner)
    for name, param in model.named_parameters():
        if "lora_" in name or "original_module" in name or not any(name.startswith(p) for p in used):
            continue
        if not name.startswith(inner):
            component, relative = HEAD, name
        else:
            relative = name[len(inner):]
            component = adapter.tower_of(backbone, relative) or PROJECTIONS
        setting = settings.get(component, _FROZEN)
        if setting.mode == "full":
            param.requires_grad_(True)
        elif setting.mode == "last-n" and not relative.startswith(towers[component].blocks + "."):
            # above the blocks (final norms, pooler) trains with them; below (embeddings) does not
            param.requires_grad_(not any(part in relative for part in adapter.below_blocks))
    for name, setting in settings.items():
        if setting.mode == "last-n":
            for block in blocks_at(backbone, towers[name].blocks)[-(setting.layers or 0):]:
                block.requires_grad_(True)
    chosen = ", ".join(f"{name} {setting}" for name, setting in settings.items())
    return f"per component: {chosen}; components not named are frozen"


def _check_towers(task: Task, loaded: Loaded, settings: dict[str, TowerSetting], towers: dict[str, Any],
                  backbone: nn.Module) -> None:
    unknown = sorted(set(settings) - set(towers) - {PROJECTIONS, HEAD})
    if unknown:
        raise ConfigError(f"--towers names {', '.join(unknown)}, which this model does not have; its components: "
                          f"{', '.join([*towers, PROJECTIONS, HEAD])}")
    used = task.used_parameters(loaded)
    for name, setting in settings.items():
        if name in (PROJECTIONS, HEAD):
            if setting.mode not in ("frozen", "full"):
                raise ConfigError(f"{name} is either frozen or full, not {setting}")
            continue
        prefix = "backbone." + towers[name].prefix + "."
        if setting.mode != "frozen" and not any(prefix.startswith(p) or p.startswith(prefix) for p in used):
            raise ConfigError(f"task {task.name!r} does not use the {name} tower, so it cannot train; "
                              "set it to frozen or leave it out")
        depth = len(blocks_at(backbone, towers[name].blocks))
        if setting.mode == "last-n" and not 1 <= (setting.layers or 0) <= depth:
            raise ConfigError(f"{name}=last-n:{setting.layers}: the {name} tower has {depth} blocks")
    trained = {setting.mode for name, setting in settings.items() if name != HEAD} - {"frozen"}
    beside = [f"{name}={setting}" for name, setting in settings.items()
              if name != HEAD and setting.mode not in ("frozen", "lora")
              and not (setting.mode == "full" and name in towers)]
    if "lora" in trained and beside:
        raise ConfigError(f"a LoRA tower combines with frozen towers, towers trained in full (kept whole beside the "
                          f"adapters) and a trained head only, not with {', '.join(beside)} (adapter/ would not hold "
                          "those weights); use lora or full on it, or last-n without lora")


def _rebase(prefixes: list[str], inner: str) -> list[str]:
    """Parameter prefixes written against the plain backbone, moved under a PEFT wrapper when there is one."""
    return [inner + p[len("backbone."):] if p.startswith("backbone.") else p for p in prefixes]


def _wrap_lora(model: nn.Module, targets: str | list[str], options: LoraOptions, to_save: list[str]) -> None:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=targets, bias="none", modules_to_save=to_save or None)
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`: nothing the user can change.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.backbone = get_peft_model(backbone_of(model), config)


def _is_backbone_only(task: Task, loaded: Loaded) -> bool:
    """True when the task's probe parameters live inside the backbone (then LoRA alone trains)."""
    return all(p.startswith("backbone.") for p in task.probe_parameters(loaded))


def is_peft(loaded: Loaded) -> bool:
    return hasattr(loaded.model.backbone, "merge_and_unload")


def peft_backbone(loaded: Loaded) -> PeftModel:
    """The PEFT wrapper that is ``loaded.model.backbone`` when ``is_peft(loaded)``."""
    return cast("PeftModel", loaded.model.backbone)


def export(task: Task, loaded: Loaded, directory: Path, *, consume: bool = False) -> None:
    """Write ``directory`` (the run's ``model/``): plain-transformers weights; LoRA also keeps its adapter.

    For LoRA the adapter goes to ``directory/adapter`` (loadable with ``PeftModel.from_pretrained``),
    and the merged weights to ``directory`` itself. The in-memory model is left untouched, unless
    ``consume``: then LoRA merges in place instead of merging a copy, so exporting costs no second
    set of weights (a run's peak memory would otherwise be set here, not in training).
    """
    import copy
    import dataclasses

    if not is_peft(loaded):
        task.save(loaded, directory)
        return
    # peft annotates save_directory as str; it only passes it to os.makedirs and os.path.join.
    peft_backbone(loaded).save_pretrained(directory / "adapter")  # type: ignore[arg-type]
    merged = copy.copy(loaded.model)  # shallow: shares the head, replaces only the backbone attribute
    merged._modules = dict(loaded.model._modules)
    backbone = peft_backbone(loaded) if consume else copy.deepcopy(peft_backbone(loaded))
    merged.backbone = backbone.merge_and_unload()
    task.save(dataclasses.replace(loaded, model=merged), directory)  # the task state travels too
    if consume:
        loaded.model = merged  # what is left is the plain merged model, not a PEFT wrapper
