"""Manifest records (one dict per line, caption or question) → `Row`s: column names, value types, paths.

Shared by every reader whose rows come from key → value records (CSV, JSONL, COCO captions, VQA).
Problems of one record become `BadRow`s; a column the task needs missing from the whole file is a
`DataError` (every row would fail).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NamedTuple

from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError

# Manifest column (lower-cased) → Row field. When both text and caption are present,
# text wins and caption is kept in Row.extra (see make_row).
COLUMN_FIELDS = {"image": "image", "audio": "audio", "label": "label", "text": "text", "caption": "text",
                 "question": "question", "answer": "answers", "answers": "answers"}

#: Row fields that hold a media path, each named as its decoder's kind.
MEDIA_FIELDS = ("image", "audio")

# JSON types a manifest value may have, per Row field. Labels may be numbers or booleans (class ids).
_ALLOWED_TYPES: dict[str, tuple[type, ...]] = {
    "image": (str,),
    "audio": (str,),
    "label": (str, int, float, bool),
    "text": (str, int, float),
    "question": (str,),
    "answers": (str, int, float, list),
}


class LineError(NamedTuple):
    """A record that is broken before it can become a row (the caller adds the row id)."""

    reason: str
    detail: str


def rows_from_records(
    records: Iterable[tuple[int | str, dict[str, Any] | LineError]],
    *,
    path: Path,
    id_prefix: str,
    require: tuple[str, ...],
    check_columns_seen: bool = True,
) -> tuple[list[Row], list[BadRow], Path]:
    """Rows of the manifest ``path`` from its ``(line key, record)`` pairs; ids are ``<name>:<key>``.

    Media paths resolve against the manifest's folder. With ``check_columns_seen``, a required
    column that no record has raises `DataError` (CSV checks its header instead).
    """
    root = path.parent.resolve()
    name = f"{id_prefix}{path.name}"
    rows: list[Row] = []
    bad: list[BadRow] = []
    columns_seen: set[str] = set()
    for key, record in records:
        row_id = f"{name}:{key}"
        if isinstance(record, LineError):
            bad.append(BadRow(row_id, record.reason, record.detail))
            continue
        columns_seen.update(record)
        row = make_row(row_id, record, root)
        if isinstance(row, BadRow):
            bad.append(row)
        else:
            rows.append(row)

    if not rows and not bad:
        raise DataError(f"{path} has no rows. Add one row per example with columns {', '.join(require)}.")
    # A column is present if any record has it; when every record was broken, those bad rows are the
    # message, not the columns.
    if check_columns_seen and columns_seen:
        check_columns(path, columns_seen, require)
    return rows, bad, root


def check_columns(path: Path, seen: set[str], require: tuple[str, ...]) -> None:
    """`DataError` naming the columns found if a field in ``require`` has no column among ``seen``."""
    present = {COLUMN_FIELDS.get(c.strip().lower(), c) for c in seen}
    missing = [r for r in require if r not in present]
    if missing:
        found = ", ".join(sorted(seen)) or "none"
        alias = " (caption is accepted for text)" if "text" in missing else ""
        raise DataError(
            f"{path} has no {', '.join(missing)} column. Found columns: {found}. "
            f"Expected: {', '.join(require)}{alias}. Rename or add the column(s)."
        )


def make_row(row_id: str, record: dict[str, Any], root: Path) -> Row | BadRow:
    """One manifest record → Row, or BadRow if a value has the wrong type or a path leaves ``root``."""
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in record.items():
        field = COLUMN_FIELDS.get(key.strip().lower())
        if field is None or field in fields:  # unknown column, or caption beside text: keep as extra
            extra[key] = value
            continue
        if value is not None and not isinstance(value, _ALLOWED_TYPES[field]):
            hint = "; write one line per caption" if field == "text" and isinstance(value, list) else ""
            return BadRow(
                row_id,
                "bad_json",
                f"{key!r} must be a {_type_words(field)}, got {type(value).__name__}{hint}",
            )
        fields[field] = value

    media: dict[str, Path | None] = dict.fromkeys(MEDIA_FIELDS)
    for field in media:
        value = fields.get(field)
        if value is None or not value.strip():
            continue  # an empty value is a missing field, judged by validation against the task's needs
        resolved = inside_root(value.strip(), root)
        if resolved is None:
            return BadRow(
                row_id,
                "path_escapes_root",
                f"{field} path {value!r} points outside {root}; media paths must be relative to "
                f"the manifest's folder and stay inside it",
            )
        media[field] = resolved

    answers: tuple[str, ...] | None = None
    if fields.get("answers") is not None:
        parsed = parse_answers(fields["answers"])
        if isinstance(parsed, str):
            return BadRow(row_id, "bad_json", parsed)
        answers = parsed

    label, text, question = fields.get("label"), fields.get("text"), fields.get("question")
    return Row(
        id=row_id,
        image=media["image"],
        audio=media["audio"],
        text=None if text is None else str(text),
        # Labels are class names: stray spaces would make "cat " a class of its own.
        label=None if label is None else str(label).strip(),
        question=question,
        answers=answers,
        extra=extra,
    )


def parse_answers(value: Any) -> tuple[str, ...] | str:
    """``answer``/``answers`` → a tuple of answer strings, or a message saying what is wrong."""
    if not isinstance(value, list):
        return (str(value),)  # a single answer (CSV cells are always single answers)
    answers = []
    for item in value:
        if isinstance(item, dict) and "answer" in item:  # the official VQA annotation layout
            item = item["answer"]
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            return ("'answers' must be a list of strings (or of {\"answer\": ...} objects), "
                    f"got an item of type {type(item).__name__}")
        answers.append(str(item))
    return tuple(answers)


def _type_words(field: str) -> str:
    return {
        "image": "relative path string",
        "audio": "relative path string",
        "label": "string or number",
        "answers": "string or list of strings",
    }.get(field, "string")


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
