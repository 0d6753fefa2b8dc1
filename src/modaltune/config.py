"""The run config: one pydantic model, loaded from YAML and overridden by flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modaltune.data.validate import DEFAULT_MAX_AUDIO_SECONDS
from modaltune.errors import ConfigError

if TYPE_CHECKING:
    from modaltune.tasks.base import ModelOptions

Strategy = Literal["auto", "zero-shot", "linear-probe", "last-n", "full", "lora", "scratch", "towers"]

#: Learning rates that work for each strategy when the user gives none: a fresh head wants a large
#: step, pretrained blocks a small one so they are not wrecked in the first epoch.
DEFAULT_LR = {"linear-probe": 1e-3, "last-n": 1e-4, "full": 2e-5, "lora": 5e-4, "scratch": 5e-4, "zero-shot": 0.0,
              "towers": 1e-4}
#: The 50/50 rule: half of each batch rehearses the old task unless told (or advised) otherwise.
DEFAULT_REPLAY_RATIO = 0.5


#: Epochs when none are given (and the advisor is not asked).
DEFAULT_EPOCHS = 3


class TrainConfig(BaseModel):
    """Everything that defines a run. ``modaltune train --config RUN/config.yaml`` reruns it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: str
    model: str
    data: str
    val: str | None = None
    output: str = "runs/run"
    strategy: Strategy = "full"
    layers: int | None = Field(default=None, ge=1)
    #: strategy towers: each component's setting, e.g. "vision=last-n:2,text=frozen,projections=full"
    towers: str | None = None
    #: How the base model's weights are loaded (None: transformers' defaults).
    model_dtype: Literal["fp32", "bf16", "fp16", "auto"] | None = None
    device_map: str | None = None
    attn_implementation: str | None = None
    epochs: int | None = Field(
        default=None, ge=1, description=f"default {DEFAULT_EPOCHS}, or the advisor's with strategy auto")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float | None = Field(default=None, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    grad_checkpointing: bool = Field(default=False, description="recompute block activations in backward")
    compile: bool = Field(default=False, description="torch.compile each transformer block")
    seed: int = 0
    balance: Literal["none", "oversample", "class-weights"] = "none"
    augment: bool = False
    early_stopping: int | None = Field(default=None, ge=1, description="patience, in evaluations")
    eval_every: int | None = Field(default=None, ge=1, description="steps; default once per epoch")
    save_every: int | None = Field(default=None, ge=1, description="steps; default once per epoch")
    keep_last: int = Field(default=2, ge=1)
    nan_policy: Literal["raise", "skip"] = "raise"
    max_bad_steps: int = Field(default=5, ge=1, description="with nan_policy=skip: abort after this many in a row")
    skip_bad: bool = False
    data_format: str | None = Field(default=None, description=(
        "reader of --data and --val instead of sniffing: vqa | coco-captions | csv | jsonl | folder"))
    max_audio_seconds: float | None = Field(default=DEFAULT_MAX_AUDIO_SECONDS, gt=0, description=(
        "longer audio clips are bad rows (audio_too_long); null: no limit"))
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    prompt_template: str = "a photo of a {}."
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    workers: int | None = Field(default=None, ge=0, description="DataLoader worker processes (default: auto)")
    eval_batch_size: int = Field(default=64, ge=1)
    zero_shot_baseline: bool = True
    feature_cache: bool = Field(default=True, description="cache the frozen part's outputs when the strategy allows")
    cache_dir: str | None = Field(default=None, description="feature cache folder (default: the user cache)")
    trust_remote_code: bool = False
    # ---- generation (caption, generative vqa); None = the model's saved setting or the task default ----
    num_beams: int | None = Field(default=None, ge=1, description="beam size when generating text (default 1)")
    max_new_tokens: int | None = Field(default=None, ge=1, description="longest generated answer/caption")
    # ---- keeping what the base model knew (all optional, all composable) ----
    old_task: str | None = Field(default=None, description="data of the original task: scored before and after")
    old_task_type: str | None = Field(default=None, description="task of the old data (default: from its columns)")
    replay: str | None = Field(default=None, description="old-task data mixed into every training batch")
    replay_ratio: float | None = Field(default=None, gt=0, lt=1, description=(
        "share of each batch taken from --replay (default 0.5, the 50/50 rule; with strategy auto, the "
        "advisor's); old rows come on top of the --batch-size target rows"))
    wise_ft: float | Literal["auto"] | None = Field(
        default=None, description="interpolate base -> fine-tuned weights at this alpha, or sweep it ('auto')")
    max_forgetting: float | None = Field(
        default=None, ge=0, description="wise-ft auto: largest allowed old-task drop (absolute metric points)")
    l2sp: float | None = Field(default=None, ge=0, description="strength of the L2 pull towards the base weights")

    @field_validator("data_format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None:
            from modaltune.data.readers import reader_names

            if value not in reader_names():
                raise ValueError(f"unknown data format {value!r}; use one of: {', '.join(reader_names())}")
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.layers is not None and self.strategy != "last-n":
            raise ValueError(f"layers is only used by strategy last-n (strategy is {self.strategy!r})")
        if self.strategy == "last-n" and self.layers is None:
            raise ValueError("strategy last-n needs layers (how many of the last blocks per encoder train)")
        if (self.towers is not None) != (self.strategy == "towers"):
            raise ValueError("strategy towers and towers go together: --strategy towers --towers "
                             "'vision=last-n:2,text=frozen,projections=full'")
        if self.towers is not None:
            from modaltune.strategies import parse_towers

            parse_towers(self.towers)  # a malformed setting is a config error before anything loads
        if isinstance(self.wise_ft, float) and not 0.0 <= self.wise_ft <= 1.0:
            raise ValueError("wise_ft must be between 0 (base weights) and 1 (fine-tuned weights), or 'auto'; "
                             f"got {self.wise_ft}")
        if self.max_forgetting is not None and (self.wise_ft != "auto" or self.old_task is None):
            raise ValueError("max_forgetting is the budget of wise_ft auto: it needs wise_ft: auto and old_task")
        if self.strategy in ("zero-shot", "scratch") and (self.wise_ft is not None or self.l2sp):
            why = "does not train" if self.strategy == "zero-shot" else "does not start from them"
            raise ValueError(f"wise_ft and l2sp pull towards the pretrained weights; strategy {self.strategy!r} {why}")
        if self.strategy == "zero-shot" and self.replay is not None:
            raise ValueError("replay mixes old data into training; strategy zero-shot does not train")
        return self

    def model_options(self) -> ModelOptions:
        """The loading options of the base model (dtype, device map, attention kernel)."""
        from modaltune.tasks.base import ModelOptions

        return ModelOptions(self.model_dtype, self.device_map, self.attn_implementation)

    @property
    def replay_share(self) -> float:
        """The replay ratio in force: the given one, else the 50/50 rule."""
        return self.replay_ratio if self.replay_ratio is not None else DEFAULT_REPLAY_RATIO

    @property
    def num_workers(self) -> int:
        """Decoding workers: by default one per two CPUs beyond the first two, at most 4.

        On a GPU box that keeps decoding off the training process. With 2 CPUs the data path alone
        runs ~10x faster than a training step of even a small CLIP (benchmarks/RESULTS.md), and a
        worker would only compete with the step for the same cores, so none is started.
        """
        if self.workers is not None:
            return self.workers
        cpus = os.cpu_count() or 1
        return min(4, max(0, (cpus - 2) // 2))

    @property
    def num_epochs(self) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.strategy == "auto":
            raise ValueError("strategy auto has no learning rate until the advisor has resolved it")
        return DEFAULT_LR[self.strategy]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "config"
        got = f" (got {item['input']!r})" if "input" in item and item["loc"] else ""
        lines.append(f"  {where}: {item['msg']}{got}")
    return "\n".join(lines)


def build_config(file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """YAML file (if any) first, then every override that is not None; errors name the field."""
    values: dict[str, Any] = {}
    source = "flags"
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must be a mapping of field: value")
        values.update(loaded)
        source = f"{path} + flags"
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
