"""Synthetic transfer benchmark (issue 3): same as `modaltune bench-transfer --output DIR`.

    .venv/bin/python benchmarks/bench_transfer.py [DIR]

Prints, per (shift, examples per class) cell, every strategy's target and old-task accuracy and
the advisor's pick, plus the forgetting of naive `full` vs `full` + rehearsal + WiSE-FT. The
markdown it prints is what benchmarks/RESULTS.md records.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from modaltune.bench_transfer import run_bench  # noqa: E402

if __name__ == "__main__":
    result = run_bench(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-transfer-output"))
    summary = result["summary"]
    ok_forgetting = sum(f["meets"] for f in summary["forgetting"])
    print(f"advisor within 1 point in {summary['advisor_hits']}/{summary['cells']} cells; "
          f"rehearsal + WiSE-FT meets the forgetting target in {ok_forgetting}/{len(summary['forgetting'])} cells")
