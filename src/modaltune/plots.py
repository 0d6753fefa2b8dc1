"""The plots (PNG) of a run: loss and learning-rate curves, validation metrics, confusion matrix,
strategy comparison; and the spectrogram thumbnail of an audio clip (`spectrogram_png`).

Plots are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas instead of through
``pyplot``: that needs no display, never switches the backend of a user's notebook or GUI, keeps
no global figure registry (nothing to leak or close) and is safe to call from the serve thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Number
from pathlib import Path
from typing import Any, SupportsFloat, cast

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: History keys that are axes, not series.
_AXIS_KEYS = {"step", "epoch", "kind"}
#: Above this many classes the confusion matrix drops its per-cell numbers (they would overlap).
_ANNOTATE_MAX_CLASSES = 30


# --------------------------------------------------------------------------- plotting helpers


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to fig: rendering never goes through pyplot
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def is_number(value: Any) -> bool:
    # bool is an int subclass but a flag, not a series; NaN/inf would break axis limits.
    # numbers.Number declares no __float__; a non-real one (complex) raises here, as float() always did.
    return (isinstance(value, Number) and not isinstance(value, bool)
            and math.isfinite(float(cast(SupportsFloat, value))))


def series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the rows that have a numeric value for it."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        if is_number(row.get(key)):
            xs.append(float(row.get("step", i)))
            ys.append(float(row[key]))
    return xs, ys


def _short(label: str, limit: int = 24) -> str:
    label = str(label)
    return label if len(label) <= limit else label[: limit - 1] + "…"


# --------------------------------------------------------------------------- plots


def plot_history(history: list[dict], out: Path) -> list[Path]:
    """Training curves from ``history.jsonl`` rows into the folder ``out``; returns the files written.

    Rows with ``kind == "step"`` (or no kind) are training steps, rows with ``kind == "eval"``
    are evaluations; any other kind is ignored. Writes ``loss.png`` (train ``loss`` and eval
    ``val_loss``), ``lr.png`` and ``metrics.png`` (one panel per other numeric eval key),
    skipping any plot that has no data.
    """
    steps = [r for r in history if r.get("kind", "step") == "step"]
    evals = [r for r in history if r.get("kind") == "eval"]
    out = Path(out)
    written: list[Path] = []

    train_loss, val_loss = series(steps, "loss"), series(evals, "val_loss")
    if train_loss[0] or val_loss[0]:
        fig = _figure(7, 4)
        ax = fig.add_subplot()
        if train_loss[0]:
            ax.plot(*train_loss, label="train loss", linewidth=1.2)
        if val_loss[0]:
            ax.plot(*val_loss, marker="o", label="val loss", linewidth=1.5)
        ax.set(xlabel="step", ylabel="loss", title="Loss")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out / "loss.png"))

    lr = series(steps, "lr")
    if lr[0]:
        fig = _figure(7, 3)
        ax = fig.add_subplot()
        ax.plot(*lr, linewidth=1.2)
        ax.set(xlabel="step", ylabel="learning rate", title="Learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.grid(alpha=0.3)
        written.append(_save(fig, out / "lr.png"))

    names = metric_names(evals)
    if names:
        written.append(_save(_metric_panels(evals, names), out / "metrics.png"))
    return written


def metric_names(evals: list[dict]) -> list[str]:
    """Numeric eval keys in first-seen order; val_loss already has its place in loss.png."""
    names: dict[str, None] = {}
    for row in evals:
        for key, value in row.items():
            if key not in _AXIS_KEYS and key != "val_loss" and is_number(value):
                names[key] = None
    return list(names)


def _metric_panels(evals: list[dict], names: list[str]) -> Figure:
    # One small panel per metric: metrics live on different scales (accuracy vs seconds).
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(3.6 * cols, 2.8 * rows)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(*series(evals, name), marker="o", linewidth=1.5)
        ax.set_title(_short(name, 40), fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Validation metrics")
    return fig


def plot_confusion_matrix(cm: list[list[int]], labels: list[str], out_file: Path) -> Path:
    """Confusion matrix heat map, rows = true class, columns = predicted, with counts in the cells.

    Up to 30 classes every cell is annotated (font shrinking with the class count); beyond that
    only the colours remain, since numbers would overlap.
    """
    n = len(labels)
    if len(cm) != n or any(len(row) != n for row in cm):
        raise ValueError(f"confusion matrix must be {n}×{n} to match the labels")
    side = min(4 + 0.35 * n, 20)
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8)

    tick_size = max(5, 10 - n // 8)
    names = [_short(label) for label in labels]
    ax.set_xticks(range(n), names, rotation=45 if n <= 10 else 90, ha="right" if n <= 10 else "center",
                  fontsize=tick_size)
    ax.set_yticks(range(n), names, fontsize=tick_size)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")

    if n <= _ANNOTATE_MAX_CLASSES:
        peak = max((v for row in cm for v in row), default=0)
        font = max(6, 12 - n // 4)
        for i, row in enumerate(cm):
            for j, count in enumerate(row):
                # White on dark cells, black on light ones, so every count stays legible.
                colour = "white" if peak and count > peak / 2 else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=font, color=colour)
    return _save(fig, out_file)


def plot_strategy_comparison(
    rows: list[dict], out_file: Path, metric_key: str, label_key: str = "strategy"
) -> Path | None:
    """Horizontal bars of ``metric_key`` per strategy, each bar labelled with its value.

    A second panel shows ``seconds`` when the rows have it (the cost side of the trade-off).
    Rows without a numeric ``metric_key`` (a failed strategy) are left out; returns None when
    no row has one.
    """
    rows = [r for r in rows if is_number(r.get(metric_key))]
    if not rows:
        return None
    names = [_short(r.get(label_key, "?"), 30) for r in rows]
    with_time = any(is_number(r.get("seconds")) for r in rows)
    height = 1.2 + 0.45 * len(rows)
    fig = _figure(10 if with_time else 6.5, height)
    panels = fig.subplots(1, 2 if with_time else 1, sharey=True, squeeze=False)[0]

    _bars(panels[0], names, [float(r[metric_key]) for r in rows], metric_key, "{:.4f}")
    if with_time:
        seconds = [float(r["seconds"]) if is_number(r.get("seconds")) else 0.0 for r in rows]
        _bars(panels[1], names, seconds, "seconds", "{:.1f}s", colour="tab:gray")
    panels[0].invert_yaxis()  # first strategy on top, in the order given
    return _save(fig, out_file)


def _bars(
    ax: Any, names: list[str], values: list[float], title: str, fmt: str, colour: str = "tab:blue"
) -> None:
    bars = ax.barh(range(len(names)), values, color=colour)
    ax.set_yticks(range(len(names)), names)
    ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3, fontsize=8)
    ax.set_xlim(0, max(values + [1e-9]) * 1.2)  # room for the value labels
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)


# --------------------------------------------------------------------------- spectrograms

#: Loudness range a spectrogram shows: anything more than this below its loudest bin is black.
SPECTROGRAM_TOP_DB = 80.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)  # HTK's mel scale


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _mel_filters(n_mels: int, n_fft: int, sampling_rate: int) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` triangular filters evenly spaced in mel from 0 Hz to Nyquist.

    A band narrower than one STFT bin (low bands at a low rate) takes the bin nearest its centre
    instead of staying empty, so no row of the spectrogram is a black stripe.
    """
    bins = np.fft.rfftfreq(n_fft, 1.0 / sampling_rate)
    edges = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(np.array(sampling_rate / 2.0))), n_mels + 2))
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - low) / np.maximum(centre - low, 1e-9)
    falling = (high - bins[None, :]) / np.maximum(high - centre, 1e-9)
    filters = np.clip(np.minimum(rising, falling), 0.0, None)
    for band in np.flatnonzero(filters.sum(axis=1) == 0):
        filters[band, int(np.argmin(np.abs(bins - centre[band, 0])))] = 1.0
    return filters


def log_mel_spectrogram(samples: np.ndarray, sampling_rate: int, *, n_mels: int = 64,
                        top_db: float = SPECTROGRAM_TOP_DB) -> np.ndarray:
    """The log-mel power spectrogram of mono ``samples``: ``(n_mels, frames)`` in dB relative to its
    loudest bin, floored at ``-top_db``; row 0 is the lowest band.

    Plain numpy: a Hann-windowed STFT with a window of about 25 ms (a power of two: 512 samples at
    16 or 22.05 kHz, 1024 at 44.1 or 48 kHz) and a hop of a quarter window, clip zero-padded at both
    ends so the first and last samples are centred in a frame. Digital silence gives all ``-top_db``.
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if sampling_rate <= 0:
        raise ValueError(f"sampling rate must be positive, got {sampling_rate}")
    n_fft = int(2 ** max(6, round(math.log2(sampling_rate * 0.025))))
    hop = n_fft // 4
    x = np.pad(x, (n_fft // 2, n_fft // 2))
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=1)) ** 2  # periodic Hann
    mel = _mel_filters(n_mels, n_fft, sampling_rate) @ power.T
    if not mel.max() > 0:  # digital silence: nothing is loud, not everything is as loud as the peak
        return np.full(mel.shape, -top_db)
    db = 10.0 * np.log10(np.maximum(mel, 1e-12))
    return np.clip(db - db.max(), -top_db, 0.0)


def spectrogram_png(samples: np.ndarray, sampling_rate: int, *, width: int = 192, height: int = 96) -> bytes:
    """A ``width`` × ``height`` PNG of the clip's `log_mel_spectrogram`: time left to right, low
    frequencies at the bottom, loudness in the perceptually uniform "magma" colour map (brighter is
    louder). Drawn straight from the array with PIL: no axes, no figure, a few milliseconds."""
    import io

    from matplotlib import colormaps
    from PIL import Image

    db = log_mel_spectrogram(samples, sampling_rate)
    level = (db[::-1] + SPECTROGRAM_TOP_DB) / SPECTROGRAM_TOP_DB  # flipped: high bands on top; 0..1
    scaled = Image.fromarray(level.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR)
    index = np.clip(np.rint(np.asarray(scaled) * 255.0), 0, 255).astype(np.uint8)
    lut = (colormaps["magma"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(lut[index]).save(buffer, format="PNG")
    return buffer.getvalue()
