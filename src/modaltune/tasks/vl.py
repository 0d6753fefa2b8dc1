"""Plumbing shared by the vision-language families (`vqa`, `caption`): loading through the Auto
classes, finding each encoder/decoder stack for ``last-n``, the parameter groups every strategy
needs, token layouts for teacher forcing, and generation.

Everything here reads the model's structure instead of naming architectures, so a new
image-text checkpoint of the same shape works without a code change; where an architecture needs
its own recipe (BLIP's question-encoder/answer-decoder VQA) the task says so explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from modaltune.errors import ConfigError, ModaltuneError
from modaltune.models.base import ATTENTION_PROJECTIONS, StructuralAdapter, backbone_of, blocks_at, hf_config
from modaltune.tasks.base import Loaded, ModelOptions, Task, load_error, read_meta, unwrap, write_meta

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: Attention projections LoRA wraps, in every block stack of the model.
LORA_PATTERN = rf".*\.({ATTENTION_PROJECTIONS})$"
#: Parameters below the first block of a stack: frozen by last-n, like CLIP's embeddings.
_BELOW_BLOCKS = ("embed", "pre_layrnorm", "pre_layernorm")


def load_pretrained(source: str | Path, auto_classes: tuple[str, ...], *, scratch: bool, trust_remote_code: bool,
                    task: str, options: ModelOptions | None = None) -> tuple[nn.Module, Any]:
    """Model + processor through the first Auto class that knows the checkpoint's architecture."""
    import transformers
    from transformers import AutoConfig, AutoProcessor

    source = str(source)
    kwargs = {"trust_remote_code": trust_remote_code}
    placement = options or ModelOptions()
    try:
        processor = AutoProcessor.from_pretrained(source, **kwargs)
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise load_error(source, exc) from exc
    errors = []
    for name in auto_classes:
        auto = getattr(transformers, name)
        try:
            if scratch:
                # Only the architecture is read: the pretrained weights are never opened.
                return auto.from_config(config, **kwargs, **placement.kwargs(from_config=True)), processor
            return auto.from_pretrained(source, **kwargs, **placement.kwargs()), processor
        except ValueError as exc:  # "Unrecognized configuration class ... for this kind of AutoModel"
            errors.append(f"{name}: {str(exc).splitlines()[0]}")
        except OSError as exc:
            raise ModaltuneError(f"could not load model {source!r}: {exc}") from exc
    raise ConfigError(
        f"model {source!r} (model_type {config.model_type!r}) cannot do task {task}: none of "
        f"{', '.join(auto_classes)} supports it.\n  " + "\n  ".join(errors)
    )


def stacks(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Every block stack (outermost ModuleLists named like ``layers``), by their dotted path."""
    backbone = unwrap(model)
    towers = StructuralAdapter().towers(backbone)
    if not towers:
        raise ConfigError(f"found no transformer block stack in {type(backbone).__name__}; "
                          "last-n needs one (use full, lora or linear-probe)")
    return {tower.blocks: blocks_at(backbone, tower.blocks) for tower in towers.values()}


def top_parameter_names(backbone: nn.Module, prefix: str = "backbone.") -> list[str]:
    """Parameters neither in a block nor below the blocks: heads, poolers, projections, final norms."""
    stack_prefixes = tuple(name + "." for name in stacks(backbone))
    names = []
    for name, _ in unwrap(backbone).named_parameters():
        if name.startswith(stack_prefixes) or any(part in name for part in _BELOW_BLOCKS):
            continue
        names.append(prefix + name)
    return names


def output_head_prefixes(backbone: nn.Module, prefix: str = "backbone.") -> list[str]:
    """The language-model head: the module holding the output embeddings and its siblings (BLIP's
    prediction transform). A weight tied to the input embeddings is listed under the embeddings by
    ``named_parameters`` and so stays frozen: the probe trains the head on top of frozen features."""
    model = unwrap(backbone)
    head = None
    # The model itself, or the decoder inside it (BlipForQuestionAnswering keeps its head there).
    for module in model.modules():
        get = getattr(module, "get_output_embeddings", None)
        head = get() if callable(get) else None
        if head is not None:
            break
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no output head to probe")
    for name, module in model.named_modules():
        if module is head:
            parent = name.rsplit(".", 1)[0] if "." in name else name
            # BLIP's cls.predictions.decoder -> cls.predictions (transform + bias); GIT's output -> output.
            return [f"{prefix}{parent}."]
    raise ConfigError(f"could not locate the output head of {type(model).__name__}")


class StackedBlocksTask(Task):
    """Strategy plumbing shared by the vision-language tasks: ``last-n`` trains the last blocks of
    every stack the model has, ``full`` everything, LoRA wraps the attention projections; ``save``
    writes the model as plain transformers does, with the task and its state in ``modaltune.json``."""

    def blocks(self, loaded: Loaded) -> dict[str, list[nn.Module]]:
        return stacks(backbone_of(loaded.model))

    def top_parameters(self, loaded: Loaded) -> list[str]:
        return top_parameter_names(backbone_of(loaded.model))

    def used_parameters(self, loaded: Loaded) -> list[str]:
        return ["backbone."]

    def lora_targets(self, loaded: Loaded) -> str:
        return LORA_PATTERN

    def save(self, loaded: Loaded, directory: Path) -> None:
        """model/ as plain transformers saves it, plus the task and its state (generation settings...)."""
        directory.mkdir(parents=True, exist_ok=True)
        hf_model(backbone_of(loaded.model)).save_pretrained(directory)
        loaded.processor.save_pretrained(directory)
        write_meta(directory, {"task": self.name, "state": loaded.state})


def hf_model(backbone: nn.Module) -> PreTrainedModel:
    """The Hugging Face model a task model's backbone is (under its PEFT wrapper, if any), typed as one.

    Every vision-language backbone comes from ``load_pretrained``'s Auto classes, so it is one."""
    return cast("PreTrainedModel", unwrap(backbone))


class _Generator(Protocol):
    def generate(self, **kwargs: Any) -> torch.Tensor: ...


def generate(backbone: nn.Module, **kwargs: Any) -> torch.Tensor:
    """``backbone.generate(**kwargs)``: the generated ids (a PEFT wrapper forwards the call to its model).

    Only called for models the task checked can generate when it loaded them; without
    ``return_dict_in_generate`` transformers returns the ids tensor."""
    return cast(_Generator, backbone).generate(**kwargs)


#: Entries of a task's state that a run directory written before ``modaltune.json`` had a ``"state"``
#: key kept at its top level.
_LEGACY_STATE_KEYS = ("mode", "answers", "generation")


def saved_state(source: str | Path) -> dict[str, Any]:
    """The task state saved beside a model (``modaltune.json``'s ``"state"``; for a directory saved
    before it had one, the same entries at the top level); empty for a hub name or a base model."""
    path = Path(source)
    meta = read_meta(path) if path.is_dir() else None
    if not meta:
        return {}
    if "state" in meta:
        return dict(meta["state"])
    return {key: meta[key] for key in _LEGACY_STATE_KEYS if key in meta}


def state_entry(loaded: Loaded, key: str) -> Any:
    """``loaded.state[key]``, or an error saying the model was not loaded through this task."""
    try:
        return loaded.state[key]
    except KeyError:
        raise ModaltuneError(f"the model has no {key!r} in its task state: load it (or attach to it) through "
                             "the task that uses it") from None


def image_embedding(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """One vector per image from the vision tower (mean of its last hidden states): what the domain-
    shift measurement compares."""
    model = unwrap(model)
    for path in ("vision_model", "git.image_encoder", "vision_tower", "vision_encoder"):
        tower: Any = model
        for part in path.split("."):
            tower = getattr(tower, part, None)
        if tower is not None:
            out = tower(pixel_values=pixel_values)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            return hidden.float().mean(dim=1)
    raise ConfigError(f"{type(model).__name__}: no vision tower found for image embeddings")


def text_config(model: nn.Module) -> Any:
    config = unwrap(model).config
    return getattr(config, "text_config", None) or config


def check_generation(num_beams: int | None, max_new_tokens: int | None) -> None:
    if num_beams is not None and num_beams < 1:
        raise ConfigError(f"--num-beams must be at least 1, got {num_beams}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")


@dataclass(frozen=True)
class Generation:
    """How a generative task decodes: beam size and the longest output (``state["generation"]``)."""

    num_beams: int
    max_new_tokens: int

    @classmethod
    def resolve(cls, num_beams: int | None, max_new_tokens: int | None, saved: Mapping[str, Any],
                default_max_new_tokens: int) -> Generation:
        """Settings given to the task win; else those the model was saved with (``saved``: its state);
        else the defaults."""
        stored = saved.get("generation") or {}
        beams = num_beams if num_beams is not None else stored.get("num_beams")
        tokens = max_new_tokens if max_new_tokens is not None else stored.get("max_new_tokens")
        return cls(num_beams=int(beams) if beams is not None else 1,
                   max_new_tokens=int(tokens) if tokens is not None else default_max_new_tokens)

    @classmethod
    def of(cls, loaded: Loaded) -> Generation:
        return cls(**state_entry(loaded, "generation"))

    def state(self) -> dict[str, int]:
        return asdict(self)

    def kwargs(self) -> dict[str, Any]:
        """``generate`` keyword arguments: greedy or beam search, never sampling (evaluation repeats)."""
        return {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "do_sample": False}


def text_positions(model: nn.Module, tokenizer: Any) -> int:
    """How many text tokens the model can take: its position embeddings (and the tokenizer's limit)."""
    limits = [getattr(text_config(model), "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    found = [int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
    return min(found) if found else 512


def check_generation_room(model: nn.Module, tokenizer: Any, max_new_tokens: int, prompt: int = 1) -> None:
    room = text_positions(model, tokenizer)
    if prompt + max_new_tokens > room:
        raise ConfigError(f"--max-new-tokens {max_new_tokens} does not fit: the model takes {room} text tokens, "
                          f"{prompt} of them the prompt; use at most {room - prompt}")


@dataclass(frozen=True)
class Tokens:
    """The ids a teacher-forced layout needs: the start token, the end token and padding."""

    bos: int
    eos: int
    pad: int


def special_tokens(model: nn.Module, tokenizer: Any) -> Tokens:
    """BLIP starts its decoder at ``bos`` and stops at ``[SEP]``; other models say it in their
    generation config or tokenizer."""
    model = unwrap(model)
    text = text_config(model)
    if hf_config(model).model_type == "blip":
        return Tokens(text.bos_token_id, text.sep_token_id, text.pad_token_id)
    gen = getattr(model, "generation_config", None)

    def first(*values: Any) -> int | None:
        for v in values:
            if isinstance(v, (list, tuple)):
                v = v[0] if v else None
            if v is not None:
                return int(v)
        return None

    bos = first(getattr(gen, "bos_token_id", None), getattr(gen, "decoder_start_token_id", None),
                tokenizer.bos_token_id, tokenizer.cls_token_id)
    eos = first(getattr(gen, "eos_token_id", None), tokenizer.eos_token_id, tokenizer.sep_token_id)
    pad = first(tokenizer.pad_token_id, getattr(gen, "pad_token_id", None), eos)
    if bos is None or eos is None:
        raise ConfigError(f"{type(model).__name__}: cannot tell its start/end tokens for generation")
    assert pad is not None  # falls back to eos
    return Tokens(bos, eos, pad)


def text_ids(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
            for t in texts]


def prefix_lm_batch(prompts: list[list[int]], targets: list[list[int]] | None,
                    tokens: Tokens) -> dict[str, torch.Tensor]:
    """``prompt + target`` right-padded, with labels only on the target (the models shift them)."""
    seqs = [p + (t if targets is not None else []) for p, t in zip(prompts, targets or [[]] * len(prompts))]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokens.pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        if targets is not None:
            start = len(prompts[i])
            labels[i, start:len(seq)] = torch.tensor(seq[start:])
    batch = {"input_ids": ids, "attention_mask": mask}
    if targets is not None:
        batch["labels"] = labels
    return batch


def pad_generated(sequences: list[torch.Tensor], width: int) -> torch.Tensor:
    """Generated ids of one batch as a fixed-width tensor (-1 = nothing), so batches concatenate."""
    out = torch.full((len(sequences), width), -1, dtype=torch.long)
    for i, seq in enumerate(sequences):
        seq = seq[:width]
        out[i, :len(seq)] = seq
    return out


def decode(tokenizer: Any, generated: torch.Tensor, tokens: Tokens) -> list[str]:
    """Text of each fixed-width row, stopping at the end token and skipping special tokens."""
    texts = []
    for row in generated.long().tolist():
        ids = []
        for t in row:
            if t < 0 or t == tokens.eos:
                break
            if t not in (tokens.bos, tokens.pad):
                ids.append(t)
        texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts
