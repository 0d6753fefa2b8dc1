"""How far to trust a number of the CLIP demo: each row's standard error on the test split, its gap to
zero-shot, the advisor's pick marked, and the verdict the numbers support, in words."""

from __future__ import annotations

import math
from typing import Any

from modaltune.testing.demo.clip_specs import KEEP, TargetSpec


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` test images: sqrt(p (1 - p) / n)."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n) if n else float("nan")


def score_regime(rows: list[dict[str, Any]], spec: TargetSpec, advice: Any) -> list[dict[str, Any]]:
    """Mark the advisor's pick and add, per row, the test split's standard error and the gap to
    zero-shot; ``clearly_above_zero_shot`` when the gap exceeds twice zero-shot's standard error."""
    n = spec.test_rows
    zero_shot = next(r for r in rows if r["strategy"] == "zero-shot")["accuracy"]
    threshold = 2 * standard_error(zero_shot, n)
    for row in rows:
        row["test_rows"] = n
        row["standard_error"] = standard_error(row["accuracy"], n)
        row["vs_zero_shot"] = row["accuracy"] - zero_shot
        row["two_se_zero_shot"] = threshold
        row["clearly_above_zero_shot"] = row["vs_zero_shot"] > threshold
        row["advisor_pick"] = row["strategy"] == advice.strategy and (
            advice.strategy != "last-n" or row["layers"] == advice.layers
        )
        row["advisor_layers"] = advice.layers
    return rows


def display_name(row: dict[str, Any]) -> str:
    return f"{row['strategy']} ({row['layers']} blocks)" if row.get("layers") else row["strategy"]


def verdict(rows: list[dict[str, Any]], spec: TargetSpec, advice: Any) -> str:
    """What the regime's numbers say, in words chosen by the numbers."""
    by_name = {r["strategy"]: r for r in rows}
    zero_shot, scratch = by_name["zero-shot"], by_name["scratch"]
    trained = [r for r in rows if r["strategy"] not in ("zero-shot", "scratch", KEEP)]
    best = max(trained, key=lambda r: r["accuracy"])
    threshold = zero_shot["two_se_zero_shot"]
    clear = [display_name(r) for r in trained if r["clearly_above_zero_shot"]]
    if clear:
        head = (
            f"re-training pays: {', '.join(clear)} beat zero-shot by more than 2 SE ({threshold:.3f}); "
            f"best {display_name(best)} {best['accuracy']:.3f} vs zero-shot {zero_shot['accuracy']:.3f}"
        )
    else:
        head = (
            f"no trained strategy beats zero-shot ({zero_shot['accuracy']:.3f}) by more than 2 SE "
            f"({threshold:.3f}; best {display_name(best)} {best['vs_zero_shot']:+.3f}): with "
            f"{spec.train_per_class} labels per class, zero-shot or a linear probe is the right call"
        )
    pick = next((r for r in rows if r["advisor_pick"]), None)
    picked = (
        f"{display_name(pick)} {pick['accuracy']:.3f}"
        if pick
        else advice.strategy + (f" (last {advice.layers})" if advice.layers else "")
    )
    transfer = max(trained + [zero_shot], key=lambda r: r["accuracy"])
    versus = "beats" if transfer["accuracy"] > scratch["accuracy"] else "does NOT beat"
    why = advice.reasons[1] if len(advice.reasons) > 1 else advice.reasons[0]  # [0] is the shift measured
    return (
        f"[bold]{spec.regime}[/]: {head}. Advisor's pick: {picked} ({why}). "
        f"Transfer {versus} scratch: {display_name(transfer)} {transfer['accuracy']:.3f} vs "
        f"{scratch['accuracy']:.3f}."
    )
