"""What every source-layout reader shares: the `Reader` interface, the `Source` it looks at, and helpers.

A reader turns one layout (a class folder, a CSV, a COCO captions json, …) into `Row`s without
judging the media. `sniff` says whether a path is in its layout by looking at it (a folder's
entries, a file's extension, a ``.json``'s top-level keys); `read` reads it. The registry in
`modaltune.data.readers` picks a reader by sniffing, or by the name given with ``--data-format``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from modaltune.data.fields import Field
from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError

#: What a reader returns: usable rows, rows broken at the format level, and the media root.
ReadResult = tuple[list[Row], list[BadRow], Path]

#: Files a folder may hold instead of media: the data is then that one file.
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".json", ".parquet")

# Operating-system droppings that are never user data; skipped without a report.
_JUNK_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}

_UNREAD = object()


class Source:
    """A data path being identified and read; a ``.json`` is parsed at most once, whoever asks first.

    Sniffing a COCO or VQA file means parsing it (hundreds of MB for the official training sets), so
    the parsed value is kept here and handed to the reader that claims the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._json: Any = _UNREAD
        self._children: dict[Path, Source] = {}

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower()

    def json(self) -> Any:
        """The file parsed as one JSON document; `DataError` if it is not UTF-8 or not valid JSON."""
        if self._json is _UNREAD:
            text = read_text(self.path)
            try:
                self._json = json.loads(text)
            except json.JSONDecodeError as exc:
                hint = (" (one JSON object per line is JSONL: name the file .jsonl, or pass --data-format jsonl)"
                        if "Extra data" in exc.msg else "")
                raise DataError(f"{self.path} is not valid JSON: {exc.msg} at line {exc.lineno}{hint}.") from exc
        return self._json

    def json_or_none(self) -> Any:
        """`json`, or None when the file cannot be parsed (for sniffing, which must not raise)."""
        try:
            return self.json()
        except DataError:
            return None

    def child(self, path: Path) -> Source:
        """The `Source` of a file inside this folder, the same object each time (parsed once)."""
        if path not in self._children:
            self._children[path] = Source(path)
        return self._children[path]

    def data_files(self) -> list[Path]:
        """The manifest files (.csv / .jsonl / .json) at the top of this folder, sorted."""
        return [p for p in sorted(self.path.iterdir())
                if p.is_file() and not is_junk(p) and p.suffix.lower() in MANIFEST_EXTENSIONS]


class Reader(ABC):
    """One source layout. Subclasses set `name` (the ``--data-format`` value), `summary` (what the
    layout is, for messages) and `reads_folders` (whether `read` takes a folder), and implement
    `sniff` and `read`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    reads_folders: ClassVar[bool] = False
    #: Reading options `read` takes as keywords (``box_format``, ``normalized`` for boxes JSONL).
    options: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def sniff(self, source: Source) -> bool:
        """Whether ``source`` is in this layout; never raises, never judges rows."""

    @abstractmethod
    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        """Rows, format-level bad rows and the media root; `DataError` when the whole input is unusable.

        ``require`` names the fields the task needs (a layout that cannot hold one raises);
        ``id_prefix`` is put before every row id (``train/`` for a split folder). A reader that
        lists `options` takes them as further keywords (only those given are passed).
        """


def read_text(path: Path) -> str:
    """A whole data file as text: UTF-8, with the BOM Excel and Notepad write dropped."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}). "
            f"Save it as UTF-8."
        ) from exc


def is_junk(entry: Path) -> bool:
    """Hidden files and operating-system droppings, which are never user data."""
    return entry.name.startswith(".") or entry.name.lower() in _JUNK_NAMES


def dict_items(value: Any, limit: int = 100) -> list[dict[str, Any]]:
    """The JSON objects among the first ``limit`` items of a list (for sniffing by keys)."""
    return [x for x in value[:limit] if isinstance(x, dict)] if isinstance(value, list) else []
