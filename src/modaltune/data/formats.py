"""Turn what a user points ``--data`` at into `Row`s, without judging the media yet.

Accepted layouts:

* image folder: ``root/<label>/<image>`` (the label is the folder name);
* split folder: ``root/train/``, ``root/val/`` (or ``valid/``, ``validation/``), ``root/test/``,
  each itself an image folder or a folder holding one ``.csv`` / ``.jsonl`` manifest;
* manifest: ``.csv`` (header row required) or ``.jsonl`` (one JSON object per line) with columns
  ``image`` or ``audio``, ``label``, ``text`` (``caption`` is accepted for ``text``), ``question``
  and ``answer`` (one string) or ``answers`` (a JSON list of strings, or of ``{"answer": ...}``
  objects as in the official VQA annotations); any other column is kept in ``Row.extra``;
* COCO captions: a ``.json`` file with ``images`` (``id``, ``file_name``) and ``annotations``
  (``image_id``, ``caption``): one row per caption.

Problems that belong to a single row (bad JSON, a path leaving the data folder, a stray file)
become `BadRow`s so the user sees all of them at once; problems with the whole input (not found,
unknown format, a required column absent) raise `DataError`. Files are only ever read.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NamedTuple

from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".json")

#: Canonical split name → folder names accepted for it (matched case-insensitively).
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val", "valid", "validation"),
    "test": ("test",),
}

# Operating-system droppings that are never user data; skipped without a report.
_JUNK_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}

# Manifest column (lower-cased) → Row field. When both text and caption are present,
# text wins and caption is kept in Row.extra (see _make_row).
_COLUMN_FIELDS = {"image": "image", "audio": "audio", "label": "label", "text": "text", "caption": "text",
                  "question": "question", "answer": "answers", "answers": "answers"}

_ACCEPTED = (
    "Accepted: an image folder (root/<label>/*.jpg), a folder with train/ val/ test/ inside, "
    "a .csv / .jsonl manifest with columns image (or audio), label, text (or question, answer), "
    "or a COCO captions .json."
)


def discover_splits(path: str | Path) -> dict[str, Path]:
    """The split folders inside ``path`` as ``{"train": ..., "val": ..., "test": ...}`` (only those present).

    ``valid/`` and ``validation/`` count as ``val``; two folders for the same split are an error,
    since silently preferring one would train or evaluate on the wrong data.
    """
    path = Path(path)
    if not path.is_dir():
        return {}
    found: dict[str, list[Path]] = {}
    for child in sorted(path.iterdir()):
        if not child.is_dir():
            continue
        for split, names in SPLIT_ALIASES.items():
            if child.name.lower() in names:
                found.setdefault(split, []).append(child)
    splits: dict[str, Path] = {}
    for split in SPLIT_ALIASES:  # train, val, test order
        folders = found.get(split, [])
        if len(folders) > 1:
            names = ", ".join(f"{f.name}/" for f in folders)
            raise DataError(f"{path} has several folders for the {split!r} split ({names}); keep only one.")
        if folders:
            splits[split] = folders[0]
    return splits


def read_rows(
    path: str | Path, *, split: str | None = None, require: tuple[str, ...] = ("image", "label")
) -> tuple[list[Row], list[BadRow], Path]:
    """Read ``path`` into rows, format-level bad rows, and the media root (the folder paths are inside).

    ``require`` names the fields the task needs; a manifest without such a column at all raises
    `DataError` (every row would fail). Row media paths are absolute, so the media root is only
    for display. Row ids are relative to ``path`` (``cats/001.jpg``, ``train/pairs.jsonl:12``).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"Data path not found: {path}. {_ACCEPTED}")

    if path.is_file():
        if split is not None:
            raise DataError(
                f"split={split!r} was given but {path} is a single manifest file; splits are folders "
                f"(train/ val/ test/) next to each other. Point at the folder holding them instead."
            )
        return _read_manifest(path, require=require, id_prefix="")

    splits = discover_splits(path)
    if split is not None:
        canonical = _canonical_split(split)
        if canonical not in splits:
            have = ", ".join(f"{p.name}/" for p in splits.values()) or "none"
            raise DataError(
                f"No {canonical!r} split in {path} (split folders found: {have}). "
                f"Create {path / canonical}/ or use one of the splits found."
            )
        folder = splits[canonical]
        return _read_folder(folder, require=require, id_prefix=f"{folder.name}/")
    if splits:
        have = ", ".join(f"{p.name}/" for p in splits.values())
        raise DataError(
            f"{path} is divided into split folders ({have}); read one at a time with "
            f"read_rows(path, split='train'), or point at {next(iter(splits.values()))} directly."
        )
    return _read_folder(path, require=require, id_prefix="")


def _canonical_split(split: str) -> str:
    for canonical, names in SPLIT_ALIASES.items():
        if split.lower() in names:
            return canonical
    known = ", ".join(n for names in SPLIT_ALIASES.values() for n in names)
    raise DataError(f"Unknown split {split!r}; use one of: {known}.")


def _read_folder(
    folder: Path, *, require: tuple[str, ...], id_prefix: str
) -> tuple[list[Row], list[BadRow], Path]:
    """A folder is a manifest holder if it has exactly one manifest at its top, else an image folder."""
    manifests = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and not _is_junk(p) and p.suffix.lower() in MANIFEST_EXTENSIONS
    ]
    if len(manifests) > 1:
        names = ", ".join(p.name for p in manifests)
        raise DataError(
            f"{folder} holds several manifests ({names}); it is unclear which one to read. "
            f"Keep one, or point at the manifest file itself."
        )
    if manifests:
        return _read_manifest(manifests[0], require=require, id_prefix=id_prefix)
    return _read_image_folder(folder, require=require, id_prefix=id_prefix)


# --- image folders ----------------------------------------------------------------------------


def _read_image_folder(
    root: Path, *, require: tuple[str, ...], id_prefix: str
) -> tuple[list[Row], list[BadRow], Path]:
    unsupported = [f for f in require if f not in ("image", "label")]
    if unsupported:
        raise DataError(
            f"{root} is an image folder, which holds only images and labels, but this task also needs "
            f"{', '.join(unsupported)}. Use a .csv or .jsonl manifest with columns {', '.join(require)}."
        )
    root = root.resolve()
    rows: list[Row] = []
    bad: list[BadRow] = []
    for entry in sorted(root.iterdir()):
        if _is_junk(entry):
            continue
        rel = f"{id_prefix}{entry.name}"
        if entry.is_dir():
            _read_label_folder(entry, rows, bad, id_prefix=f"{rel}/")
        elif not _is_image_name(entry):
            bad.append(_unsupported(rel))
        elif "label" in require:
            bad.append(
                BadRow(
                    rel,
                    "missing_field",
                    f"image is directly in {root}, so it has no label; move it into {root}/<label>/",
                )
            )
        else:  # unlabeled tasks may use a flat folder of images
            rows.append(Row(id=rel, image=entry))
    if not rows and not bad:
        raise DataError(f"No images found in {root}. {_ACCEPTED}")
    return rows, bad, root


def _read_label_folder(folder: Path, rows: list[Row], bad: list[BadRow], *, id_prefix: str) -> None:
    for entry in sorted(folder.iterdir()):
        if _is_junk(entry):
            continue
        rel = f"{id_prefix}{entry.name}"
        if entry.is_dir():
            # Labels are one level deep; taking the outer name for root/animals/cats/ would silently
            # merge classes, so a nested folder is reported instead.
            bad.append(
                BadRow(
                    f"{rel}/",
                    "unsupported_file",
                    f"nested folder inside label folder {folder.name}/; labels are one level deep "
                    f"(root/<label>/<image>), so move its images up or make it a label folder of its own",
                )
            )
        elif _is_image_name(entry):
            # Symlinks are allowed here: the user assembled this folder, unlike a downloaded manifest.
            rows.append(Row(id=rel, image=entry, label=folder.name))
        else:
            bad.append(_unsupported(rel))


def _is_junk(entry: Path) -> bool:
    return entry.name.startswith(".") or entry.name.lower() in _JUNK_NAMES


def _is_image_name(entry: Path) -> bool:
    return entry.suffix.lower() in IMAGE_EXTENSIONS


def _unsupported(rel: str) -> BadRow:
    return BadRow(rel, "unsupported_file", f"not an image file type; accepted: {' '.join(IMAGE_EXTENSIONS)}")


# --- manifests --------------------------------------------------------------------------------


class _LineError(NamedTuple):
    """A line that is broken before it can become a row (the caller adds the row id)."""

    reason: str
    detail: str


def _read_manifest(
    path: Path, *, require: tuple[str, ...], id_prefix: str
) -> tuple[list[Row], list[BadRow], Path]:
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_EXTENSIONS:
        raise DataError(f"Unsupported data file {path} (extension {suffix or 'none'!r}). {_ACCEPTED}")
    root = path.parent.resolve()
    name = f"{id_prefix}{path.name}"
    text = _read_text(path)
    if suffix == ".json":
        records = _coco_caption_records(path, text)
    else:
        records = _csv_records(path, text, require) if suffix == ".csv" else _jsonl_records(text)

    rows: list[Row] = []
    bad: list[BadRow] = []
    columns_seen: set[str] = set()
    for line_no, record in records:
        row_id = f"{name}:{line_no}"
        if isinstance(record, _LineError):
            bad.append(BadRow(row_id, record.reason, record.detail))
            continue
        columns_seen.update(record)
        row = _make_row(row_id, record, root)
        if isinstance(row, BadRow):
            bad.append(row)
        else:
            rows.append(row)

    if not rows and not bad:
        raise DataError(f"{path} has no rows. Add one row per example with columns {', '.join(require)}.")
    # CSV columns were checked on the header. For JSONL, a column is present if any line has it; when
    # every line was broken, those bad rows are the message, not the columns.
    if suffix != ".csv" and columns_seen:
        _check_columns(path, columns_seen, require)
    return rows, bad, root


def _read_text(path: Path) -> str:
    """The whole manifest as text: UTF-8, with the BOM Excel and Notepad write dropped."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}). "
            f"Save it as UTF-8."
        ) from exc


def _csv_records(
    path: Path, text: str, require: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, str] | _LineError]]:
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
        _check_columns(path, {h for h in header if h}, require)
        previous_end = reader.line_num
        for cells in reader:
            # A quoted cell can span lines: report the line where the row starts.
            line_no, previous_end = previous_end + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank or all-empty lines (spreadsheet exports end with them)
            if len(cells) > len(header):
                yield (
                    line_no,
                    _LineError(
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


def _jsonl_records(text: str) -> Iterator[tuple[int, dict[str, Any] | _LineError]]:
    # split("\n"), not splitlines(): JSON strings may legally hold U+2028 and friends.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_no, _LineError("bad_json", f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            yield (
                line_no,
                _LineError(
                    "bad_json",
                    f'expected a JSON object like {{"image": ..., "label": ...}}, got {type(obj).__name__}',
                ),
            )
            continue
        yield line_no, obj


def _coco_caption_records(path: Path, text: str) -> Iterator[tuple[str, dict[str, Any] | _LineError]]:
    """COCO captions json → one record per caption annotation, keyed ``ann<id>`` in row ids."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (one JSON object per line is JSONL: name the file .jsonl)" if "Extra data" in exc.msg else ""
        raise DataError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}{hint}.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DataError(
            f"{path} is not a COCO captions file: it needs top-level 'images' and 'annotations' lists. "
            f"For one JSON object per line, name the file .jsonl. {_ACCEPTED}")
    files: dict[Any, Any] = {}
    for image in data["images"]:
        if isinstance(image, dict) and "id" in image:
            files[image["id"]] = image.get("file_name")
    for position, ann in enumerate(data["annotations"]):
        key = f"ann{ann.get('id', position)}" if isinstance(ann, dict) else f"ann#{position}"
        if not isinstance(ann, dict):
            yield key, _LineError("bad_json", f"annotation {position} is not a JSON object")
        elif "caption" not in ann:
            yield key, _LineError("missing_field", f"annotation {position} has no 'caption' (not a captions file?)")
        elif ann.get("image_id") not in files:
            yield key, _LineError("missing_field", f"image_id {ann.get('image_id')!r} is not in 'images'")
        elif not isinstance(files[ann["image_id"]], str):
            yield key, _LineError("missing_field", f"image {ann['image_id']!r} has no 'file_name'")
        else:
            yield key, {"image": files[ann["image_id"]], "caption": ann["caption"], "image_id": ann["image_id"]}


def _check_columns(path: Path, seen: set[str], require: tuple[str, ...]) -> None:
    present = {_COLUMN_FIELDS.get(c.strip().lower(), c) for c in seen}
    missing = [r for r in require if r not in present]
    if missing:
        found = ", ".join(sorted(seen)) or "none"
        alias = " (caption is accepted for text)" if "text" in missing else ""
        raise DataError(
            f"{path} has no {', '.join(missing)} column. Found columns: {found}. "
            f"Expected: {', '.join(require)}{alias}. Rename or add the column(s)."
        )


# JSON types a manifest value may have, per Row field. Labels may be numbers or booleans (class ids).
_ALLOWED_TYPES: dict[str, tuple[type, ...]] = {
    "image": (str,),
    "audio": (str,),
    "label": (str, int, float, bool),
    "text": (str, int, float),
    "question": (str,),
    "answers": (str, int, float, list),
}


def _make_row(row_id: str, record: dict[str, Any], root: Path) -> Row | BadRow:
    """One manifest record → Row, or BadRow if a value has the wrong type or a path leaves ``root``."""
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in record.items():
        field = _COLUMN_FIELDS.get(key.strip().lower())
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

    media: dict[str, Path | None] = {"image": None, "audio": None}
    for field in media:
        value = fields.get(field)
        if value is None or not value.strip():
            continue  # an empty value is a missing field, judged by validation against the task's needs
        resolved = _inside_root(value.strip(), root)
        if resolved is None:
            return BadRow(
                row_id,
                "path_escapes_root",
                f"{field} path {value!r} points outside {root}; media paths must be relative to "
                f"the manifest's folder and stay inside it",
            )
        media[field] = resolved

    answers = None
    if fields.get("answers") is not None:
        answers = _answers(fields["answers"])
        if isinstance(answers, str):
            return BadRow(row_id, "bad_json", answers)

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


def _answers(value: Any) -> tuple[str, ...] | str:
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


def _inside_root(value: str, root: Path) -> Path | None:
    """``root / value`` with symlinks resolved, or None if it is absolute or resolves outside ``root``."""
    value = value.replace("\\", "/")  # manifests written on Windows
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive:
        return None
    try:
        resolved = (root / value).resolve()
    except (OSError, RuntimeError):  # a symlink loop: it cannot lead anywhere inside root either
        return None
    return resolved if resolved.is_relative_to(root) else None
