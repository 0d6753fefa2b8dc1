"""The transfer benchmark's pipeline, shrunk to one tiny cell (the numbers mean nothing here).

The benchmark is a script of the source checkout (benchmarks/bench_transfer.py), not product code;
``modaltune bench-transfer`` loads it from there, and so do these tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modaltune.cli import BENCHMARKS, load_benchmark

_bench = load_benchmark("bench_transfer", "bench-transfer")
KEPT, aggregate_cell, markdown, summarise = _bench.KEPT, _bench.aggregate_cell, _bench.markdown, _bench.summarise


def _seed(seed, pick, targets, drops):
    results = {name: {"target": t, "val": t, "old_task": 0.9 - d, "old_task_before": 0.9, "forgetting": d,
                      "seconds": 1.0, "trainable_params": 10}
               for name, t, d in zip(("linear-probe", "last-n-2", "full", KEPT), targets, drops)}
    return {"seed": seed, "pick": pick, "measured_shift": {"shift": 0.5 + seed / 10}, "advice": {},
            "results": results}


def test_cells_average_over_seeds_and_score_each_seeds_own_pick():
    seeds = [_seed(1, "linear-probe", (0.50, 0.60, 0.58, 0.58), (0.0, 0.2, 0.3, 0.05)),
             _seed(2, "last-n-2", (0.52, 0.70, 0.66, 0.66), (0.0, 0.2, 0.3, 0.15))]
    cell = aggregate_cell("far", "outline", 5, seeds)
    assert cell["results"]["last-n-2"]["target"] == pytest.approx(0.65)
    assert cell["results"]["last-n-2"]["target_sd"] == pytest.approx(0.0707107, abs=1e-6)
    assert cell["best"] == "last-n-2" and cell["picks"] == ["linear-probe", "last-n-2"]
    assert cell["pick_target"] == pytest.approx((0.50 + 0.70) / 2)  # each seed's own pick, averaged
    assert not cell["pick_within_1_point"]
    assert cell["measured_shift"]["shift"] == pytest.approx(0.65)
    summary = summarise([cell])
    (f,) = summary["forgetting"]
    assert f["naive_drop"] == pytest.approx(0.3) and f["kept_drop"] == pytest.approx(0.1)
    assert f["share"] == pytest.approx(1 / 3, abs=1e-4) and f["meets"]
    assert summary["forgetting_cells_met"] == 1 and summary["forgetting_overall"]["meets"]


def test_markdown_marks_seeds_whose_rehearsal_was_skipped():
    seeds = [_seed(1, "linear-probe", (0.50, 0.60, 0.58, 0.50), (0.0, 0.2, 0.3, 0.0)),
             _seed(2, "last-n-2", (0.52, 0.70, 0.66, 0.66), (0.0, 0.2, 0.3, 0.05))]
    seeds[0]["results"][KEPT].update(replay_ratio=None, wise_ft_alpha=1.0)  # a probe: nothing to rehearse
    seeds[1]["results"][KEPT].update(replay_ratio=0.5, wise_ft_alpha=0.9)
    cells = [aggregate_cell("near", "noise", 5, seeds)]
    result = {"cells": cells, "summary": summarise(cells), "spec": {"seeds": [1, 2]}, "seconds": 1.0,
              "machine": {"platform": "p", "cpus": 2, "threads": 2, "torch": "t", "gpu": None},
              "base_model": {"dir": "/cache/key/model"}}
    table = markdown(result)
    assert "| –, 0.5 · 1, 0.9 |" in table and "– : rehearsal skipped" in table
    cells[0]["results"][KEPT]["replay_ratio"] = [0.5, 0.5]
    result["summary"] = summarise(cells)
    assert "rehearsal skipped" not in markdown(result)


@pytest.mark.slow
def test_bench_transfer_quick(tmp_path, run_cli):
    out = tmp_path / "bench"
    result = run_cli("bench-transfer", "--quick", "--output", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "bench_transfer.json").read_text())
    (cell,) = data["cells"]
    names = set(cell["results"])
    assert {"zero-shot", "linear-probe", "last-n-1", "last-n-2", "full", "lora", "scratch",
            KEPT} == names
    assert cell["pick"] in names and cell["best"] in names
    assert cell["pick_within_1_point"] == (cell["pick_target"] >= cell["best_target"] - 0.01 - 1e-9)
    for row in cell["results"].values():
        assert 0.0 <= row["target"] <= 1.0 and 0.0 <= row["old_task"] <= 1.0
    assert cell["results"]["zero-shot"]["forgetting"] == 0.0
    assert cell["results"]["scratch"]["old_task_before"] is None
    # The kept row rehearses at the advisor's ratio for the cell's data size (3 per class: 50/50),
    # except under a linear probe, where the run skips rehearsal (nothing the old task reads trains).
    assert cell["per_seed"][0]["advice"]["replay_ratio"] == 0.5
    skipped = cell["picks"] == ["linear-probe"]
    assert cell["results"][KEPT]["replay_ratio"] == ([None] if skipped else [0.5])
    assert ("rehearsal skipped" in (out / "bench_transfer.md").read_text()) == skipped
    # ... and trains what the advisor picked (what --strategy auto would), with its trainable parameters.
    assert cell["results"][KEPT]["strategy"] == cell["picks"]
    assert cell["results"][KEPT]["trainable_params"] == cell["results"][cell["pick"]]["trainable_params"]
    assert cell["picks"] == [cell["pick"]] and [s["seed"] for s in cell["per_seed"]] == cell["seeds"] == [0]
    summary = data["summary"]
    assert summary["cells"] == 1 and summary["forgetting"][0]["cell"] == cell["cell"]
    table = (out / "bench_transfer.md").read_text()
    assert "advisor pick" in table and cell["cell"] in table

    # Re-measuring one row keeps every other row, the data and the advice as they were.
    result = run_cli("bench-transfer", "--quick", "--output", str(out), "--rerun", KEPT)
    assert result.returncode == 0, result.stderr
    again = json.loads((out / "bench_transfer.json").read_text())
    (cell2,) = again["cells"]
    assert {k: v for k, v in cell2["results"].items() if k != KEPT} == \
        {k: v for k, v in cell["results"].items() if k != KEPT}
    assert cell2["per_seed"][0]["advice"] == cell["per_seed"][0]["advice"]
    assert again["rerun"][0]["rows"] == [KEPT] and "Re-run at" in (out / "bench_transfer.md").read_text()
    mixed = run_cli("bench-transfer", "--quick", "--output", str(out), "--rerun", KEPT, "--seeds", "4")
    assert mixed.returncode != 0 and "--rerun re-measures rows" in mixed.stderr and "Traceback" not in mixed.stderr
    bad = run_cli("bench-transfer", "--quick", "--output", str(out), "--rerun", "nonsense")
    assert bad.returncode != 0 and "no row named nonsense" in bad.stderr and "Traceback" not in bad.stderr


def test_the_benchmark_is_a_script_of_the_checkout_not_product_code():
    import modaltune

    assert BENCHMARKS == Path(__file__).resolve().parents[1] / "benchmarks"
    assert not (Path(modaltune.__file__).parent / "bench_transfer.py").exists()
    script = subprocess.run([sys.executable, str(BENCHMARKS / "bench_transfer.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "--rerun" in script.stdout and "--quick" in script.stdout


def test_bench_transfer_command_without_a_checkout_says_where_the_benchmark_is(tmp_path, run_cli, monkeypatch):
    import modaltune.cli

    monkeypatch.setattr(modaltune.cli, "BENCHMARKS", tmp_path / "no-benchmarks")
    result = run_cli("bench-transfer", "--quick", "--output", str(tmp_path / "out"))
    message = " ".join(result.stderr.split())  # the console wraps long lines
    assert result.returncode == 2 and "runs benchmarks/bench_transfer.py of a source checkout" in message
    assert "run `python benchmarks/bench_transfer.py`" in message and "Traceback" not in message
    help_text = run_cli("--help").stdout
    assert "bench-transfer" not in help_text and "demo" in help_text  # kept working, no longer advertised
