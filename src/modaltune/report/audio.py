"""Audio samples in the report: a log-mel spectrogram thumbnail over a player that holds the clip (its
first seconds, at a capped rate) as a WAV data URI."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np

from modaltune.report.samples import _esc, _png_uri, register_sample_renderer

#: The longest stretch of a clip the report's player holds (and its spectrogram shows), in seconds.
PLAYER_MAX_SECONDS = 10.0
#: Clips recorded above this rate are resampled to it for the player (the spectrogram keeps the
#: clip's own rate): 10 s of 16-bit mono is then at most ~590 kB of base64 per sample.
PLAYER_MAX_RATE = 22_050


def clip_for_player(path: str | Path) -> tuple[np.ndarray, int, float]:
    """What the report's player plays of the clip at ``path``: ``(samples, rate, seconds of the whole clip)``.

    The clip is decoded by the project's audio decoder (`modaltune.data.media.load_audio`: mono, by
    averaging channels), cut to its first `PLAYER_MAX_SECONDS`, resampled to `PLAYER_MAX_RATE` when
    recorded above it, and clipped to [-1, 1]. Raises `MediaError` (with a reason code) if unreadable.
    """
    from modaltune.data.media import audio_info, load_audio
    from modaltune.data.media.audio import resample

    rate = audio_info(path).sampling_rate
    samples = load_audio(path)
    seconds = len(samples) / rate
    samples = samples[: int(PLAYER_MAX_SECONDS * rate)]
    if rate > PLAYER_MAX_RATE:
        samples, rate = resample(samples, rate, PLAYER_MAX_RATE), PLAYER_MAX_RATE
    return np.clip(samples, -1.0, 1.0).astype(np.float32), rate, seconds


def wav_bytes(samples: np.ndarray, sampling_rate: int) -> bytes:
    """``samples`` (float, mono) as a 16-bit PCM WAV file: ``round(x * 32768)``, saturated, as
    ``modaltune.testing.synthetic_audio.quantize(x, "PCM_16")`` does, so a 16-bit clip is kept exactly."""
    import io

    import soundfile as sf

    ints = np.clip(np.rint(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, ints, int(sampling_rate), format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@register_sample_renderer("audio", "clip")
def _audio_cell(path: Any, thumbnail: int) -> str:
    """A log-mel spectrogram thumbnail (``2 * thumbnail`` × ``thumbnail`` px) over an ``<audio controls>``
    player holding the clip as a WAV data URI (see `clip_for_player`), and its length; shortened clips say so."""
    from modaltune.data.media import MediaError
    from modaltune.plots import spectrogram_png

    try:
        samples, rate, seconds = clip_for_player(path)
        spectrogram = spectrogram_png(samples, rate, width=2 * thumbnail, height=thumbnail)
        wav = base64.b64encode(wav_bytes(samples, rate)).decode("ascii")
    except MediaError as exc:
        return f"(clip unreadable: {_esc(exc.reason)})"
    except (OSError, ValueError, RuntimeError) as exc:
        return f"(clip unreadable: {_esc(type(exc).__name__)})"
    shown = len(samples) / rate
    length = f"first {shown:.1f} s of {seconds:.1f} s (shortened)" if shown < seconds - 1e-6 else f"{seconds:.1f} s"
    return (
        f'<img alt="spectrogram of {_esc(path)}" title="log-mel spectrogram" src="{_png_uri(spectrogram)}">'
        f'<br><audio controls preload="metadata" src="data:audio/wav;base64,{wav}"></audio>'
        f"<br><small>{length}</small>"
    )
