"""The offline demo end to end (quick size): every file and row of both regimes, numbers in range,
the standard errors and the advisor's pick in the tables, cached base reused."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from modaltune.testing.demo import KEEP, STRATEGIES, run_demo
from modaltune.testing.demo.clip import (
    FULL_MORE_LABELS,
    QUICK_BASE,
    QUICK_TARGETS,
    ensure_base_model,
    pretrain_base,
    run_strategy,
)
from modaltune.testing.demo.workers import THREADS, DemoError, Workers, threads
from modaltune.trainer.callbacks import KILL_ENV

KEYS = {"strategy", "trainable_params", "accuracy", "seconds"}


def _console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=200), text


@pytest.mark.slow
def test_quick_demo_writes_every_output_and_reuses_the_cached_base(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MODALTUNE_CACHE", str(cache))
    output = tmp_path / "demo"

    console, text = _console()
    results = run_demo(output, quick=True, console=console)

    said = " ".join(text.getvalue().split())  # the console wraps long lines
    # Pretrained in a worker process beside the sections, its progress in its own log, summarised here.
    assert "pretrained in" in said and "log " in said
    log = (output / "logs" / "pretraining.log").read_text()
    assert "pretraining: step" in log and "pretrained base model cached in" in " ".join(log.split())
    for name in ("demo_vl_results.log", "demo_audio_results.log", "few-labels-full.log",
                 "more-labels-advisor-last-n.log"):
        assert (output / "logs" / name).is_file(), name
    few, more = QUICK_TARGETS
    assert few.train_per_class < more.train_per_class
    for name in ("demo_results.json", "report.html", "plots/comparison_few-labels.png",
                 "plots/comparison_more-labels.png", "data/source/captions.jsonl"):
        assert (output / name).is_file(), name
    for spec in QUICK_TARGETS:
        for split in ("train", "val", "test"):
            assert any((output / "data" / "target" / spec.slug / split).glob("*/*.png")), (spec.slug, split)
        assert len(list((output / "data" / "target" / spec.slug / "train").glob("*/*.png"))) == \
            spec.train_per_class * len(spec.classes)

    rows = json.loads((output / "demo_results.json").read_text())
    assert rows == results
    # Two regimes: few labels (every strategy and the forgetting row), then more labels (the full demo trains
    # every strategy but LoRA there; the quick one the two baselines and last-n, the strategy the regime is about).
    assert FULL_MORE_LABELS.strategies == ("zero-shot", "linear-probe", "last-n", "full", "scratch")
    assert more.strategies == ("zero-shot", "last-n", "scratch")
    assert [(r["regime"], r["strategy"]) for r in rows] == \
        [("few labels", s) for s in (*STRATEGIES, KEEP)] + [("more labels", s) for s in more.strategies]
    for regime in ("few labels", "more labels"):
        mine = [r for r in rows if r["regime"] == regime]
        assert sum(r["advisor_pick"] for r in mine) == 1  # the advisor's pick is marked in each regime
        (zero_shot,) = [r for r in mine if r["strategy"] == "zero-shot"]
        n = mine[0]["test_rows"]
        assert n == 3 * 4 and all(r["test_rows"] == n for r in mine)
        for r in mine:  # the standard error of the test split, and the gap to zero-shot against 2 of its SE
            assert r["standard_error"] == pytest.approx(math.sqrt(r["accuracy"] * (1 - r["accuracy"]) / n))
            assert r["vs_zero_shot"] == pytest.approx(r["accuracy"] - zero_shot["accuracy"])
            assert r["two_se_zero_shot"] == pytest.approx(2 * zero_shot["standard_error"])
            assert r["clearly_above_zero_shot"] == (r["vs_zero_shot"] > r["two_se_zero_shot"])
        (last_n,) = [r for r in mine if r["strategy"] == "last-n"]
        if any(r["advisor_pick"] and r["strategy"] == "last-n" for r in mine):
            assert last_n["layers"] == last_n["advisor_layers"]  # the row is the depth the advisor asked for
    console_text = text.getvalue()
    marked = [line for line in console_text.splitlines() if "← advisor" in line and "│" in line]
    assert len(marked) == 2 and "few labels: 3 shapes" in console_text  # one table row per regime
    assert "more labels: 3 shapes" in console_text and "test accuracy ± SE" in console_text
    assert "standard error of the test split" in console_text and "Transfer" in console_text
    rows = [r for r in rows if r["regime"] == "few labels"]  # the forgetting story is told there
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
    assert "Results, few labels" in report and "Results, more labels" in report and "± SE" in report
    assert "data:image/png;base64," in report

    # The vision-language section: a VQA and a captioning run, each with its own report of samples.
    vl = json.loads((output / "demo_vl_results.json").read_text())
    assert [r["task"] for r in vl] == ["vqa", "caption"]
    assert set(vl[0]["trained"]) == {"vqa_accuracy", "exact_match"} and vl[0]["example"]["question"]
    assert {"bleu_4", "cider"} <= set(vl[1]["trained"]) and vl[1]["example"]["references"]
    for r in vl:
        assert "Sample predictions" in Path(r["report"]).read_text()
    assert "Visual question answering and captioning" in report

    # The audio section: a CLAP classifier from zero-shot to trained, its report playing sample clips.
    sounds = json.loads((output / "demo_audio_results.json").read_text())
    assert [r["strategy"] for r in sounds] == ["linear-probe", "full"]
    for r in sounds:
        assert 0.0 <= r["zero_shot"] <= 1.0 and 0.0 <= r["trained"] <= 1.0
        assert r["example"]["prediction"] in {"tone", "chirp", "noise", "rhythm"}
        assert "<audio controls" in Path(r["report"]).read_text()
    assert "Sound classification (CLAP)" in report

    # The base model is cached once; asked for again it is reused, and says so.
    entries = [p for p in (cache / "demo-base").iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no leftover temp dir
    stamp = (entries[0] / "demo_base.json").stat().st_mtime_ns

    console, text = _console()
    base = ensure_base_model(QUICK_BASE, tmp_path / "source-again", console=console, timings={})

    said = " ".join(text.getvalue().split())  # the console wraps long lines
    assert base.cached and base.run_dir == entries[0]
    assert "reusing the cached base model" in said and "skipping source corpus and pretraining" in said
    assert not (tmp_path / "source-again").exists()  # no source corpus drawn
    assert [p for p in (cache / "demo-base").iterdir()] == entries
    assert (entries[0] / "demo_base.json").stat().st_mtime_ns == stamp
    # Same cached base, seed and data: the same numbers (a trained strategy, run again beside the first,
    # here in this process at the demo workers' thread count).
    first = next(r for r in results if r["regime"] == "few labels" and r["strategy"] == "last-n")
    with threads(THREADS):
        again = run_strategy("last-n", base, output / "data" / "target" / few.slug, few, tmp_path / "again",
                             old=output / "data" / "old", console=console, layers=first["layers"])
    assert (again["accuracy"], again["macro_f1"], again["old_task_accuracy"]) == \
        (first["accuracy"], first["macro_f1"], first["old_task_accuracy"])


@pytest.mark.slow
def test_a_failed_or_killed_background_pretraining_names_its_log_and_caches_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODALTUNE_CACHE", str(tmp_path / "cache"))  # the spawned workers inherit it
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the source corpus folder should go")
    log = tmp_path / "logs" / "pretraining.log"
    with pytest.raises(DemoError) as failed:
        with Workers(1, threads=None) as workers:
            workers.submit("pretraining the base model", log, pretrain_base, QUICK_BASE, blocked).result()
    message = str(failed.value)
    assert "pretraining the base model failed in a worker process" in message and str(log) in message
    assert "Traceback" in log.read_text()  # the whole traceback is in the log, its tail in the message

    # Killed outright mid-training (as the kernel kills for memory): an error too, not a wait for ever,
    # and no base model a later demo would take for finished.
    monkeypatch.setenv(KILL_ENV, "2")
    with pytest.raises(DemoError, match="failed in a worker process"):
        with Workers(1, threads=None) as workers:
            workers.submit("pretraining the base model", log, pretrain_base, QUICK_BASE, tmp_path / "source").result()
    assert [p for p in (tmp_path / "cache" / "demo-base").iterdir() if not p.name.startswith(".")] == []


def test_demo_refuses_an_output_folder_it_did_not_write(tmp_path: Path) -> None:
    from modaltune.errors import ConfigError

    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match="not written by the demo"):
        run_demo(tmp_path, quick=True, console=_console()[0])


def test_base_key_follows_the_code_not_its_annotations_comments_or_docstrings():
    from modaltune.testing import synthetic, tiny_clip
    from modaltune.testing.demo.clip_key import _KEYED_AS, _source_hash, code_fingerprint

    plain = "def f(x):\n    '''Add one.'''\n    return x + 1\n"
    typed = "from typing import Any\n\n\ndef f(x: Any) -> Any:  # one more\n    return x + 1  # type: ignore\n"
    changed = "def f(x):\n    return x + 2\n"
    assert code_fingerprint(plain) == code_fingerprint(typed) != code_fingerprint(changed)
    # The defining files still stand for what they stood for when the recorded base models were built
    # (benchmarks/RESULTS.md: base 146ff6d99d033a4d), whatever typing-only edits they received since.
    assert _source_hash(tiny_clip.__file__) == _KEYED_AS[code_fingerprint(Path(tiny_clip.__file__).read_text())]
    assert _source_hash(tiny_clip.__file__) == "4a3b90e6045828ba30788b09b3e486a8f948061b8d92545faab94e9c64e1c27b"
    assert _source_hash(synthetic.__file__) == "049ac577c44b42d1d7bea5e0860e17339cc6317a931846aabc709f4adc4fb8c4"


def test_the_demo_pretrains_its_own_base_and_the_transfer_benchmark_keeps_the_recorded_one():
    from dataclasses import replace

    from modaltune.cli import load_benchmark
    from modaltune.testing.demo.clip import FULL_BASE, base_key

    pinned = load_benchmark("bench_transfer", "bench-transfer").bench_base()
    # Every number of the transfer benchmark belongs to the 48px base; the demo's is the same CLIP on 32px
    # images (a third of the pretraining time), so it is cached under another key and never replaces it.
    assert (pinned.image_size, FULL_BASE.image_size) == (48, 32)
    assert replace(pinned, image_size=32) == FULL_BASE
    assert base_key(pinned) != base_key(FULL_BASE)
