"""Audio decoding (`data.media.audio`) and the media decoder registry, on sounds made in the test."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modaltune.data import media
from modaltune.data.formats import IMAGE_EXTENSIONS
from modaltune.data.media import (
    AudioDecoder,
    MediaDecoder,
    MediaError,
    audio_info,
    check_audio,
    get_decoder,
    load_audio,
    media_kind,
    register_decoder,
)
from modaltune.data.validate import REASONS
from modaltune.testing import synthetic_audio as sa

AUDIO_REASONS = ("not_audio", "corrupt_audio", "empty_audio", "audio_too_long")


def _signal(rate: int, seconds: float = 0.25, seed: int = 0) -> np.ndarray:
    """A busy test signal reaching full scale: a tone, a chirp and noise bursts, clipped to [-1, 1]."""
    mix = (
        sa.tone(440, seconds, rate, amplitude=0.6)
        + sa.chirp(200, 0.4 * rate, seconds, rate, amplitude=0.5)
        + sa.noise_burst(seconds, rate, seed=seed, amplitude=0.6)
    )
    return np.clip(mix, -1.0, 1.0).astype(np.float32)


def _reason(fn, *args, **kwargs) -> str:
    with pytest.raises(MediaError) as info:
        fn(*args, **kwargs)
    return info.value.reason


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


# --- every format and bit depth decodes to the samples written ---------------------------------------


@pytest.mark.parametrize(
    "ext, subtype, rate",
    [
        ("wav", "PCM_U8", 8000),
        ("wav", "PCM_16", 16000),
        ("wav", "PCM_24", 22050),
        ("wav", "PCM_32", 44100),
        ("wav", "FLOAT", 48000),
        ("flac", "PCM_16", 11025),
        ("flac", "PCM_24", 96000),
        ("aiff", "PCM_16", 32000),
    ],
)
def test_lossless_formats_decode_exactly(tmp_path, ext, subtype, rate):
    path = tmp_path / f"clip.{ext}"
    expected = sa.write_audio(path, _signal(rate), rate, subtype=subtype)
    info = audio_info(path)
    assert (info.sampling_rate, info.channels, info.frames, info.subtype) == (rate, 1, len(expected), subtype)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    np.testing.assert_array_equal(out, expected)
    assert out.min() == -1.0 and out.max() <= 1.0  # full scale reached, nothing beyond


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_integer_wav_is_scaled_by_its_bit_depth(tmp_path, bits):
    """Written with the standard library, not libsndfile: 8-bit WAV is unsigned, wider ones signed."""
    full = 2 ** (8 * bits - 1)
    if bits == 1:
        stored, expected = np.array([0, 64, 128, 192, 255]), np.array([-1.0, -0.5, 0.0, 0.5, 127 / 128])
        raw = stored.astype(np.uint8).tobytes()
    else:
        stored = np.array([-full, -full // 2, 0, full // 2, full - 1])
        expected = stored / full
        raw = b"".join(int(v).to_bytes(bits, "little", signed=True) for v in stored)
    path = tmp_path / "int.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(bits)
        w.setframerate(8000)
        w.writeframes(raw)
    np.testing.assert_array_equal(load_audio(path), expected.astype(np.float32))


def test_float_wav_is_kept_as_stored_not_clipped(tmp_path):
    path = tmp_path / "hot.wav"
    values = np.array([0.0, 1.5, -2.0, 0.25], dtype=np.float32)
    sa.write_audio(path, values, 8000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), values)


@pytest.mark.parametrize("ext, rate", [("ogg", 44100), ("ogg", 16000), ("mp3", 48000), ("mp3", 22050)])
def test_lossy_formats_decode_close_to_the_tone_written(tmp_path, ext, rate):
    path = tmp_path / f"tone.{ext}"
    written = sa.write_audio(path, sa.tone(440, 0.5, rate, amplitude=0.5), rate)
    out = load_audio(path)
    assert len(out) == len(written)  # gapless: encoder delay and padding removed
    assert np.sqrt(np.mean((out - written) ** 2)) < 0.02  # about 25 dB under the tone
    assert abs(_peak_hz(out, rate) - 440) <= rate / len(out)


def test_stereo_is_down_mixed_by_averaging_the_channels(tmp_path):
    left, right = sa.tone(300, 0.2, 16000, amplitude=0.8), sa.chirp(500, 3000, 0.2, 16000, amplitude=0.4)
    path = tmp_path / "st.wav"
    expected = sa.write_audio(path, sa.stereo(left, right), 16000, subtype="PCM_24")
    assert audio_info(path).channels == 2
    np.testing.assert_allclose(load_audio(path), expected.mean(axis=1), atol=1e-7)
    flac = tmp_path / "st.flac"
    expected = sa.write_audio(flac, sa.stereo(left, left), 16000)
    np.testing.assert_array_equal(load_audio(flac), expected[:, 0])


def test_opposite_channels_cancel_to_silence_which_is_valid_audio(tmp_path):
    x = sa.tone(1000, 0.1, 8000)
    path = tmp_path / "anti.wav"
    sa.write_audio(path, sa.stereo(x, -x), 8000, subtype="FLOAT")
    assert not load_audio(path).any()
    silent = tmp_path / "silent.flac"
    sa.write_audio(silent, np.zeros(800, np.float32), 8000)
    assert len(load_audio(silent)) == 800


# --- resampling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("orig, target", [(16000, 48000), (48000, 16000), (44100, 48000), (22050, 16000)])
def test_resampling_changes_the_length_and_keeps_the_pitch(tmp_path, orig, target):
    path = tmp_path / "tone.flac"
    sa.write_audio(path, sa.tone(1000, 0.5, orig), orig)
    out = load_audio(path, sampling_rate=target)
    assert out.dtype == np.float32
    assert abs(len(out) - 0.5 * target) <= 1
    assert abs(_peak_hz(out, target) - 1000) <= target / len(out)
    assert 0.45 < np.abs(out[len(out) // 4 : -len(out) // 4]).max() < 0.55  # the amplitude survives too


def test_resampling_to_the_files_own_rate_changes_nothing(tmp_path):
    path = tmp_path / "x.wav"
    expected = sa.write_audio(path, _signal(16000), 16000)
    np.testing.assert_array_equal(load_audio(path, sampling_rate=16000), expected)


# --- reason codes -----------------------------------------------------------------------------------


def test_audio_reason_codes_are_documented():
    assert all(code in REASONS for code in AUDIO_REASONS)


def test_missing_and_empty_files(tmp_path):
    assert _reason(load_audio, tmp_path / "nope.wav") == "missing_file"
    assert _reason(check_audio, tmp_path) == "missing_file"  # a folder
    (tmp_path / "zero.mp3").write_bytes(b"")
    assert _reason(load_audio, tmp_path / "zero.mp3") == "empty_file"
    assert _reason(check_audio, tmp_path / "zero.mp3") == "empty_file"


def test_files_that_are_not_audio(tmp_path):
    (tmp_path / "notes.wav").write_text("this is a text file, not a sound\n" * 10)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "photo.wav", format="PNG")
    (tmp_path / "text.mp3").write_text("hello\n" * 100)
    (tmp_path / "zeros.flac").write_bytes(bytes(2000))
    for name in ("notes.wav", "photo.wav", "text.mp3", "zeros.flac"):
        assert _reason(load_audio, tmp_path / name) == "not_audio", name
        assert _reason(check_audio, tmp_path / name) == "not_audio", name


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_files_are_corrupt(tmp_path, ext, keep):
    full = tmp_path / f"full.{ext}"
    sa.write_audio(full, sa.tone(440, 1.0, 16000), 16000)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: int(len(data) * keep)])
    assert _reason(load_audio, cut) == "corrupt_audio"
    assert _reason(check_audio, cut) == "corrupt_audio"  # found without decoding it all
    check_audio(full)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_a_file_cut_inside_its_header_is_corrupt_not_foreign(tmp_path, ext):
    full = tmp_path / f"full.{ext}"
    sa.write_audio(full, sa.tone(440, 0.2, 16000), 16000)
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(full.read_bytes()[:30])
    assert _reason(load_audio, cut) == "corrupt_audio"


def test_non_finite_samples_are_corrupt(tmp_path):
    path = tmp_path / "nan.wav"
    sa.write_audio(path, np.array([0.1, np.nan, 0.2], dtype=np.float32), 8000, subtype="FLOAT")
    assert _reason(load_audio, path) == "corrupt_audio"


@pytest.mark.parametrize("ext", ["wav", "ogg"])
def test_zero_frames_is_empty_audio(tmp_path, ext):
    path = tmp_path / f"empty.{ext}"
    sa.write_audio(path, np.zeros(0, np.float32), 16000)
    assert path.stat().st_size > 0
    assert _reason(load_audio, path) == "empty_audio"
    assert _reason(check_audio, path) == "empty_audio"


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_too_long_is_found_from_the_header_without_decoding(tmp_path, ext, monkeypatch):
    import soundfile

    path = tmp_path / f"long.{ext}"
    sa.write_audio(path, sa.tone(440, 2.0, 16000), 16000)
    assert abs(audio_info(path).seconds - 2.0) < 1e-9
    assert len(load_audio(path, max_seconds=2.0)) == 32000  # exactly at the limit is fine

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the header says the clip is too long")

    monkeypatch.setattr(soundfile.SoundFile, "read", no_decoding)
    assert _reason(load_audio, path, max_seconds=1.5) == "audio_too_long"
    assert _reason(check_audio, path, max_seconds=1.5) == "audio_too_long"
    with pytest.raises(MediaError, match="--max-audio-seconds"):
        load_audio(path, max_seconds=1.5)


# --- the registry -----------------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test whatever it registers."""
    monkeypatch.setattr(media, "_DECODERS", dict(media._DECODERS))
    return media._DECODERS


def test_the_built_in_kinds_and_their_decoders(tmp_path):
    assert media.media_kinds() == ["audio", "image"]
    assert get_decoder("image").extensions == frozenset(IMAGE_EXTENSIONS)  # as the folder reader accepts
    assert {".wav", ".flac", ".ogg", ".mp3"} <= get_decoder("audio").extensions
    path = tmp_path / "a.wav"
    expected = sa.write_audio(path, sa.tone(440, 0.1, 16000), 16000)
    np.testing.assert_array_equal(get_decoder("audio").load(path), expected)
    assert len(get_decoder("audio").load(path, sampling_rate=48000)) == 4800
    assert get_decoder("audio").check(path, max_seconds=1) is None
    assert get_decoder("audio").check(path, max_seconds=1, max_pixels=1) is None  # other kinds' options: ignored
    Image.new("RGB", (4, 4)).save(tmp_path / "i.png")
    assert get_decoder("image").load(tmp_path / "i.png", max_seconds=0.001).size == (4, 4)
    with pytest.raises(MediaError) as info:
        get_decoder("image").check(tmp_path / "i.png", max_pixels=4)
    assert info.value.reason == "image_too_large"
    with pytest.raises(KeyError, match="video.*registered: audio, image"):
        get_decoder("video")


def test_register_rejects_a_duplicate_kind_or_a_claimed_extension(registry):
    with pytest.raises(ValueError, match="'audio' is registered already"):
        register_decoder(AudioDecoder())

    class Video(MediaDecoder):
        kind = "video"
        extensions = frozenset({".mp4", ".wav"})

        def load(self, path, **options):
            return path

    with pytest.raises(ValueError, match=r"\['.wav'\].*claimed by kind 'audio'"):
        register_decoder(Video())
    assert "video" not in registry


def test_a_new_kind_registers_and_is_sniffed(tmp_path, registry):
    class Video(MediaDecoder):
        kind = "video"
        extensions = frozenset({".mp4"})

        def load(self, path, **options):
            return "decoded"

        def sniff(self, head):
            return head[4:8] == b"ftyp"

    decoder = register_decoder(Video())
    assert get_decoder("video") is decoder and decoder.check(tmp_path) is None  # default check = load
    (tmp_path / "clip.bin").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(20))
    assert media_kind(tmp_path / "clip.bin") == "video"
    assert media_kind(tmp_path / "x.MP4") == "video"


def test_media_kind_by_extension_then_by_content(tmp_path):
    assert media_kind(tmp_path / "a.WAV") == "audio"  # the extension decides; the file need not exist
    assert media_kind(tmp_path / "b.flac") == "audio"
    assert media_kind(tmp_path / "c.jpeg") == "image"
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.wav", format="PNG")
    assert media_kind(tmp_path / "photo.wav") == "audio"  # and the audio decoder says not_audio
    for ext in ("wav", "flac", "ogg", "mp3"):
        real = tmp_path / f"s.{ext}"
        sa.write_audio(real, sa.tone(440, 0.1, 16000), 16000)
        disguised = tmp_path / f"{ext}.dat"
        disguised.write_bytes(real.read_bytes())
        assert media_kind(disguised) == "audio", ext
    Image.new("RGB", (8, 8)).save(tmp_path / "img.dat", format="PNG")
    assert media_kind(tmp_path / "img.dat") == "image"
    (tmp_path / "notes.txt").write_text("hello")
    assert media_kind(tmp_path / "notes.txt") is None
    assert media_kind(tmp_path / "missing.xyz") is None


def test_old_imports_keep_working_and_audio_libraries_load_lazily():
    code = (
        "import sys\n"
        "from modaltune.data.media import MediaError, load_image, check_image, to_rgb, DEFAULT_MAX_PIXELS\n"
        "from modaltune.data import MediaError as E, load_image as L, REASONS\n"
        "from modaltune.errors import DataError\n"
        "assert E is MediaError and issubclass(MediaError, DataError) and DEFAULT_MAX_PIXELS == 89_478_485\n"
        "assert 'soundfile' not in sys.modules and 'soxr' not in sys.modules, 'audio libraries imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)


# --- synthetic audio --------------------------------------------------------------------------------


def test_generators_are_deterministic_and_in_range():
    assert np.array_equal(sa.noise_burst(0.5, 8000, seed=3), sa.noise_burst(0.5, 8000, seed=3))
    assert not np.array_equal(sa.noise_burst(0.5, 8000, seed=3), sa.noise_burst(0.5, 8000, seed=4))
    clicks = sa.rhythm(120, 2.0, 8000)  # a click every 0.5 s
    onsets = np.flatnonzero(np.abs(clicks) > 0.1)
    assert {round(i / 8000, 1) for i in onsets} == {0.0, 0.5, 1.0, 1.5}
    for clip in (sa.tone(440, 0.3, 8000), sa.chirp(100, 3000, 0.3, 8000), clicks):
        assert clip.dtype == np.float32 and np.abs(clip).max() <= 1.0
    assert abs(_peak_hz(sa.tone(440, 1.0, 8000), 8000) - 440) <= 1


def test_classification_folder_mixes_formats_and_rates_and_its_classes_differ(tmp_path):
    root = sa.write_audio_classification_folder(tmp_path / "sounds", per_class=4, seed=1)
    sa.write_audio_classification_folder(tmp_path / "again", per_class=4, seed=1)
    files = sorted(root.rglob("*.*"))
    assert sorted({p.parent.name for p in files}) == sorted(sa.SOUND_KINDS)
    assert sorted({p.suffix for p in files}) == [".flac", ".mp3", ".ogg", ".wav"]
    assert {audio_info(p).sampling_rate for p in files} == {16000, 22050, 44100, 48000}
    assert {audio_info(p).channels for p in files} == {1, 2}
    for p in files:
        if p.suffix in (".wav", ".flac"):
            assert p.read_bytes() == (tmp_path / "again" / p.relative_to(root)).read_bytes()
    for label in sa.SOUND_KINDS:
        for p in sorted((root / label).iterdir()):
            clip = load_audio(p, sampling_rate=16000)
            assert abs(len(clip) - 16000) <= 1
            assert _describe(clip) == label, p


def _describe(clip: np.ndarray, rate: int = 16000, frame: int = 400) -> str:
    """Tell the four synthetic kinds apart from simple spectral facts (so a model can too)."""
    frames = clip[: len(clip) // frame * frame].reshape(-1, frame)
    power = np.abs(np.fft.rfft(frames * np.hanning(frame), axis=1)) ** 2 + 1e-12
    energy = power.sum(axis=1)
    active = energy > 0.05 * energy.max()
    flatness = float(np.median(np.exp(np.log(power).mean(axis=1))[active] / power.mean(axis=1)[active]))
    peaks = np.fft.rfftfreq(frame, 1 / rate)[power.argmax(axis=1)][active]
    if flatness > 0.2:
        return "noise"
    if active.mean() < 0.5:
        return "rhythm"
    return "chirp" if np.log2(peaks.max() / max(peaks.min(), 1.0)) > 1 else "tone"
