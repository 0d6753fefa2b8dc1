"""Manifest records (one dict per line, caption or question) → `Row`s: column names, value types, paths.

Shared by every reader whose rows come from key → value records (CSV, JSONL, COCO captions, VQA).
Problems of one record become `BadRow`s; a column the task needs missing from the whole file is a
`DataError` (every row would fail).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from modaltune.data.fields import Field, FieldError, as_fields, describe, field_for_column
from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError


class LineError(NamedTuple):
    """A record that is broken before it can become a row (the caller adds the row id)."""

    reason: str
    detail: str


def rows_from_records(
    records: Iterable[tuple[int | str, dict[str, Any] | LineError]],
    *,
    path: Path,
    id_prefix: str,
    require: Sequence[Field | str],
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
        raise DataError(f"{path} has no rows. Add one row per example with columns {describe(as_fields(require))}.")
    # A column is present if any record has it; when every record was broken, those bad rows are the
    # message, not the columns.
    if check_columns_seen and columns_seen:
        check_columns(path, columns_seen, require)
    return rows, bad, root


def check_columns(path: Path, seen: set[str], require: Sequence[Field | str]) -> None:
    """`DataError` naming the columns found if a field in ``require`` has no column among ``seen``."""
    present = {c.strip().lower() for c in seen}
    missing = [f for f in as_fields(require) if not present & set(f.columns)]
    if missing:
        found = ", ".join(sorted(seen)) or "none"
        aliases = "".join(f" ({', '.join(f.columns[1:])} is accepted for {f.columns[0]})"
                          for f in missing if len(f.columns) > 1)
        raise DataError(
            f"{path} has no {', '.join(f.shown for f in missing)} column. Found columns: {found}. "
            f"Expected: {describe(as_fields(require))}{aliases}. Rename or add the column(s)."
        )


def make_row(row_id: str, record: dict[str, Any], root: Path) -> Row | BadRow:
    """One manifest record → Row, or BadRow if a value has the wrong type or a path leaves ``root``.

    Each column is parsed by the registered field that claims it (`data.fields`); columns no field
    claims, and a second column for a field already filled (caption beside text), stay in ``extra``.
    """
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in record.items():
        target = field_for_column(key)
        if target is None or target.name in values:
            extra[key] = value
            continue
        try:
            values[target.name] = target.parse(value, root=root, column=key)
        except FieldError as exc:
            return BadRow(row_id, exc.reason, exc.detail)
    return Row(id=row_id, extra=extra, **values)
