"""The one example type every format reader produces and every task consumes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from modaltune.data.fields import is_field_name, is_media_name, known_names


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


class Example:
    """One example: an ``id`` saying where it came from (``pairs.jsonl:12``, ``cats/001.jpg``), named
    ``values`` (text, label, question, answers, and whatever fields a family registers) and ``media``
    references by name (``{"image": path}``, ``{"audio": path}``; later video, several images).

    Registered field names read as attributes (``example.label``; None when absent), and the
    constructor takes them as keywords (``Example(id="a", image=path, label="cat")``): media names go
    to ``media``, the others to ``values``. An unregistered keyword is an error, so a typo does not
    become a silently empty field. ``extra`` keeps a manifest's columns that no field claims.
    Examples are immutable; `replace` makes a changed copy.
    """

    __slots__ = ("id", "values", "media", "extra")
    id: str
    values: Mapping[str, Any]
    media: Mapping[str, Path]
    extra: Mapping[str, Any]

    def __init__(self, id: str, *, values: Mapping[str, Any] | None = None, media: Mapping[str, Path] | None = None,
                 extra: Mapping[str, Any] | None = None, **named: Any) -> None:
        vals = dict(values or {})
        refs = {k: Path(v) for k, v in (media or {}).items()}
        for name, value in named.items():
            if not is_field_name(name):
                raise TypeError(f"Example has no field {name!r}; registered fields: {', '.join(known_names())}")
            if value is None:
                continue
            if is_media_name(name):
                refs[name] = Path(value)
            else:
                vals[name] = value
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "values", vals)
        object.__setattr__(self, "media", refs)
        object.__setattr__(self, "extra", dict(extra or {}))

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not slots: registered fields read as None when absent.
        if not name.startswith("__") and is_field_name(name):
            return self.get(name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def get(self, name: str, default: Any = None) -> Any:
        """The value or media reference named ``name`` (or, for a field no reader knew, the manifest
        column of that name kept in ``extra``), or ``default``."""
        if name in self.values:
            return self.values[name]
        if name in self.media:
            return self.media[name]
        return self.extra.get(name, default)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"examples are immutable; use example.replace({name}=...)")

    def replace(self, **changes: Any) -> Example:
        """A copy with ``changes`` (field names as keywords; None removes a field)."""
        values = dict(self.values)
        media = dict(self.media)
        for name in changes:
            values.pop(name, None)
            media.pop(name, None)
        new_id = changes.pop("id", self.id)
        extra = changes.pop("extra", self.extra)
        return Example(new_id, values=values, media=media, extra=extra, **changes)

    def _key(self) -> tuple:
        return (self.id, _frozen(dict(self.values)), tuple(sorted((k, str(v)) for k, v in self.media.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Example) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        parts = [f"id={self.id!r}"] + [f"{k}={v!r}" for k, v in {**self.media, **self.values}.items()]
        return f"Example({', '.join(parts)})"

    def __reduce__(self) -> tuple:
        # DataLoader workers pickle examples; __setattr__ is closed, so rebuild through __init__.
        return (_rebuild, (self.id, dict(self.values), dict(self.media), dict(self.extra)))


def _rebuild(id: str, values: dict[str, Any], media: dict[str, Path], extra: dict[str, Any]) -> Example:
    return Example(id, values=values, media=media, extra=extra)


#: The name the code base grew up with; every reader produces `Example`s.
Row = Example


@dataclass(frozen=True)
class BadRow:
    """A row that failed validation, with a stable reason code (see `data.validate.REASONS`)."""

    id: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason, "detail": self.detail}
