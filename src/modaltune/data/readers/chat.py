"""Chat data: LLaVA conversations and OpenAI-style messages, in a ``.json`` list or a ``.jsonl``.

``chat-json`` claims a ``.json`` whose top level is a list of objects with a ``conversations`` or
``messages`` list (LLaVA-Instruct, LLaMA-Factory's sharegpt files); a COCO file (a top-level object)
is never one. ``chat-jsonl`` claims a ``.jsonl`` whose first object has such a list (TRL,
LLaMA-Factory, ms-swift), before the generic ``jsonl`` manifest reader sees it. Each record becomes
one example: its `Conversation` and its images (``image``, ``image#1``, …; see
`modaltune.data.conversation`). Row ids are ``chat.json:[i]`` (list position) or ``chat.jsonl:<line>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modaltune.data.conversation import CONVERSATION, image_names, looks_like_chat, parse_record
from modaltune.data.fields import Field, FieldError, as_fields, describe
from modaltune.data.readers.base import Reader, ReadResult, Source
from modaltune.data.readers.records import LineError
from modaltune.data.readers.tabular import _jsonl_records
from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError

#: Bytes of a .jsonl read to sniff it (its first records), so a large file is not read twice.
_SNIFF_BYTES = 1 << 16


class ChatJsonReader(Reader):
    name = "chat-json"
    summary = "a .json list of LLaVA {'image', 'conversations'} or {'messages', 'images'} chat records"

    def sniff(self, source: Source) -> bool:
        if source.is_dir or source.suffix != ".json":
            return False
        data = source.json_or_none()
        items = data[:20] if isinstance(data, list) else []
        return bool(items) and looks_like_chat(items)

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        data = source.json()
        if not isinstance(data, list):
            raise DataError(f"{source.path} is not a chat file: LLaVA / messages chat data is a JSON list of "
                            f"records, this is a {type(data).__name__}.")
        records = ((f"[{i}]", r if isinstance(r, dict) else LineError(
            "bad_json", f"item {i} is a {type(r).__name__}, not a chat record object")) for i, r in enumerate(data))
        return chat_rows(records, path=source.path, id_prefix=id_prefix, require=require)


class ChatJsonlReader(Reader):
    name = "chat-jsonl"
    summary = "a .jsonl of chat records, one {'messages', 'images'} or LLaVA {'conversations', 'image'} per line"

    def sniff(self, source: Source) -> bool:
        if source.is_dir or source.suffix != ".jsonl":
            return False
        try:
            with open(source.path, "rb") as f:
                head = f.read(_SNIFF_BYTES).decode("utf-8-sig", errors="ignore")
        except OSError:
            return False
        for line in head.split("\n")[:-1] if len(head) == _SNIFF_BYTES else head.split("\n"):
            if not line.strip():
                continue
            try:
                first = json.loads(line)
            except json.JSONDecodeError:
                return False
            return looks_like_chat([first])
        return False

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        from modaltune.data.readers.base import read_text

        return chat_rows(_jsonl_records(read_text(source.path)), path=source.path, id_prefix=id_prefix,
                         require=require)


def chat_rows(records: Iterator[tuple[Any, dict[str, Any] | LineError]], *, path: Path, id_prefix: str,
              require: Sequence[Field | str]) -> ReadResult:
    """Rows of chat records; a record that cannot be parsed is a `BadRow` with its reason."""
    fields = as_fields(require)
    other = [f for f in fields if f.name != CONVERSATION.name and f.name != "image"]
    if other:
        raise DataError(f"{path} holds chat conversations, but this task needs {describe(fields)}. "
                        f"Train on it with --task chat.")
    root = path.parent.resolve()
    name = f"{id_prefix}{path.name}"
    rows: list[Row] = []
    bad: list[BadRow] = []
    for key, record in records:
        row_id = f"{name}:{key}"
        if isinstance(record, LineError):
            bad.append(BadRow(row_id, record.reason, record.detail))
            continue
        try:
            conversation, images = parse_record(record, root=root)
        except FieldError as exc:
            bad.append(BadRow(row_id, exc.reason, exc.detail))
            continue
        extra = {k: v for k, v in record.items()
                 if k not in ("conversations", "messages", "conversation", "image", "images", "system")}
        rows.append(Row(row_id, values={CONVERSATION.name: conversation},
                        media=dict(zip(image_names(len(images)), images)), extra=extra))
    if not rows and not bad:
        raise DataError(f"{path} has no records. Chat data is a list of {{'conversations': [...]}} or "
                        f"{{'messages': [...]}} objects.")
    return rows, bad, root
