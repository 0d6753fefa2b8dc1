"""The task-agnostic data layer: read user data into `Row`s, decode and validate media, split, augment."""

from modaltune.data.augment import augment_image
from modaltune.data.media import MediaError, load_audio, load_image
from modaltune.data.readers import discover_splits, read_rows
from modaltune.data.rows import BadRow, Row
from modaltune.data.split import train_val_split
from modaltune.data.validate import DEFAULT_MAX_AUDIO_SECONDS, REASONS, DataReport, load_dataset, validate_rows

__all__ = [
    "DEFAULT_MAX_AUDIO_SECONDS",
    "REASONS",
    "BadRow",
    "DataReport",
    "MediaError",
    "Row",
    "augment_image",
    "discover_splits",
    "load_audio",
    "load_dataset",
    "load_image",
    "read_rows",
    "train_val_split",
    "validate_rows",
]
