"""Hugging Face `datasets` data: a folder written by ``Dataset.save_to_disk``, or a Parquet file.

* ``hf-dataset``: a folder holding ``dataset_info.json`` / ``state.json`` and Arrow files, read with
  ``datasets.load_from_disk`` (memory-mapped). A ``DatasetDict`` folder holds one such folder per
  split (``train/``, ``validation/``, ``test/``), which are split folders like any other.
* ``parquet``: a ``.parquet`` file (``Dataset.to_parquet``, pandas, the hub's ``data/*.parquet``),
  read in batches with pyarrow.

Columns fill the task's fields through the field registry, by name (``image``, ``audio``, ``label``,
``text`` or ``caption``, ``question``, ``answers`` or ``answer``). A column typed ``datasets.Image``
or ``datasets.Audio`` whose name no field claims (``img``) fills that kind's field when it is the
only one of its kind; a ``ClassLabel`` column gives the class name, not its number.

Media arrive as the ``datasets`` storage has them, never decoded by `datasets` (its Audio decoding
needs torchcodec since datasets 4, and its Image decoding knows no decompression-bomb limit): a
``{"bytes", "path"}`` struct or raw bytes are stored once as a file under the cache
(`data.media.embedded`) and checked by modaltune's own decoders like any file, with the same
reason codes; a path alone (``to_parquet`` of a dataset cast from file paths keeps only the path)
follows the manifests' rule: relative to the data's folder and inside it (``path_escapes_root``).
Both readers need the ``hub`` extra (``pip install 'modaltune[hub]'``: datasets, pyarrow).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from modaltune.data.fields import Field, FieldError, MediaField, field_for_column, inside_root
from modaltune.data.readers.base import Reader, ReadResult, Source
from modaltune.data.readers.records import check_columns
from modaltune.data.rows import BadRow, Row
from modaltune.errors import DataError

_BATCH = 256
_MEDIA_TYPES = {"Image": "image", "Audio": "audio"}


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"reading Hugging Face datasets and Parquet files needs {module.split('.')[0]}: "
                        "pip install 'modaltune[hub]'") from None


class HfDatasetReader(Reader):
    name = "hf-dataset"
    summary = "a Hugging Face datasets folder written by save_to_disk (dataset_info.json, state.json, *.arrow)"
    reads_folders = True

    def sniff(self, source: Source) -> bool:
        return source.is_dir and any((source.path / name).is_file() for name in ("state.json", "dataset_info.json"))

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        path = source.path
        if (path / "dataset_dict.json").is_file():
            raise DataError(f"{path} is a DatasetDict: point at the folder of one split inside it, or name "
                            "the splits train/ validation/ test/ so that they are read as splits")
        datasets = _need("datasets")
        try:
            dataset = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError, KeyError) as exc:
            raise DataError(f"{path} looks like a datasets folder but cannot be loaded: {exc}") from exc
        if not isinstance(dataset, datasets.Dataset):
            raise DataError(f"{path} holds a {type(dataset).__name__}, not one Dataset; point at one split")
        tables = dataset.with_format("arrow").iter(batch_size=_BATCH)
        name = path.name if id_prefix.rstrip("/") == path.name else f"{id_prefix}{path.name}"
        return rows_from_table(_records(tables), dataset.features.to_dict(), list(dataset.column_names),
                               path=path, root=path.resolve(), name=name, require=require)


class ParquetReader(Reader):
    name = "parquet"
    summary = "a .parquet file with columns image (or audio), label, text, … (datasets.Image / Audio columns too)"

    def sniff(self, source: Source) -> bool:
        return not source.is_dir and source.suffix == ".parquet"

    def read(self, source: Source, *, require: Sequence[Field | str], id_prefix: str) -> ReadResult:
        path = source.path
        pq = _need("pyarrow.parquet")
        try:
            parquet = pq.ParquetFile(str(path))
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses for a damaged file
            raise DataError(f"{path} is not a readable Parquet file: {exc}") from exc
        schema = parquet.schema_arrow
        return rows_from_table(_records(parquet.iter_batches(batch_size=_BATCH)), _hf_features(schema.metadata),
                               list(schema.names), path=path, root=path.parent.resolve(),
                               name=f"{id_prefix}{path.name}", require=require)


def _hf_features(metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The ``datasets`` feature types a Parquet file written by `datasets` records in its metadata."""
    try:
        info = json.loads((metadata or {}).get(b"huggingface", b"{}"))
        features = info.get("info", {}).get("features", {})
        return features if isinstance(features, dict) else {}
    except (ValueError, AttributeError):
        return {}


def _records(tables: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for table in tables:
        yield from table.to_pylist()


def rows_from_table(records: Iterable[dict[str, Any]], features: dict[str, Any], columns: list[str], *,
                    path: Path, root: Path, name: str, require: Sequence[Field | str]) -> ReadResult:
    """Rows from a table's records (one dict per row) and its ``datasets`` feature types; ids ``<name>:<row>``."""
    fields = _column_fields(columns, features)
    check_columns(path, {f.columns[0] if f is not None else c for c, f in fields.items()}, require)
    labels = {c: spec["names"] for c, spec in features.items()
              if isinstance(spec, dict) and spec.get("_type") == "ClassLabel" and isinstance(spec.get("names"), list)}
    rows: list[Row] = []
    bad: list[BadRow] = []
    for index, record in enumerate(records):
        row_id = f"{name}:{index}"
        try:
            rows.append(_row(row_id, record, fields, labels, root))
        except FieldError as exc:
            bad.append(BadRow(row_id, exc.reason, exc.detail))
    if not rows and not bad:
        raise DataError(f"{path} has no rows.")
    return rows, bad, root


def _column_fields(columns: list[str], features: dict[str, Any]) -> dict[str, Field | None]:
    """The field each column fills: by name, else (an Image / Audio column) by its type when it is
    the only column of that kind and no column is named for it."""
    fields: dict[str, Field | None] = {}
    for column in columns:
        f = field_for_column(column)
        fields[column] = f if f is not None and f.name not in {g.name for g in fields.values() if g} else None
    for kind in ("image", "audio"):
        typed = [c for c in columns if _feature_type(features.get(c)) == kind]
        named = field_for_column(kind)
        if len(typed) == 1 and named is not None and named not in fields.values():
            fields[typed[0]] = named
    return fields


def _feature_type(spec: Any) -> str | None:
    return _MEDIA_TYPES.get(spec.get("_type", "")) if isinstance(spec, dict) else None


def _row(row_id: str, record: dict[str, Any], fields: dict[str, Field | None], labels: dict[str, list[str]],
         root: Path) -> Row:
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for column, value in record.items():
        f = fields.get(column)
        if f is None:
            if isinstance(value, (str, int, float, bool)) or value is None:
                extra[column] = value  # bytes and nested values of unclaimed columns are not kept
            continue
        if column in labels and isinstance(value, int) and not isinstance(value, bool):
            # datasets marks a missing class with -1
            value = labels[column][value] if 0 <= value < len(labels[column]) else None
        if isinstance(f, MediaField):
            media = _media(value, f.name, root, column)
            if media is not None:
                values[f.name] = media
        else:
            parsed = f.parse(value, root=root, column=column)
            if parsed is not None:
                values[f.name] = parsed
    return Row(id=row_id, extra=extra, **values)


def _media(value: Any, kind: str, root: Path, column: str) -> Path | None:
    """A media cell (``{"bytes", "path"}``, raw bytes, or a relative path) → the file to decode."""
    from modaltune.data.media.embedded import store_bytes

    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
        if data:
            return store_bytes(bytes(data), kind=kind, name=name if isinstance(name, str) else None)
        if not isinstance(name, str) or not name.strip():
            return None
        return _inside(name, root, column, stored_path=True)
    if isinstance(value, (bytes, bytearray)):
        return store_bytes(bytes(value), kind=kind) if value else None
    if isinstance(value, str):
        return _inside(value, root, column, stored_path=False) if value.strip() else None
    if value is None:
        return None
    raise FieldError("bad_json", f"{column!r} must hold {kind} bytes, a {{bytes, path}} struct or a relative path, "
                                 f"got {type(value).__name__}")


def _inside(value: str, root: Path, column: str, *, stored_path: bool) -> Path:
    resolved = inside_root(value.strip(), root)
    if resolved is None:
        hint = ("; the data stores only this path, not the file's bytes: save it with Dataset.save_to_disk "
                "(which embeds the files) or keep the files inside the data's folder") if stored_path else ""
        raise FieldError("path_escapes_root", f"{column} path {value!r} points outside {root}; media paths must "
                                              f"be relative to the data's folder and stay inside it{hint}")
    return resolved
