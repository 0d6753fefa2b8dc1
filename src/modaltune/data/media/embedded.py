"""Media held inside a data file (a Parquet cell, a `datasets` Arrow table) instead of beside it.

Such bytes are written once to a content-addressed file, ``<cache>/media/<sha256[:2]>/<sha256><suffix>``
(the cache is ``$MODALTUNE_CACHE`` or ``~/.cache/modaltune``), and the example refers to that file.
From there every consumer of media references reads them as it reads a user's own files: the
decoders' checks (decompression bombs, truncated images and clips), the DataLoader workers, the
feature cache's identity of a row, the report's thumbnails and players; and memory does not grow
with the dataset. Each file is written under a temporary name and renamed into place, so the
processes of a multi-process run reading the same data at once write the same file harmlessly.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

# The suffix a decoder recognises, by leading bytes, when the data names no file for the bytes.
_SUFFIXES = (
    (b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
    (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"),
)


def embedded_media_dir() -> Path:
    from modaltune.run import user_cache_dir

    return user_cache_dir() / "media"


def store_bytes(data: bytes, *, kind: str, name: str | None = None) -> Path:
    """The file holding ``data`` (written now unless an identical one exists), named by its sha256.

    Its suffix is ``name``'s when the ``kind``'s decoder claims it (the file name the data gives the
    bytes), else one guessed from the leading bytes, else ``.bin``: decoders read the content either way.
    """
    digest = hashlib.sha256(data).hexdigest()
    path = embedded_media_dir() / digest[:2] / f"{digest}{_suffix(data, kind, name)}"
    if path.is_file() and path.stat().st_size == len(data):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _suffix(data: bytes, kind: str, name: str | None) -> str:
    from modaltune.data.media import get_decoder

    if name:
        suffix = Path(name).suffix.lower()
        if suffix in get_decoder(kind).extensions:
            return suffix
    head = data[:12]
    if head[:4] == b"RIFF":
        return {b"WAVE": ".wav", b"WEBP": ".webp"}.get(head[8:12], ".bin")
    return next((suffix for magic, suffix in _SUFFIXES if head.startswith(magic)), ".bin")
