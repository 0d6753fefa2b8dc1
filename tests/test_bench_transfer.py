"""The transfer benchmark's pipeline, shrunk to one tiny cell (the numbers mean nothing here)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_bench_transfer_quick(tmp_path, run_cli):
    out = tmp_path / "bench"
    result = run_cli("bench-transfer", "--quick", "--output", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "bench_transfer.json").read_text())
    (cell,) = data["cells"]
    names = set(cell["results"])
    assert {"zero-shot", "linear-probe", "last-n-1", "last-n-2", "full", "lora", "scratch",
            "full+replay+wise-ft"} == names
    assert cell["pick"] in names and cell["best"] in names
    assert cell["pick_within_1_point"] == (cell["pick_target"] >= cell["best_target"] - 0.01 - 1e-9)
    for row in cell["results"].values():
        assert 0.0 <= row["target"] <= 1.0 and 0.0 <= row["old_task"] <= 1.0
    assert cell["results"]["zero-shot"]["forgetting"] == 0.0
    assert cell["results"]["scratch"]["old_task_before"] is None
    summary = data["summary"]
    assert summary["cells"] == 1 and summary["forgetting"][0]["cell"] == cell["cell"]
    table = (out / "bench_transfer.md").read_text()
    assert "advisor pick" in table and cell["cell"] in table
