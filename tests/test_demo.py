"""The offline demo end to end (quick size): every file and row, numbers in range, cached base reused."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from modaltune.testing.demo import KEEP, STRATEGIES, run_demo

KEYS = {"strategy", "trainable_params", "accuracy", "seconds"}


def _console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=120), text


@pytest.mark.slow
def test_quick_demo_writes_every_output_and_reuses_the_cached_base(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MODALTUNE_CACHE", str(cache))
    output = tmp_path / "demo"

    console, text = _console()
    results = run_demo(output, quick=True, console=console)

    assert "pretrained base model cached" in text.getvalue()
    for name in ("demo_results.json", "report.html", "plots/comparison.png", "data/source/captions.jsonl"):
        assert (output / name).is_file(), name
    for split in ("train", "val", "test"):
        assert any((output / "data" / "target" / split).glob("*/*.png")), split

    rows = json.loads((output / "demo_results.json").read_text())
    assert rows == results
    assert [r["strategy"] for r in rows] == [*STRATEGIES, KEEP]
    for row in rows:
        assert KEYS <= row.keys()
        assert 0.0 <= row["accuracy"] <= 1.0 and math.isfinite(row["accuracy"])
        assert row["seconds"] >= 0.0
        assert isinstance(row["trainable_params"], int) and row["trainable_params"] >= 0
        assert (Path(row["run_dir"]) / "metrics.json").is_file()
    by_name = {r["strategy"]: r for r in rows}
    assert sum(r["advisor_pick"] for r in rows) == 1  # the advisor's pick is marked
    for row in rows:  # the forgetting column: old-task accuracy before and after
        assert 0.0 <= row["old_task_accuracy"] <= 1.0
        if row["strategy"] == "scratch":
            assert row["forgetting"] is None  # scratch never had the base model's knowledge
        else:
            assert row["forgetting"] == pytest.approx(row["old_task_before"] - row["old_task_accuracy"], abs=1e-6)
    assert by_name["zero-shot"]["forgetting"] == 0.0
    assert by_name[KEEP]["wise_ft_alpha"] is not None
    assert by_name["zero-shot"]["trainable_params"] == 0
    assert 0 < by_name["linear-probe"]["trainable_params"] < by_name["full"]["trainable_params"]
    assert 0 < by_name["lora"]["trainable_params"] < by_name["full"]["trainable_params"]

    report = (output / "report.html").read_text()
    for strategy in STRATEGIES:
        assert strategy in report
    assert "data:image/png;base64," in report

    # The vision-language section: a VQA and a captioning run, each with its own report of samples.
    vl = json.loads((output / "demo_vl_results.json").read_text())
    assert [r["task"] for r in vl] == ["vqa", "caption"]
    assert set(vl[0]["trained"]) == {"vqa_accuracy", "exact_match"} and vl[0]["example"]["question"]
    assert {"bleu_4", "cider"} <= set(vl[1]["trained"]) and vl[1]["example"]["references"]
    for r in vl:
        assert "Sample predictions" in Path(r["report"]).read_text()
    assert "Visual question answering and captioning" in report

    # The base model is cached once; a second demo (into the same folder) uses it and says so.
    entries = [p for p in (cache / "demo-base").iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no leftover temp dir
    stamp = (entries[0] / "demo_base.json").stat().st_mtime_ns

    console, text = _console()
    again = run_demo(output, quick=True, console=console)

    assert "reusing the cached base model" in text.getvalue()
    assert "skipping source corpus and pretraining" in text.getvalue()
    assert [p for p in (cache / "demo-base").iterdir()] == entries
    assert (entries[0] / "demo_base.json").stat().st_mtime_ns == stamp
    assert [r["strategy"] for r in again] == [*STRATEGIES, KEEP]
    # Same cached base, seed and data: the same numbers.
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in results]


def test_demo_refuses_an_output_folder_it_did_not_write(tmp_path: Path) -> None:
    from modaltune.errors import ConfigError

    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match="not written by the demo"):
        run_demo(tmp_path, quick=True, console=_console()[0])
