"""Visual instruction tuning (``chat``): LLaVA-style chat models learn to answer conversations about images.

The model is any ``AutoModelForImageTextToText`` chat VLM whose components the chat adapter knows
(LLaVA, LLaVA-NeXT, Qwen2-VL/2.5-VL, Idefics3/SmolVLM, PaliGemma; ``models/chat.py``). Conversations
are encoded through the model's own chat template with labels on the assistant turns only
(``tasks/chat_encoding.py``); the loss is the model's token cross-entropy over those labels, and the
trainer normalises it per target token across gradient-accumulation steps (``loss_weight``), so
splitting a batch differently gives the same update.

Strategies, as LLaVA's training stages: ``linear-probe`` trains the projector alone (stage 1);
``--strategy lora --components 'vision=frozen,projector=full,language=lora'`` (or ``full``) is stage 2;
``last-n`` trains the last blocks of the language model (with the projector, final norm and head);
``lora`` puts adapters on every linear layer of the language model.

Evaluation scores the last assistant turn of each conversation: the teacher-forced loss, perplexity
and token accuracy on every assistant token, and the generated answer against the reference, by
answer type: exact match and VQA accuracy for short answers, BLEU, ROUGE-L and CIDEr for long ones.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from modaltune.config.task_options import TaskOptions
from modaltune.data.conversation import CONVERSATION
from modaltune.data.fields import FieldError, MediaField
from modaltune.data.rows import BadRow, Row
from modaltune.errors import ConfigError, ModaltuneError
from modaltune.models.base import backbone_of, blocks_at
from modaltune.models.chat import LANGUAGE, PROJECTOR, chat_adapter
from modaltune.tasks import chat_batch as chat_io
from modaltune.tasks import vl
from modaltune.tasks.base import BackboneModel, Loaded, ModelOptions, Task, register, unwrap, write_meta


@dataclass(frozen=True)
class OptionalImages(MediaField):
    """A conversation's images (``image``, ``image#1``, …, in placeholder order). Optional: a text-only
    conversation is valid chat data (general instruction data mixed in); the conversation field checks
    that the images match its placeholders."""

    def present(self, example: Any) -> bool:
        return True

    def problem(self, example: Any) -> FieldError | None:
        return None


IMAGES = OptionalImages("image", shown="images")
DEFAULT_MAX_NEW_TOKENS = 64
#: Answers of at most this many words are "short" (scored by exact match and VQA accuracy), longer
#: ones "long" (BLEU, ROUGE-L, CIDEr).
SHORT_ANSWER_WORDS = 3
#: Conversations kept for the report (image, prompt, base answer, tuned answer, reference).
SAMPLES = 8


class ChatOptions(TaskOptions):
    max_length: int | None = Field(default=None, ge=8, description=(
        "longest conversation in tokens, image tokens included (default: the model's text positions, at most 2048); "
        "longer rows are dropped as too_long, or cut in their last assistant turn with truncate last-turn"))
    truncate: Literal["drop", "last-turn"] = Field(default="drop", description=(
        "a conversation over max_length: drop it, or cut its last assistant turn (never image tokens)"))
    train_on_prompt: bool = Field(default=False, description=(
        "also train on system and user text (image and padding tokens never carry labels)"))
    chat_template: str | None = Field(default=None, description=(
        "a Jinja chat template file replacing the model's own (saved with the model)"))
    max_new_tokens: int | None = Field(default=None, ge=1, description="longest generated answer (default 64)")
    num_beams: int | None = Field(default=None, ge=1, description="beam size when generating text (default 1)")
    temperature: float | None = Field(default=None, ge=0, description=(
        "sampling temperature when generating (default 0: greedy, so evaluation repeats)"))


@dataclass(frozen=True)
class ChatGeneration:
    """How answers are generated; saved in the model's state, so predict and chat decode as trained."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    num_beams: int = 1
    temperature: float = 0.0

    @classmethod
    def resolve(cls, given: dict[str, Any], saved: dict[str, Any]) -> ChatGeneration:
        stored = saved.get("generation") or {}
        values = {k: given[k] if given.get(k) is not None else stored.get(k) for k in ("max_new_tokens", "num_beams",
                                                                                         "temperature")}
        return cls(**{k: v for k, v in values.items() if v is not None})

    def kwargs(self) -> dict[str, Any]:
        sample = self.temperature > 0
        return {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "do_sample": sample,
                **({"temperature": self.temperature} if sample else {})}


@register("chat")
class ChatTask(Task):
    family = "chat"
    fields = (CONVERSATION, IMAGES)
    primary_metric = "token_accuracy"
    uses_labels = False
    feature_output = "embeds"
    Options = ChatOptions

    def __init__(self, max_length: int | None = None, truncate: str = "drop", train_on_prompt: bool = False,
                 chat_template: str | None = None, max_new_tokens: int | None = None, num_beams: int | None = None,
                 temperature: float | None = None, **options: Any) -> None:
        vl.check_generation(num_beams, max_new_tokens)
        if truncate not in ("drop", "last-turn"):
            raise ConfigError(f"chat.truncate must be drop or last-turn, got {truncate!r}")
        self.max_length = max_length
        self.truncate = truncate
        self.train_on_prompt = train_on_prompt
        self.chat_template = chat_template
        self.generation = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "temperature": temperature}
        self.options = options

    # ---- model -------------------------------------------------------------------------------

    def load(self, source: str | Path, *, scratch: bool = False, trust_remote_code: bool = False,
             options: ModelOptions | None = None) -> Loaded:
        backbone, processor = chat_io.load_model_and_processor(source, scratch=scratch,
                                                               trust_remote_code=trust_remote_code, options=options)
        chat_adapter(backbone)  # a model whose components are unknown is an error now, not at the first batch
        if self.chat_template is not None:  # replaces the model's own, and is saved with the model
            from modaltune.tasks.chat_encoding import load_chat_template

            processor.chat_template = load_chat_template(self.chat_template)
        saved = vl.saved_state(source)
        generation = ChatGeneration.resolve(self.generation, saved)
        limit = vl.text_positions(backbone, processor.tokenizer)
        max_length = self.max_length or (saved.get("encoding") or {}).get("max_length") or min(limit, 2048)
        if max_length > limit:
            raise ConfigError(f"chat.max_length {max_length} is more than the {limit} positions the model takes")
        encoding = {"max_length": int(max_length), "truncate": self.truncate, "train_on_prompt": self.train_on_prompt}
        return Loaded(model=BackboneModel(backbone), processor=processor,
                      state={"generation": asdict(generation), "encoding": encoding})

    def attach(self, other: Loaded) -> Loaded:
        """Scoring (or rehearsing) general chat data on the model being tuned: same model, processor and
        settings (the old data is read as conversations like the target's)."""
        return Loaded(model=other.model, processor=other.processor, meta=dict(other.meta),
                      media_options=dict(other.media_options), state=dict(other.state))

    def save(self, loaded: Loaded, directory: Path) -> None:
        """model/ as plain transformers saves it, with the processor and its chat template, and the
        generation and encoding settings in ``modaltune.json``."""
        directory.mkdir(parents=True, exist_ok=True)
        model = vl.hf_model(backbone_of(loaded.model))
        generation = ChatGeneration(**loaded.state["generation"])
        model.generation_config.max_new_tokens = generation.max_new_tokens  # plain transformers decodes alike
        model.save_pretrained(directory)
        loaded.processor.save_pretrained(directory)
        write_meta(directory, {"task": self.name, "state": loaded.state})

    # ---- data --------------------------------------------------------------------------------

    def collate(self, loaded: Loaded, items: list[tuple[Row, Any]]) -> dict[str, torch.Tensor]:
        """Teacher-forced inputs with labels on the assistant turns, and (prefixed ``gen_``) the prompt
        up to the last assistant turn for generation, left-padded."""
        return chat_io.collate(loaded, items, with_prompt=not loaded.model.training)

    # ---- training and inference --------------------------------------------------------------

    def loss(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean token cross-entropy over this micro-batch's target tokens.

        The output head runs only at the positions that predict a target in some conversation of the
        batch (``logits_to_keep``), not at every image, system and user token: with a real vocabulary
        (32-150 K) the full logits of a batch and their gradient take gigabytes, most of them for
        positions the loss ignores. The model's own loss where its forward cannot keep positions."""
        backbone = backbone_of(loaded.model)
        inputs = chat_io.model_inputs(batch)
        labels = batch["labels"]
        targets = labels[:, 1:]  # the token each position predicts
        keep = (targets != -100).any(dim=0).nonzero().squeeze(1)
        if keep.numel() == 0 or not _keeps_logits(vl.hf_model(backbone)):
            return backbone(**inputs, labels=labels).loss
        logits = backbone(**inputs, logits_to_keep=keep).logits
        kept = targets[:, keep].to(logits.device)
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), kept.flatten(), ignore_index=-100)

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> float:
        """Target tokens in the micro-batch: the trainer weights its mean loss by them, so the step's
        loss is the mean over every target token of the accumulated batch."""
        return float((batch["labels"][:, 1:] != -100).sum())

    def outputs(self, loaded: Loaded, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per conversation: the teacher-forced loss parts over its target tokens and a mean embedding (when
        it has answers to score), and the generated last answer."""
        generation = ChatGeneration(**loaded.state["generation"])
        generated = chat_io.generate(loaded, batch, generation.kwargs(), generation.max_new_tokens)
        if "labels" not in batch:  # predict: questions without answers
            return {"generated": generated}
        backbone = backbone_of(loaded.model)
        inputs = chat_io.model_inputs(batch)
        out = backbone(**inputs, output_hidden_states=True)
        logits = out.logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        mask = targets != -100
        ce = nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
        hidden = out.hidden_states[-1].float()
        attention = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        result = {
            "loss_sum": (ce * mask).sum(dim=1),
            "tokens": mask.sum(dim=1).float(),
            "correct": ((logits.argmax(-1) == targets) & mask).sum(dim=1).float(),
            "embeds": (hidden * attention).sum(1) / attention.sum(1).clamp(min=1),
            "generated": generated,
        }
        return result

    def answers(self, loaded: Loaded, outputs: dict[str, torch.Tensor]) -> list[str]:
        return chat_io.decode(loaded.processor, outputs["generated"])

    def evaluate(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> dict[str, Any]:
        from modaltune.metrics.chat import chat_metrics

        answers = self.answers(loaded, outputs)
        metrics = chat_metrics(outputs, answers, [chat_io.reference(row) for row in rows], SHORT_ANSWER_WORDS)
        metrics["samples"] = [chat_io.sample(row, answer) for row, answer in list(zip(rows, answers))[:SAMPLES]]
        return metrics

    def predict(self, loaded: Loaded, outputs: dict[str, torch.Tensor], rows: list[Row]) -> list[dict]:
        return [{"input": row.id, "answer": answer} for row, answer in zip(rows, self.answers(loaded, outputs))]

    @classmethod
    def chance(cls, rows: list[Row]) -> float:
        return 0.0  # next-token accuracy of a model that knows nothing, over a vocabulary of thousands

    # ---- strategies --------------------------------------------------------------------------

    def blocks(self, loaded: Loaded) -> dict[str, list[nn.Module]]:
        """last-n trains the language model's last blocks: the vision tower stays as pretrained."""
        backbone = unwrap(backbone_of(loaded.model))
        tower = chat_adapter(backbone).towers(backbone)[LANGUAGE]
        return {tower.blocks: blocks_at(backbone, tower.blocks)}  # by path, as every stack task names them

    def top_parameters(self, loaded: Loaded) -> list[str]:
        """Above the language model's blocks: its final norm and output head, and the projector."""
        backbone = unwrap(backbone_of(loaded.model))
        towers = chat_adapter(backbone).towers(backbone)
        language = towers[LANGUAGE]
        names = []
        for name, _ in backbone.named_parameters():
            inside = name.startswith(language.prefix + ".") and not name.startswith(language.blocks + ".")
            if (inside and "embed" not in name) or name.startswith(("lm_head.", towers[PROJECTOR].prefix + ".")):
                names.append(f"backbone.{name}")
        return names

    def used_parameters(self, loaded: Loaded) -> list[str]:
        """Every parameter but those the forward pass never reads (LLaVA's vision layers above the one it
        takes features from, a pooling head): ``full`` trains exactly what gets a gradient."""
        backbone = unwrap(backbone_of(loaded.model))
        unused = set(chat_adapter(backbone).unused_parameters(backbone))
        if not unused:
            return ["backbone."]
        return [f"backbone.{name}" for name, _ in backbone.named_parameters() if name not in unused]

    def probe_parameters(self, loaded: Loaded) -> list[str]:
        """The linear probe of a chat model is LLaVA's stage 1: the projector alone trains."""
        backbone = unwrap(backbone_of(loaded.model))
        return [f"backbone.{chat_adapter(backbone).towers(backbone)[PROJECTOR].prefix}."]

    def usable_rows(self, loaded: Loaded, rows: Sequence[Row]) -> tuple[list[Row], list[BadRow]]:
        """Conversations this model's processor encodes within ``max_length`` (image tokens expanded)."""
        return chat_io.usable(loaded, rows)

    def lora_targets(self, loaded: Loaded) -> str:
        """Every linear layer of the language model's blocks (not the vision tower's, whose attention has
        the same names); ``--components`` reaches the projector and vision tower."""
        backbone = unwrap(backbone_of(loaded.model))
        return chat_adapter(backbone).lora_pattern(backbone, [LANGUAGE])


_KEEPS_LOGITS: dict[type, bool] = {}


def _keeps_logits(model: nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' image-text models do since 4.50)
    with positions on the inputs' device: not a model that ``--model.device-map`` spread over devices,
    where the last hidden states may live elsewhere (its own loss moves what it needs)."""
    cls = type(model)
    if cls not in _KEEPS_LOGITS:
        _KEEPS_LOGITS[cls] = "logits_to_keep" in inspect.signature(model.forward).parameters
    placed = getattr(model, "hf_device_map", None) or {}
    return _KEEPS_LOGITS[cls] and len({str(d) for d in placed.values()}) <= 1


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


__all__ = ["ChatGeneration", "ChatOptions", "ChatTask", "ModaltuneError", "perplexity"]
