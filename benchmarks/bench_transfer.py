"""Synthetic transfer benchmark (issue 3): same as `modaltune bench-transfer --output DIR`.

    .venv/bin/python benchmarks/bench_transfer.py [DIR] [--seeds 8,9,10,11,12] [--rerun ROW,...]

Prints, per (shift, examples per class) cell, every strategy's target and old-task accuracy and
the advisor's pick, plus the forgetting of naive `full` vs the advisor's pick + rehearsal + WiSE-FT. The
markdown it prints is what benchmarks/RESULTS.md records.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from modaltune.bench_transfer import run_bench  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="bench-transfer-output", type=Path)
    parser.add_argument("--seeds", type=lambda v: [int(s) for s in v.split(",")],
                        help="comma-separated seeds to average over (default 8,9,10,11,12)")
    parser.add_argument("--rerun", type=lambda v: [s for s in v.split(",") if s],
                        help="re-measure only these rows of the finished benchmark in OUTPUT")
    args = parser.parse_args()
    result = run_bench(args.output, seeds=args.seeds, rerun=args.rerun)
    summary = result["summary"]
    print(f"advisor within 1 point in {summary['advisor_hits']}/{summary['cells']} cells; "
          f"rehearsal + WiSE-FT meets the forgetting target in {summary['forgetting_cells_met']}/"
          f"{len(summary['forgetting'])} cells")
