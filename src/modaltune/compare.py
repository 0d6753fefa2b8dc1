"""Several strategies on identical data, seed and budget, side by side: ``modaltune compare``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modaltune.config import TrainConfig
from modaltune.errors import ConfigError

COMPARISON_FILE = "comparison.json"


@dataclass
class Variant:
    """One row of a comparison: a strategy (and its layer count for last-n)."""

    strategy: str
    layers: int | None = None

    @property
    def name(self) -> str:
        return f"{self.strategy}-{self.layers}" if self.layers else self.strategy


def variants(strategies: Sequence[str], layers: Sequence[int] | None) -> list[Variant]:
    """Expand ``last-n`` over every layer count in ``layers`` (a sweep); other strategies once."""
    from modaltune.strategies import STRATEGIES

    out: list[Variant] = []
    for strategy in strategies:
        if strategy not in (*STRATEGIES, "auto"):
            raise ConfigError(
                f"unknown strategy {strategy!r} in --strategies; choose from {', '.join(STRATEGIES)}, auto")
        if strategy == "last-n":
            if not layers:
                raise ConfigError("--strategies includes last-n: give --layers (one number or a sweep like 1,2,4)")
            out.extend(Variant("last-n", n) for n in layers)
        else:
            out.append(Variant(strategy))
    if len({v.name for v in out}) != len(out):
        raise ConfigError("--strategies lists the same strategy twice")
    return out


class PeakMemory:
    """Peak memory while a block runs: CUDA allocator peak on a GPU, else the process's resident set
    sampled every 20 ms (Linux /proc; None where unavailable). Both relative to the start."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self.kind = "cuda_allocated" if torch.cuda.is_available() else "rss_sampled"

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                import os

                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    @contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            allocated = torch.cuda.memory_allocated()
            yield self
            self.peak_mb = round((torch.cuda.max_memory_allocated() - allocated) / 2**20, 1)
            return
        start = self._rss()
        if start is None:
            yield self
            return
        peak = [start]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                now = self._rss()
                if now is not None and now > peak[0]:
                    peak[0] = now

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.peak_mb = round((peak[0] - start) / 2**20, 1)


def compare(base: TrainConfig, strategies: Sequence[str], *, layers: Sequence[int] | None = None,
            output: str | Path, console: Any = None, progress_factory: Any = None) -> list[dict[str, Any]]:
    """Train every variant into ``output/<name>`` with ``base``'s data, seed and budget; write
    ``output/comparison.json``, a plot and ``output/report.html``; return the rows."""
    from modaltune import api, plots
    from modaltune import report as reporting

    output = Path(output)
    todo = variants(strategies, layers)
    if output.exists() and (output / COMPARISON_FILE).exists():
        raise ConfigError(f"{output} already holds a comparison; choose another --output")
    rows: list[dict[str, Any]] = []
    for variant in todo:
        update: dict[str, Any] = {"strategy.name": variant.strategy, "strategy.layers": variant.layers,
                                  "runtime.output": str(output / variant.name)}
        if variant.strategy != "towers":
            update["strategy.towers"] = None  # the base's tower settings belong to strategy towers only
        notes = []
        if variant.strategy in ("zero-shot", "scratch"):
            # Weight-space methods pull towards pretrained weights these strategies do not train from.
            dropped = [k for k in ("wise_ft", "l2sp", "max_forgetting") if getattr(base.transfer, k) is not None]
            if variant.strategy == "zero-shot" and base.transfer.replay is not None:
                dropped.append("replay")
            update.update({f"transfer.{k}": None for k in dropped})
            notes = [f"{k} does not apply to {variant.strategy}" for k in dropped]
        cfg = base.with_values(update)  # re-validated as a whole
        memory = PeakMemory()
        tick = time.perf_counter()
        with memory.measure():
            metrics = api.train(cfg, progress=progress_factory(variant.name) if progress_factory else None)
        seconds = time.perf_counter() - tick
        primary = metrics["run"]["primary_metric"]
        forgetting = metrics.get("forgetting") or {}
        row = {
            "name": variant.name, "strategy": metrics["run"]["strategy"]["strategy"],
            "layers": metrics["run"]["strategy"]["layers"], "metric": primary,
            "target": metrics.get(primary),
            "target_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "old_task": forgetting.get("after"), "old_task_before": forgetting.get("before"),
            "forgetting": forgetting.get("drop"),
            "trainable_params": metrics["run"]["strategy"]["trainable_params"],
            "seconds": round(seconds, 2), "peak_memory_mb": memory.peak_mb, "memory_kind": memory.kind,
            "run": str(output / variant.name), "notes": notes,
        }
        if "advice" in metrics:
            row["advice"] = metrics["advice"]["reasons"]
        rows.append(row)
        if console is not None:
            console.print(f"{variant.name}: {primary} {row['target']:.4f} in {seconds:.1f}s")
    output.mkdir(parents=True, exist_ok=True)
    (output / COMPARISON_FILE).write_text(json.dumps(rows, indent=2) + "\n")
    plot_dir = output / "plots"
    plots.plot_strategy_comparison(
        [{"strategy": r["name"], "target accuracy": r["target"], "trainable params": r["trainable_params"],
          "seconds": r["seconds"]} for r in rows], plot_dir / "comparison.png", metric_key="target accuracy")
    reporting.write_report(
        output, title=f"modaltune compare · {base.task}", config=base.model_dump(), data_report=None,
        metrics={}, history=[], sections=[("Strategy comparison", comparison_html(rows))])
    return rows


def comparison_html(rows: list[dict[str, Any]]) -> str:
    import html

    def num(v: Any, fmt: str = ".4f") -> str:
        return "n/a" if v is None else format(v, fmt)

    head = ("<tr><th>strategy</th><th>target</th><th>old task</th><th>forgetting</th>"
            "<th>trainable params</th><th>seconds</th><th>peak MB</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(r['name'])}</td><td>{num(r['target'])}</td><td>{num(r['old_task'])}</td>"
        f"<td>{num(r['forgetting'])}</td><td>{r['trainable_params']:,}</td><td>{r['seconds']:.1f}</td>"
        f"<td>{num(r['peak_memory_mb'], '.0f')}</td></tr>" for r in rows)
    metric = html.escape(rows[0]["metric"]) if rows else ""
    return f"<p>Target metric: <code>{metric}</code> on validation data.</p><table>{head}{body}</table>"
