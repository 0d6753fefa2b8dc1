"""Plots are real PNGs; report.html shows the numbers, embeds the plots and escapes user text."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from modaltune.metrics import classification_metrics
from modaltune.plots import plot_confusion_matrix, plot_history, plot_strategy_comparison
from modaltune.report import write_report

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
