"""Plots are real PNGs; report.html shows the numbers, embeds the plots and escapes user text; sample
predictions show their media: an image thumbnail, or a clip's spectrogram and a player that decodes to it."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from modaltune import report
from modaltune.data.media.audio import resample
from modaltune.metrics import classification_metrics
from modaltune.plots import plot_confusion_matrix, plot_history, plot_strategy_comparison
from modaltune.report import PLAYER_MAX_RATE, PLAYER_MAX_SECONDS, sample_sections, write_report
from modaltune.testing.synthetic_audio import stereo, tone, write_audio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 1000  # a blank or truncated image would be far smaller


def _history() -> list[dict]:
    steps = [{"kind": "step", "step": s, "epoch": s // 10, "loss": 2 / (s + 1), "lr": 1e-4} for s in range(20)]
    evals = [
        {"kind": "eval", "step": s, "epoch": s // 10, "accuracy": 0.5 + s / 100, "val_loss": 1 / s}
        for s in (10, 20)
    ]
    return steps + evals


def test_plot_history_writes_loss_lr_and_metrics(tmp_path: Path) -> None:
    written = plot_history(_history(), tmp_path / "plots")

    assert [p.name for p in written] == ["loss.png", "lr.png", "metrics.png"]
    for path in written:
        _assert_png(path)


def test_plot_history_skips_plots_without_data(tmp_path: Path) -> None:
    # No lr and no eval metrics besides val_loss: only the loss plot has something to show.
    history = [{"kind": "step", "step": 1, "loss": 1.0}, {"kind": "eval", "step": 1, "epoch": 0, "val_loss": 0.9}]

    assert [p.name for p in plot_history(history, tmp_path)] == ["loss.png"]
    assert plot_history([], tmp_path / "empty") == []
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("n", [3, 40])
def test_plot_confusion_matrix(tmp_path: Path, n: int) -> None:
    cm = [[(i * 7 + j) % 5 for j in range(n)] for i in range(n)]
    labels = [EVIL] + [f"class {i}" for i in range(1, n)]

    path = plot_confusion_matrix(cm, labels, tmp_path / "cm.png")

    _assert_png(path)


def test_plot_confusion_matrix_rejects_mismatched_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3×3"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "cm.png")


def test_plot_strategy_comparison(tmp_path: Path) -> None:
    rows = [
        {"strategy": "zero-shot", "accuracy": 0.5, "seconds": 0.0},
        {"strategy": "linear-probe", "accuracy": 0.8, "seconds": 12.0},
        {"strategy": "full", "accuracy": None, "error": "out of memory"},
    ]
    path = plot_strategy_comparison(rows, tmp_path / "comparison.png", "accuracy")

    assert path is not None
    _assert_png(path)
    assert plot_strategy_comparison(rows, tmp_path / "none.png", "macro_f1") is None
    assert not (tmp_path / "none.png").exists()


def _write_demo_report(run_dir: Path) -> str:
    labels = ["cat", "dog", EVIL]
    metrics = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2], labels)
    metrics["zero_shot"] = {"accuracy": 0.5, "macro_f1": 0.4}
    plot_confusion_matrix(metrics["confusion_matrix"], labels, run_dir / "plots" / "confusion_matrix.png")
    data_report = {
        "rows_read": 12,
        "rows_ok": 10,
        "skipped": [
            {"id": "a.jpg", "reason": "decode_error", "detail": "truncated"},
            {"id": "b.jpg", "reason": "decode_error", "detail": "empty"},
        ],
        "label_counts": {"cat": 4, "dog": 3, EVIL: 3},
    }
    path = write_report(
        run_dir,
        title=f"Run {EVIL}",
        config={"task": "classify", "train": {"lr": 3e-5, "epochs": 2}, "labels": labels},
        data_report=data_report,
        metrics=metrics,
        history=_history(),
        sections=[("Advisor", "<p>picked <b>lora</b></p>")],
    )
    assert path == run_dir / "report.html"
    return path.read_text(encoding="utf-8")


def _cells(html: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    match = re.search(rf"<tr><td[^>]*>{re.escape(first)}</td>(.*?)</tr>", html, re.S)
    assert match, f"no row {first!r}"
    return re.findall(r"<td[^>]*>(.*?)</td>", match.group(1))


def test_report_shows_metrics_baseline_and_data(tmp_path: Path) -> None:
    html = _write_demo_report(tmp_path)

    assert _cells(html, "accuracy")[0] == "0.7500"
    assert _cells(html, "macro_f1")[0] == "0.7778"
    # zero-shot baseline side by side with this run, with the change
    assert "Zero shot vs this run" in html
    assert re.search(r"<td[^>]*>accuracy</td>\s*<td[^>]*>0.5000</td>\s*<td[^>]*>0.7500</td>\s*"
                     r"<td[^>]*>\+0.2500</td>", html)
    # per-class table: precision, recall, f1, support
    assert _cells(html, "dog") == ["0.5000", "1.0000", "0.6667", "1"]
    # data: skipped rows counted by reason, label counts, a tiny lr not shown as 0.0000
    assert _cells(html, "decode_error")[0] == "2"
    assert _cells(html, "rows_read") == ["12"]
    assert _cells(html, "train.lr") == ["3e-05"]
    assert "<p>picked <b>lora</b></p>" in html  # caller-made sections go in as given


def test_report_embeds_every_plot(tmp_path: Path) -> None:
    html = _write_demo_report(tmp_path)

    # history curves were drawn because plots/loss.png did not exist yet
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["confusion_matrix.png", "loss.png", "lr.png", "metrics.png"]
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(pngs)
    assert all(base64.b64decode(data)[:8] == PNG_MAGIC for data in embedded)
    # self-contained: nothing fetched from elsewhere
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<(link|script)\b", html)


def test_report_escapes_user_text(tmp_path: Path) -> None:
    html = _write_demo_report(tmp_path)

    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<title>Run &lt;script&gt;" in html


def test_report_without_data_history_or_plots(tmp_path: Path) -> None:
    path = write_report(tmp_path, title="bare", config={}, data_report=None, metrics={"r_mean": 0.5}, history=[])

    html = path.read_text()
    assert _cells(html, "r_mean") == ["0.5000"]
    assert "data:image/png" not in html and "<h2>Data</h2>" not in html


# --------------------------------------------------------------------------- sample predictions


def _samples_html(metrics: dict) -> str:
    [(heading, html)] = sample_sections(metrics)
    assert heading == "Sample predictions"
    return html


def _rows(html: str) -> list[str]:
    return re.findall(r"<tr>(.*?)</tr>", html, re.S)


def _tds(row: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)


def _png(uri_data: str) -> np.ndarray:
    data = base64.b64decode(uri_data)
    assert data[:8] == PNG_MAGIC
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)


def _players(html: str) -> list[tuple[np.ndarray, int]]:
    """(samples, rate) of every <audio controls> player, decoded from its WAV data URI."""
    found = re.findall(r'<audio controls[^>]*\ssrc="data:audio/wav;base64,([A-Za-z0-9+/=]+)"', html)
    out = []
    for data in found:
        samples, rate = sf.read(io.BytesIO(base64.b64decode(data)), dtype="float32")
        out.append((samples, rate))
    return out


def _spectrograms(html: str) -> list[np.ndarray]:
    return [_png(d) for d in re.findall(r'<img alt="spectrogram of [^"]*"[^>]*src="data:image/png;base64,'
                                        r'([A-Za-z0-9+/=]+)"', html)]


def test_image_samples_show_thumbnail_question_base_and_references(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    Image.new("RGB", (300, 150), (200, 10, 10)).save(path)
    metrics = {
        "samples": [{"id": "r1", "image": str(path), "question": "what colour?", "prediction": "red",
                     "references": ["red", "crimson"]}],
        "zero_shot": {"samples": [{"id": "r1", "prediction": "blue"}]},
    }

    html = _samples_html(metrics)

    header, row = _rows(html)
    assert header == ("<th>image</th><th>question</th><th>this model</th><th>base model (zero-shot)</th>"
                      "<th>reference(s)</th>")
    cells = _tds(row)
    assert cells[1:] == ["what colour?", "<b>red</b>", "blue", "red<br>crimson"]
    [thumb] = re.findall(r'<img alt="[^"]*red.png" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', cells[0])
    assert _png(thumb).shape == (48, 96)  # longer side down to the thumbnail size, aspect kept
    assert "<audio" not in html


def test_audio_sample_embeds_a_player_that_decodes_to_the_clip(tmp_path: Path) -> None:
    path = tmp_path / "beep.wav"
    expected = write_audio(path, tone(440, 1.0, 16_000), 16_000)
    metrics = {
        "samples": [{"id": "beep", "audio": str(path), "prediction": "siren", "score": 0.873,
                     "references": ["siren"]}],
        "zero_shot": {"samples": [{"id": "beep", "prediction": "rain", "score": 0.4}]},
    }

    html = _samples_html(metrics)

    header, row = _rows(html)
    assert header.startswith("<th>clip</th><th>this model</th><th>base model (zero-shot)</th>")
    assert _tds(row)[1:] == ["<b>siren (0.87)</b>", "rain (0.40)", "siren"]
    [(samples, rate)] = _players(html)
    assert rate == 16_000
    np.testing.assert_array_equal(samples, expected)  # a 16-bit clip goes into the player bit-exactly
    [spectrogram] = _spectrograms(html)
    assert spectrogram.shape == (96, 192)
    assert "1.0 s" in html and "shortened" not in html


def test_spectrogram_energy_row_follows_the_pitch(tmp_path: Path) -> None:
    write_audio(tmp_path / "low.wav", tone(300, 0.5, 16_000), 16_000)
    write_audio(tmp_path / "high.flac", tone(4000, 0.5, 16_000), 16_000)
    metrics = {"samples": [
        {"id": "low", "audio": str(tmp_path / "low.wav"), "prediction": "low", "references": ["low"]},
        {"id": "high", "media": {"audio": str(tmp_path / "high.flac")}, "prediction": "high",
         "references": ["high"]},
    ]}

    low, high = _spectrograms(_samples_html(metrics))

    def loudest_row(image: np.ndarray) -> int:
        return int(image.mean(axis=1).argmax())  # row 0 is the top: the highest frequencies

    assert not np.array_equal(low, high)
    assert loudest_row(low) > loudest_row(high) + 20
    assert loudest_row(low) > 48 > loudest_row(high)  # low tone in the lower half, high tone in the upper


def test_long_stereo_clip_is_shortened_downmixed_and_resampled(tmp_path: Path) -> None:
    rate = 32_000
    left, right = tone(500, 10.5, rate), tone(500, 10.5, rate, amplitude=0.1)
    path = tmp_path / "long.wav"
    expected = write_audio(path, stereo(left, right), rate).mean(axis=1)

    html = _samples_html({"samples": [{"id": "l", "audio": str(path), "prediction": "x", "references": []}]})

    [(samples, player_rate)] = _players(html)
    assert player_rate == PLAYER_MAX_RATE < rate
    assert len(samples) == round(PLAYER_MAX_SECONDS * PLAYER_MAX_RATE)
    # the first 10 s of the down-mixed clip, resampled: same sound up to resampling and 16-bit rounding
    reference = resample(expected[: int(PLAYER_MAX_SECONDS * rate)], rate, PLAYER_MAX_RATE)
    assert np.abs(samples[100:-100] - reference[100:-100]).max() < 2e-3
    assert "first 10.0 s of 10.5 s (shortened)" in html


def test_unreadable_clips_and_unknown_media_get_a_cell_not_a_crash(tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    good = tmp_path / "ok.wav"
    write_audio(good, tone(440, 0.3, 8_000), 8_000)
    metrics = {"samples": [
        {"id": "t", "audio": str(text), "prediction": "a", "references": ["a"]},
        {"id": "m", "audio": str(tmp_path / "missing.wav"), "prediction": "b", "references": ["b"]},
        {"id": "v", "media": {"video": "clip.mp4"}, "prediction": "c", "references": ["c"]},
        {"id": "n", "prediction": "d", "references": ["d"]},
        {"id": "g", "audio": str(good), "prediction": "e", "references": ["e"]},
    ]}

    html = _samples_html(metrics)

    first_cells = [_tds(r)[0] for r in _rows(html)[1:]]
    assert first_cells[:4] == ["(clip unreadable: not_audio)", "(clip unreadable: missing_file)",
                               "(no preview for video)", "(no media)"]
    assert len(_players(first_cells[4])) == 1
    assert _rows(html)[0].startswith("<th>media</th>")  # audio and video: no single kind to name


def test_sample_text_is_escaped(tmp_path: Path) -> None:
    metrics = {"samples": [{"id": 1, "audio": str(tmp_path / f"{EVIL}.wav"), "prediction": EVIL,
                            "references": [EVIL, 3]}]}

    html = _samples_html(metrics)

    assert EVIL not in html
    assert "&lt;script&gt;" in html and "<br>3</td>" in html


def test_a_new_media_kind_plugs_in_through_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report.samples, "_SAMPLE_RENDERERS", dict(report.samples._SAMPLE_RENDERERS))

    @report.register_sample_renderer("video", "video")
    def video_cell(ref: list[str], thumbnail: int) -> str:
        return f"<i>{len(ref)} frames at {thumbnail}px</i>"

    metrics = {"samples": [{"id": "v", "media": {"video": ["f0", "f1"]}, "prediction": "run",
                            "references": ["run"]}]}

    header, row = _rows(_samples_html(metrics))
    assert header.startswith("<th>video</th>")
    assert _tds(row)[0] == "<i>2 frames at 96px</i>"


def test_report_with_audio_samples_stays_self_contained(tmp_path: Path) -> None:
    clip = tmp_path / "data" / "beep.ogg"
    write_audio(clip, tone(880, 0.5, 22_050), 22_050)
    metrics = {"accuracy": 1.0, "samples": [{"id": "b", "audio": str(clip), "prediction": "beep",
                                             "references": ["beep"]}]}

    path = write_report(tmp_path / "run", title="audio", config={}, data_report=None, metrics=metrics,
                        history=[], sections=sample_sections(metrics))

    html = path.read_text()
    assert len(_players(html)) == 1 and len(_spectrograms(html)) == 1
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<(link|script)\b", html)
