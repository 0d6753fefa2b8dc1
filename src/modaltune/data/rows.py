"""The one row type every format reader produces and every task consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One example. `id` says where it came from (``pairs.jsonl:12``, ``cats/001.jpg``) for messages."""

    id: str
    image: Path | None = None
    audio: Path | None = None
    text: str | None = None
    label: str | None = None
    #: Visual question answering: the question and every annotator's answer (one or more).
    question: str | None = None
    answers: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def media(self) -> dict[str, Path]:
        """The row's media references by name (``{"image": path}``, ``{"audio": path}``): what
        batching decodes, each through the decoder registered for its kind."""
        return {name: path for name, path in (("image", self.image), ("audio", self.audio)) if path is not None}


@dataclass(frozen=True)
class BadRow:
    """A row that failed validation, with a stable reason code (see `data.validate.REASONS`)."""

    id: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason, "detail": self.detail}
