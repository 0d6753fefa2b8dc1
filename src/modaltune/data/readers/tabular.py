"""CSV and JSONL manifests: one example per line, columns named as in `records.COLUMN_FIELDS`.

* ``csv``: a header row is required; columns ``image`` or ``audio``, ``label``, ``text`` (or
  ``caption``), ``question``, ``answer``; a quoted cell may span lines (the row id is the line it
  starts on); blank lines are skipped.
* ``jsonl``: one JSON object per line; ``answers`` may be a list of strings or of
  ``{"answer": ...}`` objects. A broken line is a ``bad_json`` row, the others are read.

Sniffed by extension (``.csv``, ``.jsonl``); ``--data-format csv|jsonl`` reads any other name so.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modaltune.data.fields import Field
from modaltune.data.readers.base import Reader, ReadResult, Source, read_text
from modaltune.data.readers.records import LineError, check_columns, rows_from_records
from modaltune.errors import DataError


class CsvReader(Reader):
    name = "csv"
    summary = "a .csv manifest with a header row: columns image (or audio), label, text (or question, answer)"

    def sniff(self, source: Source) -> bool:
        return not source.is_dir and source.suffix == ".csv"

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        path = source.path
        records = _csv_records(path, read_text(path), require)
        # Columns were checked on the header.
        return rows_from_records(records, path=path, id_prefix=id_prefix, require=require, check_columns_seen=False)


class JsonlReader(Reader):
    name = "jsonl"
    summary = "a .jsonl manifest, one JSON object per line with the same fields as a .csv"

    def sniff(self, source: Source) -> bool:
        return not source.is_dir and source.suffix == ".jsonl"

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        path = source.path
        return rows_from_records(_jsonl_records(read_text(path)), path=path, id_prefix=id_prefix, require=require)


def _csv_records(path: Path, text: str,
                 require: Sequence[Field | str]) -> Iterator[tuple[int, dict[str, str] | LineError]]:
    """(line number, column → value) per data row; the header is line 1."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty. A CSV manifest needs a header row, e.g. image,label")
        header = [h.strip() for h in header]
        lowered = [h.lower() for h in header if h]
        dupes = sorted({h for h in lowered if lowered.count(h) > 1})
        if dupes:
            raise DataError(f"{path}: the header repeats column(s) {', '.join(dupes)}; names must be unique.")
        check_columns(path, {h for h in header if h}, require)
        previous_end = reader.line_num
        for cells in reader:
            # A quoted cell can span lines: report the line where the row starts.
            line_no, previous_end = previous_end + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank or all-empty lines (spreadsheet exports end with them)
            if len(cells) > len(header):
                yield (
                    line_no,
                    LineError(
                        "bad_csv",
                        f"{len(cells)} cells but the header has {len(header)} columns; "
                        f"quote values that contain commas",
                    ),
                )
                continue
            yield line_no, {h: c for h, c in zip(header, cells) if h}
    except csv.Error as exc:
        raise DataError(
            f"{path}, line {reader.line_num}: unreadable CSV ({exc}). Fix the quoting there."
        ) from exc


def _jsonl_records(text: str) -> Iterator[tuple[int, dict[str, Any] | LineError]]:
    # split("\n"), not splitlines(): JSON strings may legally hold U+2028 and friends.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_no, LineError("bad_json", f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            yield (
                line_no,
                LineError(
                    "bad_json",
                    f'expected a JSON object like {{"image": ..., "label": ...}}, got {type(obj).__name__}',
                ),
            )
            continue
        yield line_no, obj
