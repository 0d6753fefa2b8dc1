"""Folders: class folders ``root/<label>/<file>`` of images or of audio clips, and split folders.

* A class folder's label is the folder name; labels are one level deep. The media kind of each
  file comes from its extension, as the media decoder registry declares it (``.jpg`` … → image,
  ``.wav``/``.flac``/``.ogg``/``.mp3`` … → audio); one dataset holds one kind, so a folder mixing
  images and audio is an error rather than two half-datasets.
* A folder with ``train/``, ``val/`` (or ``valid/``, ``validation/``), ``test/`` inside is split
  that way (`discover_splits`); each split folder is read like any other data folder.

Stray files and nested folders become ``unsupported_file`` rows so the user sees all of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modaltune.data.fields import Field, as_fields, describe, media_kinds, needs
from modaltune.data.media import get_decoder
from modaltune.data.media import media_kinds as decoder_kinds
from modaltune.data.readers.base import Reader, ReadResult, Source, is_junk
from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

#: Canonical split name → folder names accepted for it (matched case-insensitively).
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val", "valid", "validation"),
    "test": ("test",),
}

# A file of each kind in messages: one, several, its place in the layout, a folder of them.
_NOUNS = {"image": ("image", "images", "<image>", "an image folder"),
          "audio": ("audio file", "audio files", "<clip>", "an audio folder")}
_NESTED = "<folder>"


class FolderReader(Reader):
    name = "folder"
    summary = ("an image folder (root/<label>/*.jpg) or audio folder (root/<label>/*.wav|flac|ogg|mp3), "
               "or a folder with train/ val/ test/ inside")
    reads_folders = True

    def sniff(self, source: Source) -> bool:
        return source.is_dir

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        if not source.is_dir:
            raise DataError(f"--data-format folder reads a folder, but {source.path} is a file.")
        return read_class_folder(source.path, require=require, id_prefix=id_prefix)


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
            listed = ", ".join(f"{f.name}/" for f in folders)
            raise DataError(f"{path} has several folders for the {split!r} split ({listed}); keep only one.")
        if folders:
            splits[split] = folders[0]
    return splits


def canonical_split(split: str) -> str:
    """``valid`` → ``val`` and so on; `DataError` for a name that is no split."""
    for canonical, names in SPLIT_ALIASES.items():
        if split.lower() in names:
            return canonical
    known = ", ".join(n for names in SPLIT_ALIASES.values() for n in names)
    raise DataError(f"Unknown split {split!r}; use one of: {known}.")


def media_kind_by_extension(path: Path) -> str | None:
    """The media kind a Row field can hold (``image``, ``audio``) that claims ``path``'s extension."""
    suffix = path.suffix.lower()
    for kind in decoder_kinds():
        if suffix in get_decoder(kind).extensions:
            return kind
    return None


def read_class_folder(root: Path, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
    """``root/<label>/<file>`` → one row per media file; a flat folder too when no label is required."""
    root = root.resolve()
    fields = as_fields(require)
    # (row id, path, label or None, media kind, None for other files, or _NESTED), in sorted order.
    entries: list[tuple[str, Path, str | None, str | None]] = []
    for entry in sorted(root.iterdir()):
        if is_junk(entry):
            continue
        rel = f"{id_prefix}{entry.name}"
        if not entry.is_dir():
            entries.append((rel, entry, None, media_kind_by_extension(entry)))
            continue
        for child in sorted(entry.iterdir()):
            if not is_junk(child):
                kind = _NESTED if child.is_dir() else media_kind_by_extension(child)
                entries.append((f"{rel}/{child.name}", child, entry.name, kind))

    kinds = Counter(kind for *_, kind in entries if kind in _NOUNS)
    if len(kinds) > 1:
        found = "; ".join(f"{n} {_NOUNS[k][0] if n == 1 else _NOUNS[k][1]} (e.g. "
                          f"{next(rel for rel, *_, kind in entries if kind == k)})" for k, n in sorted(kinds.items()))
        raise DataError(
            f"{root} mixes media kinds: {found}. One dataset holds one kind of media; put the images "
            f"and the audio files in separate folders and use one of them.")
    taken = media_kinds(fields)
    kind = next(iter(kinds), taken[0] if taken else "image")
    noun, plural, placeholder, folder_words = _NOUNS[kind]
    if taken and kind not in taken:
        raise DataError(
            f"{root} is {folder_words}, but this task reads "
            f"{' or '.join(_NOUNS[k][1] for k in taken if k in _NOUNS)}. "
            f"Point --data at a dataset of the task's media, or pick a task for {plural}.")
    unsupported = [f.shown for f in fields if not (f.media or f.name == "label")]
    if unsupported:
        raise DataError(
            f"{root} is {folder_words}, which holds only {plural} and labels, but this task also needs "
            f"{', '.join(unsupported)}. Use a .csv or .jsonl manifest with columns {describe(fields)}."
        )

    rows: list[Row] = []
    bad: list[BadRow] = []
    for rel, path, label, file_kind in entries:
        media: dict[str, Any] = {kind: path}  # the Row field of this dataset's media kind
        if file_kind == _NESTED:
            # Labels are one level deep; taking the outer name for root/animals/cats/ would silently
            # merge classes, so a nested folder is reported instead.
            bad.append(BadRow(
                f"{rel}/", "unsupported_file",
                f"nested folder inside label folder {label}/; labels are one level deep "
                f"(root/<label>/{placeholder}), so move its {plural} up or make it a label folder of its own"))
        elif file_kind is None:
            accepted = " ".join(IMAGE_EXTENSIONS if kind == "image" else sorted(get_decoder(kind).extensions))
            bad.append(BadRow(rel, "unsupported_file", f"not {'an image' if kind == 'image' else 'an audio'} "
                              f"file type; accepted: {accepted}"))
        elif label is not None:
            # Symlinks are allowed here: the user assembled this folder, unlike a downloaded manifest.
            rows.append(Row(id=rel, label=label, **media))
        elif needs(fields, "label"):
            bad.append(BadRow(rel, "missing_field",
                              f"{noun} is directly in {root}, so it has no label; move it into {root}/<label>/"))
        else:  # unlabeled tasks may use a flat folder
            rows.append(Row(id=rel, **media))
    if not rows and not bad:
        from modaltune.data.readers import accepted_layouts

        raise DataError(f"No images found in {root}, nor audio files. {accepted_layouts()}")
    return rows, bad, root
