"""The run config: fixed sections plus one section per task that declares ``Options``.

``TrainConfig`` is the static part (what type checkers see); :func:`config_model` is the class that
validates a whole config, with the task sections of the registry added as fields. Raw settings stay
as the user gave them (``optim.lr`` may be null); :meth:`TrainConfig.resolved` fills in the defaults
that depend on the strategy, and that resolved config is what a run writes to ``config.yaml``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from modaltune.config.sections import (
    SECTIONS,
    DataSection,
    ModelSection,
    OptimSection,
    RuntimeSection,
    ScheduleSection,
    StrategySection,
    TransferSection,
    flat_name,
)

if TYPE_CHECKING:
    from typing_extensions import Self

    from modaltune.tasks.base import ModelOptions

#: Learning rates that work for each strategy when the user gives none: a fresh head wants a large
#: step, pretrained blocks a small one so they are not wrecked in the first epoch.
DEFAULT_LR = {"linear-probe": 1e-3, "last-n": 1e-4, "full": 2e-5, "lora": 5e-4, "scratch": 5e-4, "zero-shot": 0.0,
              "towers": 1e-4}
#: The 50/50 rule: half of each batch rehearses the old task unless told (or advised) otherwise.
DEFAULT_REPLAY_RATIO = 0.5
#: Epochs when none are given (and the advisor is not asked).
DEFAULT_EPOCHS = 3


class UnknownKey(ValueError):
    """A config key (or dotted option) that no section has; the message suggests the nearest ones."""


def task_sections() -> dict[str, type[BaseModel]]:
    """Registered task name -> its ``Options`` class, for every task that declares one."""
    from modaltune.tasks.base import list_tasks, task_class

    return {name: options for name in list_tasks() if (options := task_class(name).Options) is not None}


def flat_paths() -> dict[str, str]:
    """Flat key of the old one-level config -> dotted path (``lr`` -> ``optim.lr``, ``model`` -> ``model.name``)."""
    return {flat_name(field, info): f"{section}.{field}"
            for section, cls in SECTIONS.items() for field, info in cls.model_fields.items()}


def task_option_names() -> dict[str, list[str]]:
    """Field name of a task section -> the tasks that declare it (``num_beams`` -> caption, vqa)."""
    out: dict[str, list[str]] = {}
    for task, options in task_sections().items():
        for field in options.model_fields:
            out.setdefault(field, []).append(task)
    return out


def section_fields(section: str) -> dict[str, Any] | None:
    """The fields of a fixed or task section (None: no such section)."""
    cls = SECTIONS.get(section) or task_sections().get(section)
    return None if cls is None else dict(cls.model_fields)


def _suggest(key: str) -> str:
    """' did you mean ...?' for ``key`` (flat, dotted or a section), or ''."""
    flat = flat_paths()
    tasks = task_sections()
    candidates = {**flat, **{p: p for p in flat.values()}}  # flat key or dotted path -> dotted path
    for task, options in tasks.items():
        for field in options.model_fields:
            candidates[f"{task}.{field}"] = f"{task}.{field}"
            candidates.setdefault(field, f"{task}.{field}")
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = sorted({path for path in candidates.values() if path.rsplit(".", 1)[-1] == leaf and path != key})
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    if not close and "." in key:
        close = difflib.get_close_matches(leaf, list(candidates), n=3, cutoff=0.6)
    names = same_leaf or [candidates[c] if c == candidates[c] else f"{c} ({candidates[c]})" for c in close]
    return f"; did you mean {' or '.join(repr(n) for n in names)}?" if names else ""


def _unknown(key: str) -> UnknownKey:
    sections = ", ".join([*SECTIONS, *task_sections()])
    return UnknownKey(f"unknown config key {key!r}{_suggest(key) or f' (sections: {sections})'}")


def path_of(key: str, task: str | None) -> str:
    """The dotted path ``key`` sets: a dotted path is checked, a flat key is mapped to its section.

    A task option given flat (``num_beams``) goes to the run's task when it declares it, else to the
    first task that does."""
    if key == "task":
        return key
    if "." in key:
        section, _, field = key.partition(".")
        fields = section_fields(section)
        if fields is None or field not in fields:
            raise _unknown(key)
        return key
    flat = flat_paths()
    if key in flat:
        return flat[key]
    owners = task_option_names().get(key)
    if owners:
        return f"{task if task in owners else owners[0]}.{key}"
    raise _unknown(key)


def nest(values: Mapping[str, Any], task: str | None = None) -> dict[str, Any]:
    """A config mapping in nested form; flat keys of the old one-level config are moved into their sections.

    A flat task option that is null and not the run task's (an old ``config.yaml`` lists
    ``num_beams: null`` for every task) is dropped."""
    task = task if task is not None else cast(Any, values.get("task"))
    tasks = task_sections()
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, BaseModel) and (key in SECTIONS or key in tasks):
            value = value.model_dump()
        if (key in SECTIONS or key in tasks) and isinstance(value, Mapping):
            for field, item in value.items():
                set_path(out, path_of(f"{key}.{field}", task), item)
            continue
        path = path_of(str(key), task)
        section = path.partition(".")[0]
        if value is None and section in tasks and section != task and key not in (*SECTIONS, *tasks):
            continue
        set_path(out, path, value)
    return out


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    if "." not in path:
        tree[path] = value
        return
    section, _, field = path.partition(".")
    node = tree.setdefault(section, {})
    if not isinstance(node, dict):
        node = tree[section] = {}
    node[field] = value


def merge(into: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """``other`` (nested) laid over ``into``, section by section."""
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            into[key].update(value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
    return into


class TrainConfig(BaseModel):
    """Everything that defines a run. ``modaltune train --config RUN/config.yaml`` reruns it.

    Sections: ``model``, ``data``, ``strategy``, ``optim``, ``schedule``, ``transfer``, ``runtime``
    and one per task that declares ``Options`` (``classify``, ``caption``, ``vqa`` …). The flat keys of
    earlier releases (``lr``, ``data_format``) are accepted on input and read as attributes
    (``cfg.lr`` is ``cfg.optim.lr``), so callers of the flat config keep working.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: str = Field(description="what the model learns (a registered task)")
    model: ModelSection
    data: DataSection
    strategy: StrategySection = Field(default_factory=StrategySection)
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    transfer: TransferSection = Field(default_factory=TransferSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)

    @model_validator(mode="before")
    @classmethod
    def _nested(cls, values: Any) -> Any:
        return nest(values) if isinstance(values, Mapping) else values

    @model_validator(mode="after")
    def _check(self) -> Self:
        strategy, transfer = self.strategy, self.transfer
        if strategy.layers is not None and strategy.name != "last-n":
            raise ValueError(f"layers is only used by strategy last-n (strategy is {strategy.name!r})")
        if strategy.name == "last-n" and strategy.layers is None:
            raise ValueError("strategy last-n needs layers (how many of the last blocks per encoder train)")
        # --strategy lora --components '...' is the per-component strategy with LoRA somewhere in it
        if (strategy.towers is not None) != (strategy.name == "towers") and strategy.name != "lora":
            raise ValueError("strategy towers and towers go together: --strategy towers --towers "
                             "'vision=last-n:2,text=frozen,projections=full'")
        if strategy.towers is not None:
            from modaltune.strategies import parse_towers

            parse_towers(strategy.towers)  # a malformed setting is a config error before anything loads
        if isinstance(transfer.wise_ft, float) and not 0.0 <= transfer.wise_ft <= 1.0:
            raise ValueError("wise_ft must be between 0 (base weights) and 1 (fine-tuned weights), or 'auto'; "
                             f"got {transfer.wise_ft}")
        if transfer.max_forgetting is not None and (transfer.wise_ft != "auto" or transfer.old_task is None):
            raise ValueError("max_forgetting is the budget of wise_ft auto: it needs wise_ft: auto and old_task")
        if strategy.name in ("zero-shot", "scratch") and (transfer.wise_ft is not None or transfer.l2sp):
            why = "does not train" if strategy.name == "zero-shot" else "does not start from them"
            raise ValueError(f"wise_ft and l2sp pull towards the pretrained weights; strategy {strategy.name!r} {why}")
        if self.model.quantize is not None and strategy.name not in ("lora", "towers", "zero-shot"):
            raise ValueError(f"quantize {self.model.quantize}: quantized weights cannot be trained directly; use "
                             "strategy lora (QLoRA) or towers with lora components")
        if strategy.name == "zero-shot" and transfer.replay is not None:
            raise ValueError("replay mixes old data into training; strategy zero-shot does not train")
        return self

    # ---- reading ----
    def get(self, path: str) -> Any:
        """The value at a dotted path (``optim.lr``) or flat key (``lr``)."""
        path = path_of(path, self.task)
        section, _, field = path.partition(".")
        node = getattr(self, section) if section in type(self).model_fields else self.task_options(section)
        return getattr(node, field) if field else node

    def task_options(self, task: str | None = None) -> BaseModel | None:
        """The options section of ``task`` (default: the run's), or None when the task declares none."""
        name = task or self.task
        if name in type(self).model_fields:
            return cast(BaseModel, getattr(self, name))
        options = task_sections().get(name)
        return options() if options is not None else None

    def task_option(self, field: str) -> Any:
        """A task option by field name: the run's task's, else that of the task that declares it."""
        owners = task_option_names().get(field, [])
        if not owners:
            return None
        section = self.task_options(self.task if self.task in owners else owners[0])
        return getattr(section, field)

    def model_options(self) -> ModelOptions:
        """The loading options of the base model (dtype, device map, attention kernel)."""
        from modaltune.tasks.base import ModelOptions

        return ModelOptions(self.model.dtype, self.model.device_map, self.model.attn_implementation,
                            self.model.quantize)

    if not TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                if name.startswith("_"):
                    raise
                try:
                    return self.get(name)  # a flat key of the old config
                except UnknownKey:
                    raise AttributeError(f"{type(self).__name__} has no attribute {name!r}") from None

    # ---- resolution: the defaults that depend on the strategy ----
    @property
    def num_workers(self) -> int:
        return self.data.num_workers

    @property
    def num_epochs(self) -> int:
        return self.schedule.epochs if self.schedule.epochs is not None else DEFAULT_EPOCHS

    @property
    def learning_rate(self) -> float:
        if self.optim.lr is not None:
            return self.optim.lr
        if self.strategy.name == "auto":
            raise ValueError("strategy auto has no learning rate until the advisor has resolved it")
        return DEFAULT_LR[self.strategy.name]

    @property
    def replay_share(self) -> float:
        """The replay ratio in force: the given one, else the 50/50 rule."""
        return self.transfer.replay_ratio if self.transfer.replay_ratio is not None else DEFAULT_REPLAY_RATIO

    def resolved(self) -> Self:
        """This config with every default that depends on the strategy filled in: the learning rate,
        the epochs and, when old data is rehearsed, the replay ratio. With strategy auto they stay
        unset until the advisor has spoken (:func:`modaltune.api.follow_advice`).

        A run resolves its config first, so what this machine cannot do (``quantize`` without CUDA)
        is said here, before any data or model is read."""
        from modaltune.tasks.base import check_quantize

        check_quantize(self.model.quantize)
        if self.strategy.name == "auto":
            return self
        updates: dict[str, Any] = {}
        if self.optim.lr is None and self.strategy.name != "zero-shot":  # zero-shot never steps
            updates["optim.lr"] = self.learning_rate
        if self.schedule.epochs is None:
            updates["schedule.epochs"] = self.num_epochs
        if self.transfer.replay is not None and self.transfer.replay_ratio is None:
            updates["transfer.replay_ratio"] = self.replay_share
        return self.with_values(updates) if updates else self

    # ---- changing ----
    def with_values(self, updates: Mapping[str, Any]) -> Self:
        """A re-validated copy with ``updates`` (dotted paths or flat keys) applied."""
        tree = self.model_dump()
        task = updates.get("task", self.task)
        for key, value in updates.items():
            set_path(tree, path_of(key, task), value)
        try:
            return type(self).model_validate(tree)
        except ValidationError as exc:
            from modaltune.config.loading import describe
            from modaltune.errors import ConfigError

            raise ConfigError(describe(exc, "updated config", {})) from None

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """As pydantic's, but ``update`` may use dotted paths or flat keys and the result is validated."""
        if update:
            return self.with_values(update)
        return super().model_copy(deep=deep)

    def flat(self) -> dict[str, Any]:
        """Every setting by dotted path (``{"optim.lr": 1e-4, ...}``)."""
        return {f"{section}.{field}" if isinstance(values, dict) else section: value
                for section, values in self.model_dump().items()
                for field, value in (values.items() if isinstance(values, dict) else [("", values)])}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # The class with the task sections is made at run time, so pickle (worker processes) rebuilds
        # the config from its values instead of looking the class up by name.
        return _rebuild, (self.model_dump(),)


def _rebuild(values: dict[str, Any]) -> TrainConfig:
    return config_model().model_validate(values)


@lru_cache(maxsize=8)
def _model_with(sections: tuple[tuple[str, type[BaseModel]], ...]) -> type[TrainConfig]:
    fields: dict[str, Any] = {
        name: (options, Field(default_factory=options, description=f"options of task {name}"))
        for name, options in sections}
    return cast(type[TrainConfig], create_model("TrainConfig", __base__=TrainConfig, __module__=__name__, **fields))


def config_model() -> type[TrainConfig]:
    """The config class of the tasks registered now: ``TrainConfig`` plus one field per task section."""
    return _model_with(tuple(task_sections().items()))
