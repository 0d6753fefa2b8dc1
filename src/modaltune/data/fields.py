"""Typed fields: the named pieces of an example that a task reads.

A task declares what it reads as a tuple of fields (``classify``: a media field taking an image or
an audio clip, and a label). Each field type owns three things:

* **parsing** a manifest value (``parse``): the JSON types it accepts, how it is normalised (labels
  are stripped, answers become a tuple), media paths resolved inside the manifest's folder;
* **emptiness** and its reason code (``empty_reason``: an empty caption is ``empty_caption``);
* the **manifest columns** that fill it (``caption`` fills ``text``, ``answer`` fills ``answers``).

Fields are found by column in a registry, so a family with data of a new shape (boxes,
conversations) registers its field from its own module and every reader, the validator and the
`Example` container pick it up without an edit here or there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modaltune.data.augment import Geometry


class FieldError(ValueError):
    """A value that does not fit its field; ``reason`` is a code from ``data.validate.REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Field:
    """A value field (text, label, question, answers …) of an example.

    ``name`` is the example attribute (``row.label``); ``shown`` how messages call it (captioning
    shows ``text`` as ``caption``); ``columns`` the lower-cased manifest columns that fill it, the
    first one canonical.
    """

    name: str
    columns: tuple[str, ...] = ()
    shown: str = ""
    empty_reason: str = "missing_field"
    #: JSON types a manifest value may have, and how a message says so.
    types: tuple[type, ...] = (str,)
    type_words: str = "string"
    #: Whether the value names a media file (an `Example.media` entry) rather than being the value.
    media: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not self.columns:
            object.__setattr__(self, "columns", (self.name,))
        if not self.shown:
            object.__setattr__(self, "shown", self.name)

    def named(self, shown: str, empty_reason: str | None = None) -> Field:
        """This field as a task calls it: ``text.named("caption", "empty_caption")``."""
        return replace(self, shown=shown, empty_reason=empty_reason or self.empty_reason)

    def parse(self, value: Any, *, root: Path, column: str | None = None) -> Any:
        """A manifest value (of ``column``, for messages) → the example's value (None stays None);
        `FieldError` when it cannot be."""
        if value is None:
            return None
        if not isinstance(value, self.types) or (isinstance(value, bool) and bool not in self.types):
            raise FieldError("bad_json", f"{column or self.columns[0]!r} must be a {self.type_words}, "
                                         f"got {type(value).__name__}{self._type_hint(value)}")
        return self.convert(value)

    def convert(self, value: Any) -> Any:
        return str(value)

    def _type_hint(self, value: Any) -> str:
        return ""

    def present(self, example: Any) -> bool:
        return example.get(self.name) is not None

    def problem(self, example: Any) -> FieldError | None:
        """Why ``example`` cannot be used for this field (absent or empty), or None."""
        value = example.get(self.name)
        if value is None:
            return FieldError("missing_field", f"no {self.shown!r} value")
        if self.is_empty(value):
            return FieldError(self.empty_reason, f"{self.shown!r} is empty")
        return None

    def is_empty(self, value: Any) -> bool:
        return isinstance(value, str) and not value.strip()

    def transform(self, value: Any, geometry: Geometry) -> Any:
        """The value after the example's image was cropped/resized/flipped as ``geometry`` says. A
        field of image coordinates (boxes, points) maps them; the default keeps the value (the very
        object: `augment_example` takes an unchanged identity to mean "nothing moved")."""
        return value


@dataclass(frozen=True)
class TextField(Field):
    types: tuple[type, ...] = (str, int, float)

    def _type_hint(self, value: Any) -> str:
        return "; write one line per caption" if isinstance(value, list) else ""


@dataclass(frozen=True)
class LabelField(Field):
    """A class name. Numbers and booleans are accepted (class ids); stray spaces are stripped, since
    ``"cat "`` must not become a class of its own."""

    types: tuple[type, ...] = (str, int, float, bool)
    type_words: str = "string or number"

    def convert(self, value: Any) -> Any:
        return str(value).strip()


@dataclass(frozen=True)
class AnswersField(Field):
    """Every annotator's answer to a question: one string or a list (official VQA ``{"answer": …}``
    objects included), kept as a tuple."""

    types: tuple[type, ...] = (str, int, float, list)
    type_words: str = "string or list of strings"

    def convert(self, value: Any) -> Any:
        if not isinstance(value, list):
            return (str(value),)  # a single answer (CSV cells are always single answers)
        answers = []
        for item in value:
            if isinstance(item, dict) and "answer" in item:  # the official VQA annotation layout
                item = item["answer"]
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                raise FieldError("bad_json", "'answers' must be a list of strings (or of {\"answer\": ...} "
                                             f"objects), got an item of type {type(item).__name__}")
            answers.append(str(item))
        return tuple(answers)

    def problem(self, example: Any) -> FieldError | None:
        value = example.get(self.name)
        if value is None:
            return FieldError("missing_field", f"no {self.shown!r} value (column answer or answers)")
        if not value:
            return FieldError(self.empty_reason, "no answer is given")
        if any(not str(v).strip() for v in value):
            return FieldError(self.empty_reason, f"{self.shown!r} is empty")
        return None


@dataclass(frozen=True)
class MediaField(Field):
    """A reference to a media file of one of ``kinds`` (each a decoder kind: ``image``, ``audio``).

    A manifest value is a path relative to the manifest's folder that must stay inside it; the
    example keeps it in ``media`` under the kind's name. A task field with several kinds (classify
    takes an image or an audio clip) is satisfied by a reference of any one of them.
    """

    kinds: tuple[str, ...] = ()
    type_words: str = "relative path string"

    def __post_init__(self) -> None:
        if not self.kinds:
            object.__setattr__(self, "kinds", (self.name,))
        if not self.columns:
            object.__setattr__(self, "columns", self.kinds)
        if not self.shown:
            object.__setattr__(self, "shown", " or ".join(self.kinds))
        object.__setattr__(self, "media", True)

    def parse(self, value: Any, *, root: Path, column: str | None = None) -> Any:
        value = super().parse(value, root=root, column=column)
        if value is None or not value.strip():
            return None  # an empty path is a missing field, judged by validation against the task's needs
        resolved = inside_root(value.strip(), root)
        if resolved is None:
            raise FieldError(
                "path_escapes_root",
                f"{column or self.columns[0]} path {value!r} points outside {root}; media paths must be relative to "
                f"the manifest's folder and stay inside it")
        return resolved

    def present(self, example: Any) -> bool:
        return any(kind in example.media for kind in self.kinds)

    def problem(self, example: Any) -> FieldError | None:
        found = [kind for kind in self.kinds if kind in example.media]
        if not found:
            return FieldError("missing_field", f"no {self.shown!r} value")
        if len(found) > 1:
            return FieldError("missing_field", f"both {' and '.join(found)} are given, but this task takes one "
                                               f"{self.shown} per example; keep one of the columns")
        return None


def inside_root(value: str, root: Path) -> Path | None:
    """``root / value`` with symlinks resolved, or None if it is absolute or resolves outside ``root``."""
    value = value.replace("\\", "/")  # manifests written on Windows
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive:
        return None
    try:
        resolved = (root / value).resolve()
    except (OSError, RuntimeError):  # a symlink loop: it cannot lead anywhere inside root either
        return None
    return resolved if resolved.is_relative_to(root) else None


# ---- the built-in fields and the registry ------------------------------------------------------

IMAGE = MediaField("image")
AUDIO = MediaField("audio")
TEXT = TextField("text", columns=("text", "caption"), empty_reason="empty_text")
LABEL = LabelField("label", empty_reason="empty_label")
QUESTION = Field("question", empty_reason="empty_question")
ANSWERS = AnswersField("answers", columns=("answers", "answer"), empty_reason="empty_answer")
#: What a dual encoder's non-text tower takes: an image (CLIP, SigLIP) or an audio clip (CLAP).
IMAGE_OR_AUDIO = MediaField("media", kinds=("image", "audio"))

_BY_NAME: dict[str, Field] = {}
_BY_COLUMN: dict[str, Field] = {}


def register_field(f: Field) -> Field:
    """Make ``f`` known to every reader (its columns) and to `Example` (its name); returns it.

    A media field registers one entry per kind. Two fields may not claim one column or name.
    """
    entries = [MediaField(kind) for kind in f.kinds] if isinstance(f, MediaField) and len(f.kinds) > 1 else [f]
    for entry in entries:
        if entry.name in _BY_NAME and _BY_NAME[entry.name] != entry:
            raise ValueError(f"a field named {entry.name!r} is registered already")
        for column in entry.columns:
            if column in _BY_COLUMN and _BY_COLUMN[column].name != entry.name:
                raise ValueError(f"column {column!r} is claimed by field {_BY_COLUMN[column].name!r} already")
    for entry in entries:
        _BY_NAME[entry.name] = entry
        for column in entry.columns:
            _BY_COLUMN[column] = entry
    return f


for _builtin in (IMAGE, AUDIO, TEXT, LABEL, QUESTION, ANSWERS):
    register_field(_builtin)


def field_named(name: str) -> Field | None:
    return _BY_NAME.get(name)


def field_for_column(column: str) -> Field | None:
    """The registered field a manifest column fills (matched case- and space-insensitively)."""
    return _BY_COLUMN.get(column.strip().lower())


def is_media_name(name: str) -> bool:
    f = _BY_NAME.get(name)
    return f is not None and f.media


def is_field_name(name: str) -> bool:
    return name in _BY_NAME


def known_names() -> list[str]:
    return sorted(_BY_NAME)


def as_fields(require: Iterable[Field | str]) -> tuple[Field, ...]:
    """Fields from a task's declaration; a plain name is the registered field of that name (so
    ``("image", "label")`` still works wherever fields are asked for)."""
    out = []
    for item in require:
        if isinstance(item, Field):
            out.append(item)
            continue
        found = _BY_NAME.get(item)
        if found is None:
            raise ValueError(f"unknown field {item!r}; registered: {', '.join(sorted(_BY_NAME))}")
        out.append(found)
    return tuple(out)


def media_kinds(fields: Sequence[Field]) -> tuple[str, ...]:
    """Every media kind the fields accept, in order."""
    return tuple(kind for f in fields if isinstance(f, MediaField) for kind in f.kinds)


def needs(fields: Sequence[Field], name: str) -> bool:
    return any(f.name == name or (isinstance(f, MediaField) and name in f.kinds) for f in fields)


def check_predict_rows(fields: Sequence[Field], task_name: str, rows: Iterable[Any]) -> None:
    """Rows given to ``predict`` fit the task: each file of a media kind it takes, and a question on
    every row where it answers one (the PyTorch and ONNX paths say it the same way)."""
    from modaltune.errors import ConfigError, DataError

    rows = list(rows)
    taken = media_kinds(fields)
    for row in rows:
        wrong = [kind for kind in row.media if kind not in taken]
        if wrong:
            raise DataError(f"{row.id} is an {wrong[0]} file, but task {task_name} takes {' or '.join(taken)} files")
    if needs(fields, "question") and not all(row.question and row.question.strip() for row in rows):
        raise ConfigError(f"task {task_name} answers a question about each image: pass --question \"...\"")


def describe(fields: Sequence[Field]) -> str:
    """``image or audio, label``: what a task needs, as a message says it."""
    return ", ".join(f.shown for f in fields)
