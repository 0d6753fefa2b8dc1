"""Source layouts → `Row`s: a registry of readers, chosen by sniffing the data or by ``--data-format``.

Built-in readers, in the order they sniff (the first that claims a path reads it):

========================  ==============================================================
``vqa``                   the official VQA questions + annotations ``.json`` pair
``coco-instances``        COCO instances ``.json`` (``images``, ``annotations`` with ``bbox``,
                          ``categories``): detection boxes
``coco-captions``         COCO captions ``.json`` (``images`` + ``annotations`` with ``caption``)
``chat-json``             a ``.json`` list of LLaVA / messages chat records
``csv``                   CSV manifests, by extension
``odvg``                  Grounding DINO's ODVG ``.jsonl`` (``filename`` + ``detection``)
``boxes-jsonl``           a ``.jsonl`` of ``image``, ``boxes``, ``labels`` (``box_format``,
                          ``normalized`` options)
``chat-jsonl``            a ``.jsonl`` of LLaVA / messages chat records
``jsonl``                 JSONL manifests, by extension
``folder``                class folders of images or audio; split folders
========================  ==============================================================

A folder that holds exactly one manifest (``.csv`` / ``.jsonl`` / ``.json``) at its top is that
manifest; a folder of several is an error unless a reader claims the folder as a whole (the VQA
pair). A ``.json`` that no reader claims is a `DataError` saying what it looks like (a COCO
instances file, a LLaVA conversations file, …), never misread. With ``data_format`` the named reader
reads the path whatever its name (``--data-format jsonl`` for JSON lines in a ``.json``,
``--data-format folder`` for a class folder that also holds a stray ``.csv``).

A new layout subclasses `Reader` (``name``, ``summary``, ``sniff``, ``read``) and calls
`register_reader`; nothing else changes. Problems of single rows become `BadRow`s so the user
sees all of them at once; problems with the whole input raise `DataError`. Files are only read.
Reading options (``read_rows(options=...)``) go to a reader that lists them in `Reader.options`;
given to a reader that does not take them they are an error, not silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modaltune.data.fields import Field, as_fields
from modaltune.data.readers.base import MANIFEST_EXTENSIONS, Reader, ReadResult, Source, dict_items
from modaltune.data.readers.boxes_jsonl import BoxesJsonlReader
from modaltune.data.readers.chat import ChatJsonlReader, ChatJsonReader
from modaltune.data.readers.coco_captions import CocoCaptionsReader
from modaltune.data.readers.coco_instances import CocoInstancesReader
from modaltune.data.readers.folder import (
    IMAGE_EXTENSIONS,
    SPLIT_ALIASES,
    FolderReader,
    canonical_split,
    discover_splits,
)
from modaltune.data.readers.hf_datasets import HfDatasetReader, ParquetReader
from modaltune.data.readers.odvg import OdvgReader
from modaltune.data.readers.tabular import CsvReader, JsonlReader
from modaltune.data.readers.vqa import VqaReader
from modaltune.errors import DataError

_READERS: dict[str, Reader] = {}


def register_reader(reader: Reader, *, before: str | None = None) -> Reader:
    """Add ``reader`` under ``reader.name``; it sniffs after those registered earlier, or just
    before the reader named ``before`` (a specific layout must sniff before a general one).
    Raises `ValueError` for a name registered already."""
    if reader.name in _READERS:
        existing = type(_READERS[reader.name]).__name__
        raise ValueError(f"a reader named {reader.name!r} is registered already ({existing})")
    if before is None:
        _READERS[reader.name] = reader
        return reader
    if before not in _READERS:
        raise ValueError(f"no reader named {before!r} to register {reader.name!r} before")
    items = list(_READERS.items())
    at = [name for name, _ in items].index(before)
    _READERS.clear()
    _READERS.update(items[:at] + [(reader.name, reader)] + items[at:])
    return reader


def reader_names() -> list[str]:
    """The ``--data-format`` names, in sniffing order."""
    return list(_READERS)


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``; `DataError` naming the known ones otherwise."""
    try:
        return _READERS[name]
    except KeyError:
        raise DataError(f"Unknown data format {name!r}; use one of: {', '.join(_READERS)}.") from None


def accepted_layouts() -> str:
    """One sentence listing the accepted layouts and their ``--data-format`` names, for messages."""
    return ("Accepted: an image folder (root/<label>/*.jpg) or audio folder (root/<label>/*.wav|flac|ogg|mp3), "
            "a folder with train/ val/ test/ inside, a .csv / .jsonl / .parquet manifest with columns image (or "
            "audio), label, text (or question, answer), a Hugging Face datasets save_to_disk folder, "
            "a COCO captions .json, the official VQA questions + "
            "annotations .json pair, or detection boxes: a COCO instances .json, an ODVG .jsonl, or a .jsonl of "
            f"image, boxes, labels (--data-format {' | '.join(_READERS)}).")


def read_rows(
    path: str | Path,
    *,
    split: str | None = None,
    require: Sequence[Field | str] = ("image", "label"),
    data_format: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> ReadResult:
    """Read ``path`` into rows, format-level bad rows, and the media root (the folder paths are inside).

    ``require`` names the fields the task needs; a manifest without such a column at all raises
    `DataError` (every row would fail). ``data_format`` names the reader to use instead of sniffing.
    ``options`` are reading options for the reader that takes them (``{"box_format": "cxcywh",
    "normalized": True}`` for a boxes JSONL); None values count as not given.
    Row media paths are absolute, so the media root is only for display. Row ids are relative to
    ``path`` (``cats/001.jpg``, ``train/pairs.jsonl:12``).
    """
    explicit = get_reader(data_format) if data_format is not None else None
    require = as_fields(require)
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"Data path not found: {path}. {accepted_layouts()}")

    if path.is_file():
        if split is not None:
            raise DataError(
                f"split={split!r} was given but {path} is a single manifest file; splits are folders "
                f"(train/ val/ test/) next to each other. Point at the folder holding them instead."
            )
        return read_path(path, require=require, id_prefix="", reader=explicit, options=options)

    splits = discover_splits(path)
    if split is not None:
        canonical = canonical_split(split)
        if canonical not in splits:
            have = ", ".join(f"{p.name}/" for p in splits.values()) or "none"
            raise DataError(
                f"No {canonical!r} split in {path} (split folders found: {have}). "
                f"Create {path / canonical}/ or use one of the splits found."
            )
        folder = splits[canonical]
        return read_path(folder, require=require, id_prefix=f"{folder.name}/", reader=explicit, options=options)
    if splits:
        have = ", ".join(f"{p.name}/" for p in splits.values())
        raise DataError(
            f"{path} is divided into split folders ({have}); read one at a time with "
            f"read_rows(path, split='train'), or point at {next(iter(splits.values()))} directly."
        )
    return read_path(path, require=require, id_prefix="", reader=explicit, options=options)


def read_path(path: Path, *, require: Sequence[Field | str], id_prefix: str,
              reader: Reader | None = None, options: Mapping[str, Any] | None = None) -> ReadResult:
    """Read one file or one (non-split) folder with ``reader``, or with the reader that sniffs it."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    source = Source(path)
    if source.is_dir and not (reader is not None and reader.reads_folders):
        whole = None if reader is not None else next(
            (r for r in _READERS.values() if r.reads_folders and r.name != "folder" and r.sniff(source)), None)
        if whole is not None:
            return _read(whole, source, require=require, id_prefix=id_prefix, options=given)
        manifests = source.data_files()
        if len(manifests) > 1:
            names = ", ".join(p.name for p in manifests)
            raise DataError(
                f"{path} holds several manifests ({names}); it is unclear which one to read. "
                f"Keep one, or point at the manifest file itself."
            )
        if not manifests:
            if reader is not None:
                raise DataError(f"--data-format {reader.name} reads a file, but {path} is a folder holding no "
                                f"{' / '.join(MANIFEST_EXTENSIONS)} file. Point at the file itself.")
            return _read(_READERS["folder"], source, require=require, id_prefix=id_prefix, options=given)
        source = source.child(manifests[0])
    if reader is None:
        reader = next((r for r in _READERS.values() if r.sniff(source)), None)
    if reader is None:
        if source.suffix == ".json":
            raise DataError(_unknown_json(source))
        raise DataError(
            f"Unsupported data file {source.path} (extension {source.suffix or 'none'!r}). {accepted_layouts()}")
    return _read(reader, source, require=require, id_prefix=id_prefix, options=given)


def _read(reader: Reader, source: Source, *, require: Sequence[Field | str], id_prefix: str,
          options: dict[str, Any]) -> ReadResult:
    """``reader.read`` with the options it takes; `DataError` for options it does not."""
    unused = sorted(set(options) - set(reader.options))
    if unused:
        takers = [r.name for r in _READERS.values() if set(unused) & set(r.options)]
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise DataError(f"{flags} {'applies' if len(unused) == 1 else 'apply'} to {' / '.join(takers) or 'no reader'} "
                        f"data, but {source.path} is read as {reader.name} ({reader.summary}). Drop {flags}.")
    return reader.read(source, require=require, id_prefix=id_prefix, **options)


def _unknown_json(source: Source) -> str:
    return (
        f"{source.path} is not a COCO captions file nor any other .json layout modaltune reads: it is "
        f"{describe_json(source.json())}. Readable .json layouts: COCO captions ('images' + 'annotations' "
        f"whose entries have 'caption'), COCO instances ('images', 'annotations' with 'bbox', 'categories') "
        f"and the official VQA questions + annotations pair; a manifest with one "
        f"JSON object per line is JSONL (name it .jsonl, or pass --data-format jsonl). "
        f"Layouts by --data-format name: {', '.join(_READERS)}."
    )


def describe_json(data: Any) -> str:
    """What a parsed ``.json`` looks like, in words: its top-level keys, and the layout they suggest."""
    if isinstance(data, dict):
        keys = ", ".join(repr(k) for k in list(data)[:12]) + (", …" if len(data) > 12 else "")
        annotations = dict_items(data.get("annotations"))
        if any("bbox" in a for a in annotations):
            if any("keypoints" in a for a in annotations):
                return f"a COCO keypoints file (top-level keys {keys}): keypoint detection is not supported yet"
            return (f"a COCO instances file (top-level keys {keys}; annotations with 'bbox') without its "
                    f"'categories' list, which names the boxes' category_id (add it; detection reads --task detect)")
        if any("segments_info" in a for a in annotations):
            return f"a COCO panoptic file (top-level keys {keys}): segmentation is not supported yet"
        if annotations:
            ann_keys = ", ".join(repr(k) for k in annotations[0])
            return f"a JSON object with top-level keys {keys} whose annotations have keys {ann_keys}"
        return f"a JSON object with top-level keys {keys}" if data else "an empty JSON object"
    if isinstance(data, list):
        items = dict_items(data)
        if any("conversations" in x for x in items):
            return ("a LLaVA conversations file (a list of {'image', 'conversations'} objects), but not every "
                    "item has a 'conversations' list; chat data is read with --data-format chat-json")
        if any("messages" in x for x in items):
            return ("a chat file of 'messages' lists, but not every item has one; chat data is read with "
                    "--data-format chat-json")
        if items:
            item_keys = sorted({k for x in items for k in x})
            shown = ", ".join(repr(k) for k in item_keys[:12]) + (", …" if len(item_keys) > 12 else "")
            return f"a JSON list of {len(data)} objects with keys {shown}"
        if not data:
            return "an empty JSON list"
        return f"a JSON list of {len(data)} {type(data[0]).__name__} values"
    return f"a single JSON {type(data).__name__} value"


register_reader(VqaReader())
register_reader(CocoInstancesReader())
register_reader(CocoCaptionsReader())
register_reader(CsvReader())
register_reader(OdvgReader())
register_reader(BoxesJsonlReader())
register_reader(JsonlReader())
register_reader(FolderReader())
# Chat records are a .json *list* (COCO and VQA files are objects) or .jsonl lines with a
# conversations/messages list: both sniff before the generic manifests.
register_reader(ChatJsonReader(), before="csv")
register_reader(ChatJsonlReader(), before="jsonl")
# Hugging Face datasets: a save_to_disk folder (claimed as a whole) and .parquet files.
register_reader(HfDatasetReader(), before="folder")
register_reader(ParquetReader(), before="folder")

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_EXTENSIONS",
    "SPLIT_ALIASES",
    "ReadResult",
    "Reader",
    "Source",
    "accepted_layouts",
    "describe_json",
    "discover_splits",
    "get_reader",
    "read_path",
    "read_rows",
    "reader_names",
    "register_reader",
]
