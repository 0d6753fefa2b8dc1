"""Chat vision-language models (LLaVA, LLaVA-NeXT, Qwen2-VL/2.5-VL, Idefics3/SmolVLM, PaliGemma):
where their three components live.

Every one of them is a vision tower, a projector that turns image features into language-model
inputs, and a language model with its output head. Only the module paths differ (transformers 5
keeps them under ``model.``): the adapter names them, finds each component's ordered blocks, says
which parameters the forward pass never reads, and builds LoRA targets that reach exactly the
components asked for. A plain ``["q_proj", "v_proj"]`` would also adapt the vision tower, whose
attention uses the same names (research/families.md §3); the patterns here are anchored on the
component's own blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from modaltune.errors import ConfigError
from modaltune.models.base import STACK_NAMES, ModelAdapter, Tower, blocks_at, register_adapter

VISION, PROJECTOR, LANGUAGE = "vision", "projector", "language"
COMPONENTS = (VISION, PROJECTOR, LANGUAGE)
#: The output head sits beside the language model, not under it; it belongs to the language component.
LM_HEAD = "lm_head"


@dataclass(frozen=True)
class Layout:
    """Module paths of the three components of one architecture (relative to the HF model)."""

    vision: str
    projector: str
    language: str


class ChatAdapter(ModelAdapter):
    """The components of a chat VLM. Subclasses give ``layout``; everything else is found by shape."""

    layout: ClassVar[Layout]
    #: Vision-tower modules the language model never sees (a pooling head, the post-norm of a tower
    #: whose hidden states are read before it), by name under the vision prefix.
    unused_vision: ClassVar[tuple[str, ...]] = ()

    def towers(self, model: nn.Module) -> dict[str, Tower]:
        found: dict[str, Tower] = {}
        for name in COMPONENTS:
            prefix = getattr(self.layout, name)
            if not _has(model, prefix):
                return {}
            # The projector has no block stack: it is one block (models.base.blocks_at).
            stack = prefix if name == PROJECTOR else _stack_under(model, prefix)
            if stack is None:
                return {}
            found[name] = Tower(name, prefix, stack)
        return found

    def tower_of(self, model: nn.Module, parameter: str) -> str | None:
        if parameter.startswith(LM_HEAD + "."):
            return LANGUAGE
        return super().tower_of(model, parameter)

    def component_modules(self, model: nn.Module, name: str) -> list[str]:
        """The modules that make up a component (trained whole by ``modules_to_save`` beside LoRA)."""
        modules = super().component_modules(model, name)
        return [*modules, LM_HEAD] if name == LANGUAGE and _has(model, LM_HEAD) else modules

    def unused_parameters(self, model: nn.Module) -> list[str]:
        """Parameter names the forward pass of a chat turn never reads (they get no gradient)."""
        prefixes = tuple(f"{self.layout.vision}.{name}." for name in self.unused_vision)
        return [n for n, _ in model.named_parameters() if n.startswith(prefixes)]

    def lora_pattern(self, model: nn.Module, towers: list[str] | None = None) -> str:
        """Every linear layer inside the blocks of ``towers`` (default: the language model), and every
        linear layer of the projector when it is named: a regex PEFT matches against full module names."""
        chosen = self.towers(model)
        names = towers or [LANGUAGE]
        unknown = [n for n in names if n not in chosen]
        if unknown:
            raise ConfigError(f"LoRA on {', '.join(unknown)}: this model's components are {', '.join(chosen)}")
        pieces: list[str] = []
        for name in names:
            if name == PROJECTOR:
                pieces.extend(re.escape(path) for path in _linears(model, chosen[name].prefix))
                continue
            root = chosen[name].blocks
            for path in _linears(model, root):
                # one piece per leaf for all blocks: a 32-block model's pattern stays a few lines long
                rest = path[len(root) + 1:].split(".", 1)[1]
                pieces.append(rf"{re.escape(root)}\.\d+\.{re.escape(rest)}")
        if not pieces:
            raise ConfigError(f"no linear layer to adapt in {', '.join(names)}")
        # Listed by path, not by leaf name: the vision tower uses the same leaf names as the LM.
        return "(" + "|".join(dict.fromkeys(pieces)) + ")"


class LlavaAdapter(ChatAdapter):
    model_types = ("llava", "llava_next", "llava_onevision", "vipllava", "mistral3")
    layout = Layout("model.vision_tower", "model.multi_modal_projector", "model.language_model")
    # A pooling head (SigLIP towers) and the post-norm never reach the projector.
    unused_vision = ("head", "post_layernorm")

    def unused_parameters(self, model: nn.Module) -> list[str]:
        """Also the vision layers above ``vision_feature_layer`` (LLaVA reads the penultimate one)."""
        unused = super().unused_parameters(model)
        tower = self.towers(model).get(VISION)
        layer = getattr(model.config, "vision_feature_layer", -1)
        if tower is None:
            return unused
        depth = len(blocks_at(model, tower.blocks))
        chosen = layer if isinstance(layer, (list, tuple)) else [layer]
        # hidden_states[k] is the output of block k-1 (index 0 is the embeddings)
        needed = max(k if k >= 0 else depth + 1 + k for k in chosen)
        above = tuple(f"{tower.blocks}.{i}." for i in range(needed, depth))
        return unused + [n for n, _ in model.named_parameters() if above and n.startswith(above)]


class PaliGemmaAdapter(ChatAdapter):
    model_types = ("paligemma",)
    layout = Layout("model.vision_tower", "model.multi_modal_projector", "model.language_model")
    unused_vision = ("head",)  # PaliGemma reads SigLIP's last hidden state, not its pooled output


class Qwen2VLAdapter(ChatAdapter):
    model_types = ("qwen2_vl", "qwen2_5_vl")
    # The merger (patch merging + MLP) is Qwen's projector; it lives inside the vision module.
    layout = Layout("model.visual", "model.visual.merger", "model.language_model")


class Idefics3Adapter(ChatAdapter):
    model_types = ("idefics3", "smolvlm")
    layout = Layout("model.vision_model", "model.connector", "model.text_model")


for _adapter in (LlavaAdapter, PaliGemmaAdapter, Qwen2VLAdapter, Idefics3Adapter):
    register_adapter(_adapter)


def chat_adapter(model: nn.Module) -> ChatAdapter:
    """The chat adapter of a plain transformers model, or a ConfigError naming what is supported."""
    from modaltune.models.base import adapter_for_type

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = adapter_for_type(model_type or "")
    if not isinstance(adapter, ChatAdapter) or not adapter.towers(model):
        types = sorted(t for cls in (LlavaAdapter, PaliGemmaAdapter, Qwen2VLAdapter, Idefics3Adapter)
                       for t in cls.model_types)
        raise ConfigError(f"{type(model).__name__} (model_type {model_type!r}) is not a chat vision-language model "
                          f"modaltune knows the components of; supported types: {', '.join(types)}")
    return adapter


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _stack_under(model: nn.Module, prefix: str) -> str | None:
    """The outermost block list (``layers``/``blocks``...) under ``prefix``."""
    for path, module in model.named_modules():
        if (path.startswith(prefix + ".") and isinstance(module, nn.ModuleList) and len(module)
                and path.rsplit(".", 1)[-1] in STACK_NAMES):
            return path
    return None


def _linears(model: nn.Module, root: str) -> list[str]:
    return [path for path, module in model.named_modules() if isinstance(module, nn.Linear)
            and path.startswith(root + ".")]
