"""Media decoders, one per kind of file (``image``, ``audio``), held in a registry.

A decoder turns a path into what a model's processor takes (an RGB ``PIL.Image``, float32 mono
samples) or raises `MediaError` with a reason code from ``data.validate.REASONS``. A new kind
(video, …) subclasses `MediaDecoder` and calls `register_decoder`; nothing else in the data layer
changes. `media_kind` tells which kind a file is: by extension, else by its first bytes.

The image functions are importable from here as before (``from modaltune.data.media import
MediaError, load_image, check_image, to_rgb, DEFAULT_MAX_PIXELS``).
"""

from __future__ import annotations

from pathlib import Path

from modaltune.data.media.audio import AudioDecoder, AudioInfo, audio_info, check_audio, load_audio
from modaltune.data.media.base import MediaDecoder, MediaError
from modaltune.data.media.image import DEFAULT_MAX_PIXELS, ImageDecoder, check_image, load_image, to_rgb

_DECODERS: dict[str, MediaDecoder] = {}

# Bytes read to sniff a file's kind when no decoder claims its extension.
_SNIFF_BYTES = 64


def register_decoder(decoder: MediaDecoder) -> MediaDecoder:
    """Add ``decoder`` to the registry under ``decoder.kind``; returns it.

    Raises `ValueError` if that kind is registered already, or if another kind claims one of its
    extensions (a file's kind must be unambiguous).
    """
    kind = decoder.kind
    if kind in _DECODERS:
        raise ValueError(
            f"a media decoder for kind {kind!r} is registered already ({type(_DECODERS[kind]).__name__})"
        )
    for other in _DECODERS.values():
        shared = sorted(set(decoder.extensions) & set(other.extensions))
        if shared:
            raise ValueError(f"extensions {shared} of kind {kind!r} are claimed by kind {other.kind!r} already")
    _DECODERS[kind] = decoder
    return decoder


def kind_of(name: str) -> str:
    """The kind of an example's media reference named ``name``: the name itself (``image``,
    ``audio``), or what comes before ``#`` for a further reference of that kind (``image#1`` is an
    example's second image, as chat conversations with several images hold them)."""
    return name.split("#", 1)[0]


def get_decoder(kind: str) -> MediaDecoder:
    """The decoder registered for ``kind`` (or for the kind of a media reference name, see `kind_of`);
    `KeyError` naming the known kinds otherwise."""
    try:
        return _DECODERS[kind_of(kind)]
    except KeyError:
        raise KeyError(f"no media decoder for kind {kind!r}; registered: {', '.join(sorted(_DECODERS))}") from None


def media_kinds() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_DECODERS)


def media_kind(path: str | Path) -> str | None:
    """The kind of media file ``path`` is, or ``None`` when no registered decoder recognises it.

    The extension decides when a decoder claims it (so a PNG named ``.wav`` is ``"audio"`` here, and
    the audio decoder then reports ``not_audio``); otherwise the file's first bytes are matched
    against each decoder's signatures. An unreadable or missing file with an unknown extension is
    ``None``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    for decoder in _DECODERS.values():
        if suffix in decoder.extensions:
            return decoder.kind
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return None
    for decoder in _DECODERS.values():
        if decoder.sniff(head):
            return decoder.kind
    return None


register_decoder(ImageDecoder())
register_decoder(AudioDecoder())

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "AudioDecoder",
    "AudioInfo",
    "ImageDecoder",
    "MediaDecoder",
    "MediaError",
    "audio_info",
    "check_audio",
    "check_image",
    "get_decoder",
    "load_audio",
    "load_image",
    "media_kind",
    "media_kinds",
    "register_decoder",
    "to_rgb",
]
