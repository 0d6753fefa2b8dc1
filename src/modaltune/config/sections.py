"""The sections of a run config. Each field's ``description`` is its help text on the command line.

A field's *flat name* is the key it had in the flat config of earlier releases (``lr``,
``data_format``) and names its classic flag (``--lr``, ``--data-format``); it is the field's own
name unless ``json_schema_extra`` says ``flat``. ``flag`` overrides the classic flag's spelling.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modaltune.data.validate import DEFAULT_MAX_AUDIO_SECONDS

Strategy = Literal["auto", "zero-shot", "linear-probe", "last-n", "full", "lora", "scratch", "towers"]


def _extra(flat: str | None = None, flag: str | None = None) -> dict[str, Any]:
    return {k: v for k, v in (("flat", flat), ("flag", flag)) if v is not None}


class Section(BaseModel):
    """A group of related settings: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    """The base model and how its weights load."""

    name: str = Field(description="hub name or local directory of the base model", json_schema_extra=_extra("model"))
    dtype: Literal["fp32", "bf16", "fp16", "auto"] | None = Field(
        default=None, json_schema_extra=_extra("model_dtype"),
        description="dtype the base model's weights load in (auto: the checkpoint's; default: transformers')")
    device_map: str | None = Field(default=None, description="where the weights go, e.g. auto (needs accelerate), cpu")
    attn_implementation: str | None = Field(
        default=None, description="attention kernel: eager | sdpa | flash_attention_2")
    quantize: Literal["4bit", "8bit"] | None = Field(default=None, description=(
        "load the base weights quantized with bitsandbytes (QLoRA; CUDA only), for LoRA strategies"))
    trust_remote_code: bool = Field(default=False, description="allow model code from the hub",
                                    json_schema_extra=_extra(flag="--trust-remote-code"))


class DataSection(Section):
    """Where the examples come from and how they are read."""

    train: str = Field(description="training data (folder with train/ val/, CSV, JSONL, COCO captions, VQA json)",
                       json_schema_extra=_extra("data"))
    val: str | None = Field(default=None, description="validation data (default: the data's val/ or a seeded split)")
    format: str | None = Field(default=None, json_schema_extra=_extra("data_format"), description=(
        "reader of the training and validation data instead of sniffing: vqa | coco-captions | csv | jsonl | folder"))
    val_fraction: float = Field(default=0.2, gt=0, lt=1, description="share held out when there is no validation data")
    skip_bad: bool = Field(default=False, description="skip bad rows (listed in data_report.json)")
    max_audio_seconds: float | None = Field(default=DEFAULT_MAX_AUDIO_SECONDS, gt=0, description=(
        "audio clips longer than this many seconds are bad rows (audio_too_long); null: no limit"))
    box_format: Literal["xywh", "xyxy", "cxcywh"] | None = Field(default=None, description=(
        "how a boxes JSONL writes its boxes: xywh (corner and size, the default) | xyxy | cxcywh"))
    normalized: bool = Field(default=False, description=(
        "a boxes JSONL's boxes are fractions of the image's width and height (0..1), not pixels"))
    balance: Literal["none", "oversample", "class-weights"] = Field(default="none", description="class balancing")
    augment: bool = Field(default=False, description="random resized crop + flip")
    workers: int | None = Field(default=None, ge=0, description="DataLoader worker processes (default: auto)")
    prefetch: bool = Field(default=True, description=(
        "without worker processes, prepare the next training batch in a background thread while the step computes"))

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None:
            from modaltune.data.readers import reader_names

            if value not in reader_names():
                raise ValueError(f"unknown data format {value!r}; use one of: {', '.join(reader_names())}")
        return value

    @property
    def reader_options(self) -> dict[str, Any]:
        """The reading options that were set, for the reader that takes them (`data.readers`)."""
        return {k: v for k, v in (("box_format", self.box_format), ("normalized", self.normalized or None))
                if v is not None}

    @property
    def num_workers(self) -> int:
        """Decoding workers: by default one per two CPUs beyond the first two, at most 4.

        On a GPU box that keeps decoding off the training process. With 2 CPUs the data path alone
        runs ~10x faster than a training step of even a small CLIP (benchmarks/RESULTS.md), and a
        worker would only compete with the step for the same cores, so none is started; the
        training loop then prepares the next batch in a thread while the step computes (``prefetch``).
        """
        if self.workers is not None:
            return self.workers
        cpus = os.cpu_count() or 1
        return min(4, max(0, (cpus - 2) // 2))


class OptimSection(Section):
    """The optimiser and the batch it steps on."""

    lr: float | None = Field(default=None, gt=0, description="learning rate (default: the strategy's own)")
    optimizer: Literal["adamw", "sgd"] = Field(default="adamw", description="optimiser")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="sgd momentum")
    weight_decay: float = Field(default=0.01, ge=0, description="decoupled weight decay (not on biases and norms)")
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="clip the gradient norm (null: no clipping)")
    batch_size: int = Field(default=16, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    precision: Literal["fp32", "bf16"] = Field(default="fp32", description="training precision")


class ScheduleSection(Section):
    """How long training runs and when it evaluates and saves."""

    epochs: int | None = Field(
        default=None, ge=1, description="epochs (default 3, or the advisor's with strategy auto)")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    name: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", json_schema_extra=_extra("schedule"), description="learning-rate schedule (all with warmup)")
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1, description="share of the steps spent warming up")
    eval_every: int | None = Field(default=None, ge=1, description="evaluate every N steps (default: each epoch)")
    save_every: int | None = Field(default=None, ge=1, description="checkpoint every N steps (default: each epoch)")
    early_stopping: int | None = Field(default=None, ge=1, description="patience, in evaluations")


class StrategySection(Section):
    """What trains."""

    name: Strategy = Field(default="full", json_schema_extra=_extra("strategy"), description="what trains")
    layers: int | None = Field(default=None, ge=1, description="last-n: how many of the last blocks per encoder train")
    towers: str | None = Field(default=None, json_schema_extra=_extra(flag="--towers --components"), description=(
        "towers: each component on its own, e.g. 'vision=last-n:2,text=frozen,projections=full' "
        "(modes frozen | full | last-n:N | lora; components: the model's towers, projections, head; "
        "chat models: vision, projector, language, e.g. --strategy lora --components "
        "'vision=frozen,projector=full,language=lora')"))
    lora_rank: int = Field(default=8, ge=1, description="LoRA rank")
    lora_alpha: int = Field(default=16, ge=1, description="LoRA scaling alpha")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="LoRA dropout")


class TransferSection(Section):
    """Keeping what the base model knew (all optional, all composable)."""

    old_task: str | None = Field(
        default=None, description="data of the base model's original task: scored before/after (forgetting)")
    old_task_type: str | None = Field(default=None, description="task of the old data (default: from its columns)")
    replay: str | None = Field(default=None, description="old-task data mixed into every batch (rehearsal)")
    replay_ratio: float | None = Field(default=None, gt=0, lt=1, description=(
        "share of each batch from the replay data, on top of the batch-size target rows "
        "(default 0.5, the 50/50 rule; with strategy auto, the advisor's)"))
    wise_ft: float | Literal["auto"] | None = Field(
        default=None, description="WiSE-FT: alpha in [0,1] (0 = base, 1 = fine-tuned) or 'auto'")
    max_forgetting: float | None = Field(default=None, ge=0, description="wise-ft auto: largest old-task drop allowed")
    l2sp: float | None = Field(default=None, ge=0, description="L2-SP strength: pull towards the pretrained weights")
    zero_shot_baseline: bool = Field(default=True, description="score the base model on the validation data first")


class RuntimeSection(Section):
    """Where the run goes and how it executes (none of it changes what is learnt, but the seed)."""

    output: str = Field(default="runs/run", description="run directory")
    seed: int = Field(default=0, description="seed of the split, the shuffling and the initialisation")
    feature_cache: bool = Field(default=True, json_schema_extra=_extra(flag="--cache/--no-cache"), description=(
        "cache frozen-layer outputs (linear-probe, last-n without augment)"))
    cache_dir: str | None = Field(default=None, description="feature cache folder (default: the user cache)")
    keep_last: int = Field(default=2, ge=1, description="checkpoints to keep (the best is always kept)")
    nan_policy: Literal["raise", "skip"] = Field(default="raise", description="what a non-finite loss does")
    max_bad_steps: int = Field(default=5, ge=1, description="skip policy: abort after this many in a row")
    compile: bool = Field(default=False, description="torch.compile the blocks")
    grad_checkpointing: bool = Field(default=False, description="trade compute for activation memory")
    eval_batch_size: int = Field(default=64, ge=1, description="batch size of evaluation and caching")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list, description=(
        "experiment trackers that also get the run, comma-separated: tensorboard,mlflow,wandb (default: none)"))
    push_to_hub: str | None = Field(default=None, description=(
        "after training, upload model/ (with its model card) to this hub repository, user-or-org/name"))

    @field_validator("report_to", mode="before")
    @classmethod
    def _tracker_list(cls, value: Any) -> Any:
        """``tensorboard,mlflow`` as the command line gives it; ``none`` (or null) for none."""
        if value is None:
            return []
        if isinstance(value, str):
            names = [v.strip().lower() for v in value.split(",") if v.strip()]
            return [] if names == ["none"] else list(dict.fromkeys(names))
        return value


#: The fixed sections of a run config, in the order config.yaml lists them.
SECTIONS: dict[str, type[Section]] = {
    "model": ModelSection, "data": DataSection, "strategy": StrategySection, "optim": OptimSection,
    "schedule": ScheduleSection, "transfer": TransferSection, "runtime": RuntimeSection,
}


def flat_name(name: str, field: Any) -> str:
    """The key ``field`` (named ``name`` in its section) had in the flat config."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return str(extra.get("flat", name))
