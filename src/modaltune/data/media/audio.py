"""Decode one audio file into float32 mono samples at the model's rate, or say precisely why it cannot be used.

Files are read by libsndfile (through ``soundfile``; its wheels bundle libsndfile with FLAC, Ogg
Vorbis/Opus and MPEG (mp3) support, so nothing else needs installing) and resampled with soxr, the
resampler ``librosa.load`` uses by default, without librosa's numba/scikit-learn stack. Both are
imported on first use only.

What comes back, whatever the file: a 1-D ``float32`` array of mono samples.

* Integer PCM is scaled by libsndfile to [-1, 1): 8-bit WAV is unsigned (``(u - 128) / 128``),
  16/24/32-bit are signed (``s / 2**(bits-1)``). Float WAV data is kept as stored.
* Several channels are down-mixed by averaging them (not by taking the first one).
* With ``sampling_rate``, the clip is resampled to that rate (soxr, "HQ" quality).
* Samples are not clipped: float files, lossy codecs and resampling may go a little beyond ±1 on
  full-scale material, and clipping would add distortion a model never saw in training.
* Digital silence is valid audio (a "silence" class, a pause in speech); only a clip with no
  frames at all is ``empty_audio``.

Reason codes (explained in ``data.validate.REASONS``): ``missing_file``, ``empty_file``,
``not_audio`` (not an audio format at all: text, an image, a wrong extension), ``corrupt_audio``
(an audio header with damaged or truncated data), ``empty_audio`` (0 frames) and
``audio_too_long`` (longer than ``max_seconds``; found from the header, before anything is decoded).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modaltune.data.media.base import MediaDecoder, MediaError, require_nonempty_file

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64"}
)

# An MP3's length in its header is exact with a Xing/Info (LAME) or VBRI tag, and an estimate
# without one (from the first frame's bitrate). Decoding fewer frames than the header promises means
# the file is truncated; for an untagged MP3 only a large shortfall counts, so a VBR file is not
# flagged for a wrong estimate (and its over-long check is repeated on the decoded length).
_MP3_MIN_DECODED_FRACTION = 0.9


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header says; ``seconds`` is ``frames / sampling_rate``."""

    sampling_rate: int
    channels: int
    frames: int
    format: str  # libsndfile's major format: "WAV", "FLAC", "OGG", "MP3", …
    subtype: str  # its encoding: "PCM_16", "FLOAT", "VORBIS", "MPEG_LAYER_III", …

    @property
    def seconds(self) -> float:
        return self.frames / self.sampling_rate


def audio_info(path: str | Path, *, max_seconds: float | None = None) -> AudioInfo:
    """Check ``path`` from its header alone and describe it; raise `MediaError` if it is unusable.

    Nothing is decoded, except one frame at the very end (a seek) for formats other than MP3, which
    finds a FLAC or Ogg file cut short. Damage in the middle of a compressed stream is found by
    `load_audio` only.
    """
    path = Path(path)
    with _opened(path, max_seconds) as (f, info):
        if info.format != "MP3" or _mp3_length_is_exact(path):
            f.seek(info.frames - 1)  # a truncated stream fails here, at the cost of decoding one block
            if len(f.read(1, dtype="float32", always_2d=True)) != 1:
                raise MediaError("corrupt_audio", f"{path} ends before its last frame: the file is truncated")
    return info


@contextmanager
def _opened(path: Path, max_seconds: float | None) -> Iterator[tuple[Any, AudioInfo]]:
    """The open file and its checked header facts; what libsndfile raises becomes a reason code."""
    import soundfile as sf

    require_nonempty_file(path)
    head = _read_head(path)
    try:
        with sf.SoundFile(str(path)) as f:
            info = AudioInfo(int(f.samplerate), int(f.channels), int(f.frames), str(f.format), str(f.subtype))
            _check_header(path, info, head, max_seconds)
            yield f, info
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise _open_error(path, head, exc) from exc


def check_audio(path: str | Path, *, max_seconds: float | None = None) -> None:
    """Raise `MediaError` if the header of ``path`` shows it unusable (see `audio_info`); decodes nothing."""
    audio_info(path, max_seconds=max_seconds)


def load_audio(
    path: str | Path, *, sampling_rate: int | None = None, max_seconds: float | None = None
) -> np.ndarray:
    """Decode ``path`` fully into float32 mono samples, resampled to ``sampling_rate`` when given.

    ``max_seconds`` is checked on the header first, so an over-long file costs no decoding (and,
    for MP3, whose header length may be an estimate, once more on the decoded length).
    Raises `MediaError` with a reason code (see the module docstring).
    """
    import soundfile as sf

    path = Path(path)
    with _opened(path, max_seconds) as (f, info):
        try:
            data = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise MediaError("corrupt_audio", f"{path} could not be decoded: {exc}") from exc

    decoded = len(data)
    if info.format == "MP3" and not _mp3_length_is_exact(path):
        if decoded < _MP3_MIN_DECODED_FRACTION * info.frames:
            raise MediaError(
                "corrupt_audio", f"{path} decodes to {decoded} frames of the {info.frames} its header gives: truncated"
            )
        if max_seconds is not None and decoded / info.sampling_rate > max_seconds:
            raise MediaError("audio_too_long", _too_long(path, decoded / info.sampling_rate, max_seconds))
    elif decoded < info.frames:
        raise MediaError(
            "corrupt_audio", f"{path} decodes to {decoded} frames of the {info.frames} its header gives: truncated"
        )
    if decoded == 0:
        raise MediaError("empty_audio", f"{path} holds no audio frames")
    if not np.isfinite(data).all():
        raise MediaError("corrupt_audio", f"{path} holds NaN or infinite samples")

    mono = data[:, 0] if info.channels == 1 else data.mean(axis=1, dtype=np.float64).astype(np.float32)
    if sampling_rate is not None and int(sampling_rate) != info.sampling_rate:
        mono = resample(mono, info.sampling_rate, int(sampling_rate))
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample 1-D float32 ``samples`` from ``orig_rate`` to ``target_rate`` Hz (soxr, "HQ")."""
    import soxr

    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_rate} and {target_rate}")
    if orig_rate == target_rate:
        return samples
    return soxr.resample(np.asarray(samples, dtype=np.float32), orig_rate, target_rate, quality="HQ")


class AudioDecoder(MediaDecoder):
    """The registry's ``"audio"`` decoder: `load_audio`, and `check_audio` (header only)."""

    kind = "audio"
    extensions = AUDIO_EXTENSIONS

    def load(
        self, path: str | Path, *, sampling_rate: int | None = None, max_seconds: float | None = None, **_: Any
    ) -> np.ndarray:
        return load_audio(path, sampling_rate=sampling_rate, max_seconds=max_seconds)

    def check(self, path: str | Path, *, max_seconds: float | None = None, **_: Any) -> None:
        check_audio(path, max_seconds=max_seconds)

    def sniff(self, head: bytes) -> bool:
        return has_audio_signature(head)


def has_audio_signature(head: bytes) -> bool:
    """Whether ``head`` (a file's first 12+ bytes) starts like an audio format libsndfile reads."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return True
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return True
    if head.startswith((b"fLaC", b"OggS", b"ID3", b".snd", b"caff", b"riff.\x91\xcf\x11")):
        return True
    return _is_mpeg_frame_header(head[:4])


def _is_mpeg_frame_header(b: bytes) -> bool:
    """An MPEG audio frame header: 11 sync bits, then no reserved version, layer, bitrate or rate value."""
    if len(b) < 4 or b[0] != 0xFF or (b[1] & 0xE0) != 0xE0:
        return False
    version, layer = (b[1] >> 3) & 3, (b[1] >> 1) & 3
    bitrate, rate = b[2] >> 4, (b[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate != 15 and rate != 3


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(64)
    except PermissionError as exc:
        raise MediaError("missing_file", f"{path} cannot be read: permission denied") from exc


def _open_error(path: Path, head: bytes, exc: BaseException) -> MediaError:
    if isinstance(exc, MediaError):
        return exc
    if has_audio_signature(head):  # e.g. a FLAC cut inside its header, or an Ogg page damaged
        return MediaError("corrupt_audio", f"{path} starts like an audio file but cannot be read: {exc}")
    return MediaError(
        "not_audio", f"{path} is not an audio file that can be read (wav, flac, ogg, mp3, …; wrong extension?)"
    )


def _check_header(path: Path, info: AudioInfo, head: bytes, max_seconds: float | None) -> None:
    if info.sampling_rate <= 0 or info.channels <= 0:
        raise MediaError(
            "corrupt_audio", f"{path} has an invalid header ({info.channels} channels at {info.sampling_rate} Hz)"
        )
    if info.format in ("WAV", "WAVEX"):
        _check_wav_data_chunk(path, head)
    elif info.format == "OGG":
        _check_ogg_last_page(path)
    if info.frames == 0:
        raise MediaError("empty_audio", f"{path} holds no audio frames")
    if max_seconds is not None and info.seconds > max_seconds:
        raise MediaError("audio_too_long", _too_long(path, info.seconds, max_seconds))


def _too_long(path: Path, seconds: float, max_seconds: float) -> str:
    return (
        f"{path} lasts {seconds:.1f} s, over the limit of {max_seconds:g} s; "
        "cut it into shorter clips or raise --max-audio-seconds"
    )


def _check_wav_data_chunk(path: Path, head: bytes) -> None:
    """Raise ``corrupt_audio`` if the WAV's ``data`` chunk promises more bytes than the file holds.

    libsndfile silently shortens such a file to what is there (its log says "should be …"), so a
    WAV cut off in a copy would otherwise pass as a shorter clip. One missing frame or less is
    tolerated (some writers drop the last padding bytes); so are streaming placeholders
    (a size of 0 or 0xFFFFFFFF, and RF64 files, whose sizes live in another chunk).
    """
    if head[:4] not in (b"RIFF", b"RIFX"):
        return
    endian = "<" if head[:4] == b"RIFF" else ">"
    size = path.stat().st_size
    block_align = 1
    with open(path, "rb") as f:
        f.seek(12)
        for _ in range(1000):  # a real WAV has a handful of chunks; stop on garbage
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            chunk_id, chunk_size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                fmt = f.read(min(chunk_size, 16))
                if len(fmt) >= 14:
                    block_align = max(1, struct.unpack(endian + "H", fmt[12:14])[0])
                f.seek(chunk_size - len(fmt) + (chunk_size & 1), 1)
            elif chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):
                    return
                available = size - f.tell()
                if chunk_size - available > block_align:
                    raise MediaError(
                        "corrupt_audio",
                        f"{path} is truncated: its data chunk declares {chunk_size:,} bytes, the file holds "
                        f"{available:,}",
                    )
                return
            else:
                f.seek(chunk_size + (chunk_size & 1), 1)


_OGG_MAX_PAGE = 27 + 255 + 255 * 255


def _check_ogg_last_page(path: Path) -> None:
    """Raise ``corrupt_audio`` unless the Ogg file ends with a complete page.

    libsndfile takes an Ogg stream's length from its last page; a file cut inside a page shows as
    0 frames (it would pass for an empty clip) or as a shorter clip.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - _OGG_MAX_PAGE))
        tail = f.read()
    start = len(tail)
    while (start := tail.rfind(b"OggS", 0, start)) >= 0:
        if start + 27 <= len(tail):
            segments = tail[start + 26]
            table = tail[start + 27 : start + 27 + segments]
            if len(table) == segments and start + 27 + segments + sum(table) == len(tail):
                return
    raise MediaError("corrupt_audio", f"{path} is truncated: its last Ogg page is incomplete")


def _mp3_length_is_exact(path: Path) -> bool:
    """Whether an MP3 carries a Xing/Info or VBRI tag, which makes its header's length exact."""
    with open(path, "rb") as f:
        head = f.read(10)
        offset = 0
        if head[:3] == b"ID3" and len(head) == 10:  # skip an ID3v2 tag: 4 syncsafe size bytes, maybe a footer
            offset = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F))
            offset += 10 if head[5] & 0x10 else 0
        f.seek(offset)
        frame = f.read(200)
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))
