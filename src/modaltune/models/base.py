"""The adapter contract, the registry by ``config.model_type`` and the structural fallback."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, cast

from torch import nn

from modaltune.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: Names of the ModuleLists that hold a stack's transformer blocks (CLIP/BLIP "layers", BERT/ViLT
#: "layer", GPT-2 "h", timm-style "blocks").
STACK_NAMES = ("layers", "layer", "h", "blocks")
#: Attention projection module names LoRA wraps: separate q/k/v (+ output) projections in either
#: naming scheme, fused qkv (BLIP's vision tower) and its output projection.
ATTENTION_PROJECTIONS = (r"query|key|value|q_proj|k_proj|v_proj|out_proj|o_proj|qkv|"
                         r"self_attn\.projection|attention\.output\.dense|crossattention\.output\.dense")


@dataclass(frozen=True)
class Tower:
    """One encoder (or decoder) of a model: its module path and the path of its block list."""

    name: str
    prefix: str  # e.g. "vision_model": every parameter under it belongs to the tower (or to a deeper one)
    blocks: str  # e.g. "vision_model.encoder.layers": the ordered transformer blocks


class ModelAdapter:
    """Architecture facts of a model type. Subclasses list their ``model_types`` and towers."""

    model_types: ClassVar[tuple[str, ...]] = ()
    #: (name, prefix, blocks) of the towers this type always has.
    tower_specs: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    #: Name parts of a tower's parameters that sit below its first block (patch/token embeddings,
    #: CLIP's pre-norm): last-n keeps them frozen, and trains what sits above the blocks.
    below_blocks: ClassVar[tuple[str, ...]] = ("embed", "pre_layrnorm", "pre_layernorm")

    def towers(self, model: nn.Module) -> dict[str, Tower]:
        """The model's towers by name, in a stable order."""
        return {name: Tower(name, prefix, blocks) for name, prefix, blocks in self.tower_specs
                if _has_module(model, blocks)}

    def blocks(self, model: nn.Module) -> dict[str, list[nn.Module]]:
        """Each tower's blocks, first to last."""
        return {name: blocks_at(model, tower.blocks) for name, tower in self.towers(model).items()}

    def below_modules(self, model: nn.Module, tower: str) -> list[nn.Module]:
        """The modules of ``tower`` below its first block (``below_blocks``), outermost ones only."""
        spec = self.towers(model)[tower]
        found: list[str] = []
        for path, _ in model.named_modules():
            if not path.startswith(spec.prefix + ".") or path.startswith(spec.blocks + "."):
                continue
            if any(path.startswith(f + ".") for f in found):
                continue
            if any(part in path.rsplit(".", 1)[-1] for part in self.below_blocks):
                found.append(path)
        return [model.get_submodule(path) for path in found]

    def tower_of(self, model: nn.Module, parameter: str) -> str | None:
        """The tower a parameter name (relative to the model) belongs to: the deepest prefix wins."""
        best: Tower | None = None
        for tower in self.towers(model).values():
            if parameter.startswith(tower.prefix + ".") and (best is None or len(tower.prefix) > len(best.prefix)):
                best = tower
        return best.name if best else None

    def component_modules(self, model: nn.Module, name: str) -> list[str]:
        """Module paths that make up tower ``name``: what PEFT's ``modules_to_save`` trains whole when
        the tower trains in full beside LoRA adapters elsewhere."""
        return [self.towers(model)[name].prefix]

    def lora_pattern(self, model: nn.Module, towers: list[str] | None = None) -> str:
        """A PEFT ``target_modules`` regex for the attention projections inside ``towers`` (all if None)."""
        chosen = self.towers(model)
        paths = [re.escape(chosen[name].blocks) for name in (towers or list(chosen))]
        return rf"({'|'.join(paths)})\.\d+\.(.*\.)?({ATTENTION_PROJECTIONS})$"


class StructuralAdapter(ModelAdapter):
    """For model types no adapter knows: towers are the outermost block stacks found by shape."""

    def towers(self, model: nn.Module) -> dict[str, Tower]:
        found: dict[str, Tower] = {}
        for path, module in model.named_modules():
            if not isinstance(module, nn.ModuleList) or path.rsplit(".", 1)[-1] not in STACK_NAMES or not len(module):
                continue
            if any(path.startswith(tower.blocks + ".") for tower in found.values()):
                continue  # a list inside a block (an MLP's layers) is not a stack of its own
            parts = path.split(".")
            # "vision_model.encoder.layers" → "vision_model"; "git.encoder.layer" → "git"; "h" → ""
            prefix = ".".join(parts[:-2] if len(parts) > 1 and parts[-2] == "encoder" else parts[:-1])
            found[prefix or path] = Tower(prefix or path, prefix or path, path)
        return found


_ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: the adapter for each of ``cls.model_types`` (a type claimed twice is an error)."""
    for model_type in cls.model_types:
        if model_type in _ADAPTERS:
            owner = type(_ADAPTERS[model_type]).__name__
            raise ValueError(f"model type {model_type!r} already has the adapter {owner}")
    instance = cls()
    for model_type in cls.model_types:
        _ADAPTERS[model_type] = instance
    return cls


def registered_model_types() -> list[str]:
    _builtin()
    return sorted(_ADAPTERS)


def adapter_for_type(model_type: str) -> ModelAdapter | None:
    """The adapter registered for ``model_type`` (a config's ``model_type``), if any: what a loader
    asks before the model exists."""
    _builtin()
    return _ADAPTERS.get(model_type)


def registered_adapters() -> list[ModelAdapter]:
    """Every registered adapter, once each."""
    _builtin()
    return list({id(a): a for a in _ADAPTERS.values()}.values())


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter of ``model`` (a plain transformers model) by its config's model_type, else structural."""
    _builtin()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = _ADAPTERS.get(model_type or "")
    if adapter is not None and adapter.towers(model):
        return adapter
    fallback = StructuralAdapter()
    if not fallback.towers(model):
        raise ConfigError(f"found no transformer block stack in {type(model).__name__}; strategies that "
                          "re-train blocks need one (use full, lora or linear-probe)")
    return fallback


def blocks_at(model: nn.Module, path: str) -> list[nn.Module]:
    """The blocks of the stack (a ModuleList or Sequential) at ``path``, first to last; a module that is
    not a stack (a chat model's projector) is one block."""
    module = model.get_submodule(path)
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return [module]
    # get_submodule is typed as returning a plain Module, which is not iterable to the type checker.
    return list(cast(Iterable[nn.Module], module))


def backbone_of(model: nn.Module) -> nn.Module:
    """``model.backbone``: a task model's Hugging Face model (PEFT-wrapped under LoRA).

    torch types attribute access on a Module as ``Tensor | Module``; a backbone is always a Module.
    """
    return cast(nn.Module, model.backbone)


def hf_config(model: nn.Module) -> PretrainedConfig:
    """``model.config`` of a Hugging Face model, typed as the config it is."""
    return cast("PretrainedConfig", model.config)


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


_discovered = False


def _builtin() -> None:
    """Import every module of this package once (each registers its adapters): no hand-kept list."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import modaltune.models as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"{package.__name__}.{module.name}")
