"""The run config: nested sections (model, data, strategy, optim, schedule, transfer, runtime) plus
the options each task contributes; loaded from YAML (nested, or the flat layout of earlier runs),
overridden by flags and ``--section.key value`` options, resolved, and written to ``config.yaml``."""

from modaltune.config.loading import build_config, overrides_from_args, parse_value
from modaltune.config.sections import (
    SECTIONS,
    DataSection,
    ModelSection,
    OptimSection,
    RuntimeSection,
    ScheduleSection,
    Section,
    Strategy,
    StrategySection,
    TransferSection,
)
from modaltune.config.train import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_REPLAY_RATIO,
    TrainConfig,
    UnknownKey,
    config_model,
    flat_paths,
    task_sections,
)

__all__ = [
    "DEFAULT_EPOCHS", "DEFAULT_LR", "DEFAULT_REPLAY_RATIO", "SECTIONS", "DataSection", "ModelSection",
    "OptimSection", "RuntimeSection", "ScheduleSection", "Section", "Strategy", "StrategySection", "TrainConfig",
    "TransferSection", "UnknownKey", "build_config", "config_model", "flat_paths", "overrides_from_args",
    "parse_value", "task_sections",
]
