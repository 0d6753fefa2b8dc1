"""Synthetic audio made in code, for tests, the demo and benchmarks: tones, chirps, noise bursts, rhythms.

Every generator returns float32 mono samples in [-1, 1] and is deterministic (noise takes a seed or
a ``numpy`` generator). `write_audio` saves a clip as WAV (8/16/24/32-bit integer or float), FLAC,
Ogg Vorbis or MP3 through soundfile/libsndfile, and returns the samples a correct decoder must read
back: integer formats are quantized here, exactly as stored, so lossless files compare equal.
`write_audio_classification_folder` writes ``root/<label>/*.<ext>`` with one kind of sound per class
in a mix of formats and sampling rates. Nothing is downloaded.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

#: The sound kinds `write_audio_classification_folder` can use as classes.
SOUND_KINDS = ("tone", "chirp", "noise", "rhythm")

#: Extension → (libsndfile major format, default subtype).
FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "aiff": ("AIFF", "PCM_16"),
}

#: Bits of the integer subtypes; `write_audio` quantizes to these before writing.
_INT_BITS = {"PCM_U8": 8, "PCM_S8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}
# The container sample width numpy hands libsndfile for each integer subtype (libsndfile keeps the top bits).
_CARRIER = {8: (np.int16, 8), 16: (np.int16, 0), 24: (np.int32, 8), 32: (np.int32, 0)}

#: Rates MPEG audio can store (MPEG-1, 2 and 2.5 layer III).
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def _times(seconds: float, sampling_rate: int) -> np.ndarray:
    return np.arange(round(seconds * sampling_rate)) / sampling_rate


def _fade(samples: np.ndarray, sampling_rate: int, fade_seconds: float = 0.005) -> np.ndarray:
    """Raised-cosine fade in/out, so a clip does not start or end with a click."""
    n = min(len(samples) // 2, round(fade_seconds * sampling_rate))
    if n > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))
        samples[:n] *= ramp
        samples[len(samples) - n :] *= ramp[::-1]
    return samples


def tone(
    frequency: float, seconds: float, sampling_rate: int, *, amplitude: float = 0.5, fade: bool = True
) -> np.ndarray:
    """A pure sine at ``frequency`` Hz."""
    out = amplitude * np.sin(2 * np.pi * frequency * _times(seconds, sampling_rate))
    return (_fade(out, sampling_rate) if fade else out).astype(np.float32)


def chirp(
    start_hz: float, end_hz: float, seconds: float, sampling_rate: int, *, amplitude: float = 0.5,
    logarithmic: bool = True,
) -> np.ndarray:
    """A sine sweeping from ``start_hz`` to ``end_hz`` (exponentially by default, as ears hear pitch)."""
    t = _times(seconds, sampling_rate)
    if logarithmic and start_hz != end_hz:
        k = np.log(end_hz / start_hz) / seconds
        phase = 2 * np.pi * start_hz * (np.exp(k * t) - 1) / k
    else:
        phase = 2 * np.pi * (start_hz * t + (end_hz - start_hz) * t**2 / (2 * seconds))
    return _fade(amplitude * np.sin(phase), sampling_rate).astype(np.float32)


def noise_burst(
    seconds: float, sampling_rate: int, *, seed: int | np.random.Generator = 0, bursts: int = 3,
    burst_seconds: float = 0.08, amplitude: float = 0.5,
) -> np.ndarray:
    """Silence with ``bursts`` short bursts of white noise at random (seeded) places."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n, width = round(seconds * sampling_rate), max(1, round(burst_seconds * sampling_rate))
    out = np.zeros(n)
    for _ in range(bursts):
        start = int(rng.integers(0, max(1, n - width)))
        piece = rng.uniform(-amplitude, amplitude, min(width, n - start))
        out[start : start + len(piece)] += _fade(piece, sampling_rate, 0.002)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def rhythm(
    bpm: float, seconds: float, sampling_rate: int, *, click_hz: float = 2000.0, click_seconds: float = 0.015,
    amplitude: float = 0.8, offset_seconds: float = 0.0,
) -> np.ndarray:
    """Clicks (short decaying sine pings) at ``bpm`` beats per minute."""
    n, width = round(seconds * sampling_rate), max(1, round(click_seconds * sampling_rate))
    t = np.arange(width) / sampling_rate
    click = amplitude * np.sin(2 * np.pi * click_hz * t) * np.exp(-t / (click_seconds / 5))
    out = np.zeros(n)
    beat = offset_seconds
    while beat * sampling_rate < n:
        start = round(beat * sampling_rate)
        piece = click[: n - start]
        out[start : start + len(piece)] += piece
        beat += 60.0 / bpm
    return out.astype(np.float32)


def stereo(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two mono clips of equal length → a ``(frames, 2)`` stereo clip."""
    if len(left) != len(right):
        raise ValueError(f"channels differ in length: {len(left)} and {len(right)} frames")
    return np.stack([left, right], axis=1).astype(np.float32)


def quantize(samples: np.ndarray, subtype: str) -> np.ndarray:
    """``samples`` as an integer ``subtype`` stores them, back in float32: ``round(x * 2**(bits-1))``,
    saturated, divided again. Float and lossy subtypes come back unchanged (as float32)."""
    bits = _INT_BITS.get(subtype)
    if bits is None:
        return np.asarray(samples, dtype=np.float32)
    return (_to_ints(samples, bits) / 2.0 ** (bits - 1)).astype(np.float32)


def _to_ints(samples: np.ndarray, bits: int) -> np.ndarray:
    """The signed integers a ``bits``-bit PCM file stores for ``samples``: rounded, saturated."""
    scale = 2.0 ** (bits - 1)
    return np.clip(np.rint(np.asarray(samples, dtype=np.float64) * scale), -scale, scale - 1).astype(np.int64)


def write_audio(
    path: str | Path, samples: np.ndarray, sampling_rate: int, *, subtype: str | None = None
) -> np.ndarray:
    """Write ``samples`` (``(frames,)`` or ``(frames, channels)`` float in [-1, 1]) to ``path``.

    The format comes from the extension (see `FORMATS`); ``subtype`` picks the encoding
    (``PCM_U8``, ``PCM_16``, ``PCM_24``, ``PCM_32``, ``FLOAT`` for WAV; ``PCM_16``/``PCM_24`` for FLAC;
    defaults in `FORMATS`). Returns what a correct decoder reads back: the quantized samples for
    integer subtypes (equal to the file's content), the input itself for float and lossy ones.
    """
    import soundfile as sf

    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise ValueError(f"unsupported audio extension {path.suffix!r}; choose from {', '.join(FORMATS)}")
    major, default_subtype = FORMATS[ext]
    subtype = subtype or default_subtype
    if major == "MP3" and sampling_rate not in MP3_RATES:
        raise ValueError(f"MP3 cannot store {sampling_rate} Hz; use one of {MP3_RATES}")
    expected = quantize(samples, subtype)
    bits = _INT_BITS.get(subtype)
    if bits is None:
        data: np.ndarray = expected
    else:
        # Hand libsndfile integers it stores bit-exactly (its float→int conversion scales by 2**(b-1) - 1).
        carrier, shift = _CARRIER[bits]
        data = (_to_ints(samples, bits) << shift).astype(carrier)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sampling_rate, format=major, subtype=subtype)
    return expected


def _stream(seed: int, *keys: str) -> np.random.Generator:
    """An independent generator per (seed, keys): crc32 is stable across processes, unlike hash()."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def sound(kind: str, seconds: float, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One random clip of ``kind`` (see `SOUND_KINDS`), its parameters drawn from ``rng``.

    The kinds differ in what any audio model hears first: a steady pitch (tone), a sweep over
    octaves (chirp), broadband bursts (noise) and regular clicks (rhythm).
    """
    amplitude = float(rng.uniform(0.3, 0.7))
    nyquist_safe = 0.45 * sampling_rate
    if kind == "tone":
        return tone(float(rng.uniform(220, min(1760, nyquist_safe))), seconds, sampling_rate, amplitude=amplitude)
    if kind == "chirp":
        low, high = float(rng.uniform(150, 400)), float(rng.uniform(2500, min(6000, nyquist_safe)))
        start, end = (low, high) if rng.random() < 0.5 else (high, low)
        return chirp(start, end, seconds, sampling_rate, amplitude=amplitude)
    if kind == "noise":
        return noise_burst(seconds, sampling_rate, seed=rng, bursts=int(rng.integers(2, 5)), amplitude=amplitude)
    if kind == "rhythm":
        return rhythm(
            float(rng.uniform(150, 300)), seconds, sampling_rate, click_hz=float(rng.uniform(1000, 3000)),
            amplitude=amplitude, offset_seconds=float(rng.uniform(0, 0.1)),
        )
    raise ValueError(f"unknown sound kind {kind!r}; choose from {', '.join(SOUND_KINDS)}")


def write_audio_classification_folder(
    root: str | Path,
    classes: Iterable[str] = SOUND_KINDS,
    per_class: int | dict[str, int] = 4,
    seed: int = 0,
    *,
    seconds: float = 1.0,
    formats: Sequence[str] = ("wav", "flac", "ogg", "mp3"),
    sampling_rates: Sequence[int] = (16000, 22050, 44100, 48000),
    stereo_every: int = 3,
    noise_floor: float = 0.005,
) -> Path:
    """Write ``root/<label>/NNNN.<ext>`` (or ``root/<split>/<label>/…`` when ``per_class`` maps split → count).

    Each class is one of `SOUND_KINDS`; its clips vary in pitch, sweep, burst places, tempo and
    loudness. Files cycle through ``formats`` and ``sampling_rates`` (a rate MP3 cannot store is
    moved to 48 kHz for MP3 files), every ``stereo_every``-th clip is stereo (0: none), and a faint
    noise floor is added. Each (split, label) has its own random stream, so changing one count
    does not change the other files. Returns ``root``.
    """
    classes = list(classes)
    unknown = [c for c in classes if c not in SOUND_KINDS]
    if unknown:
        raise ValueError(f"unknown sound classes {unknown}; choose from {', '.join(SOUND_KINDS)}")
    bad_formats = [f for f in formats if f not in FORMATS]
    if bad_formats:
        raise ValueError(f"unknown formats {bad_formats}; choose from {', '.join(FORMATS)}")
    root = Path(root)
    splits = per_class if isinstance(per_class, dict) else {"": per_class}
    for split, count in splits.items():
        for label in classes:
            folder = root / split / label if split else root / label
            rng = _stream(seed, split, label)
            for i in range(count):
                ext = formats[i % len(formats)]
                rate = sampling_rates[i % len(sampling_rates)]
                if ext == "mp3" and rate not in MP3_RATES:
                    rate = 48000
                clip = sound(label, seconds, rate, rng)
                if stereo_every and i % stereo_every == stereo_every - 1:
                    gain = float(rng.uniform(0.5, 1.0))
                    clip = stereo(clip, (clip * gain).astype(np.float32))
                if noise_floor:
                    clip = np.clip(clip + rng.normal(0.0, noise_floor, clip.shape), -1.0, 1.0).astype(np.float32)
                write_audio(folder / f"{i:04d}.{ext}", clip, rate)
    return root


def describe(kind: str, rng: np.random.Generator) -> str:
    """A short caption naming ``kind`` (its adjective is drawn from ``rng``, not measured on the clip):
    one of `audio_caption_texts`."""
    speed = ("slow", "fast")[int(rng.integers(0, 2))]
    pitch = ("low", "high")[int(rng.integers(0, 2))]
    if kind == "tone":
        return f"a steady {pitch} tone"
    if kind == "chirp":
        return f"a {('rising', 'falling')[int(rng.integers(0, 2))]} chirp"
    if kind == "noise":
        return f"{('a few', 'several')[int(rng.integers(0, 2))]} bursts of noise"
    return f"a {speed} rhythm of clicks"


def audio_caption_texts() -> list[str]:
    """Every caption `describe` can write (a tiny model's tokenizer is trained on them)."""
    return ([f"a steady {p} tone" for p in ("low", "high")] + [f"a {d} chirp" for d in ("rising", "falling")]
            + [f"{n} bursts of noise" for n in ("a few", "several")]
            + [f"a {s} rhythm of clicks" for s in ("slow", "fast")] + [f"the sound of {kind}" for kind in SOUND_KINDS])


def write_audio_caption_corpus(
    root: str | Path, n: int, seed: int = 0, *, seconds: float = 1.0,
    formats: Sequence[str] = ("wav", "flac"), sampling_rates: Sequence[int] = (48000, 16000),
) -> Path:
    """``root/clips.jsonl`` with ``n`` audio–caption pairs (``{"audio": "clips/0000.wav", "text": ...}``),
    the clips under ``root/clips/``, kinds taken in turn from `SOUND_KINDS`. Returns the manifest path."""
    import json

    root = Path(root)
    lines = []
    for i in range(n):
        kind = SOUND_KINDS[i % len(SOUND_KINDS)]
        rng = _stream(seed, "caption", str(i))
        ext, rate = formats[i % len(formats)], sampling_rates[i % len(sampling_rates)]
        relative = f"clips/{i:04d}.{ext}"
        write_audio(root / relative, sound(kind, seconds, rate, rng), rate)
        lines.append(json.dumps({"audio": relative, "text": describe(kind, rng)}))
    manifest = root / "clips.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
