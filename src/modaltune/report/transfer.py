"""The report's transfer sections: why the advisor chose what it did, what the old task lost, how much
was rehearsed, and the WiSE-FT sweep."""

from __future__ import annotations

from typing import Any


def transfer_sections(metrics: dict) -> list[tuple[str, str]]:
    """Report sections for the advisor's reasons, the forgetting report, rehearsal and the WiSE-FT sweep."""
    import html as _html

    esc = _html.escape
    sections: list[tuple[str, str]] = []
    advice = metrics.get("advice")
    if advice:
        items = "".join(f"<li>{esc(reason)}</li>" for reason in advice["reasons"])
        layers = f", layers {advice['layers']}" if advice.get("layers") else ""
        sections.append(
            (
                "Advisor (strategy auto)",
                f"<p><b>{esc(advice['strategy'])}{esc(layers)}</b>, "
                f"lr {advice['lr']:g}, {advice['epochs']} epochs, because:</p><ul>{items}</ul>",
            )
        )
    forgetting = metrics.get("forgetting")
    if forgetting:

        def num(v: Any) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        sections.append(
            (
                "Forgetting (old task)",
                (
                    f"<p>Old task <code>{esc(str(forgetting['old_task']))}</code> ({esc(forgetting['task'])}, "
                    f"{forgetting['rows']} rows), metric <code>{esc(forgetting['metric'])}</code>: "
                    f"before {num(forgetting['before'])}, after {num(forgetting['after'])}, "
                    f"drop {num(forgetting['drop'])}.</p>"
                ),
            )
        )
    replay = metrics.get("replay")
    if replay:
        how = (
            esc(replay["skipped"])
            if replay.get("skipped")
            else f"a share {replay['ratio']:g} of every batch came from it, on top of the target rows"
        )
        sections.append(
            (
                "Rehearsal (--replay)",
                f"<p>Old-task data <code>{esc(str(replay['data']))}</code> "
                f"({esc(replay['task'])}, {replay['rows']} rows): {how}.</p>",
            )
        )
    wise = metrics.get("wise_ft")
    if wise:
        rows = "".join(
            f"<tr><td>{e['alpha']:.1f}</td><td>{e['target']:.4f}</td><td>"
            f"{'n/a' if e['drop'] is None else format(e['drop'], '.4f')}</td></tr>"
            for e in wise["sweep"]
        )
        table = (
            f"<table><tr><th>alpha</th><th>target (val)</th><th>old-task drop</th></tr>{rows}</table>" if rows else ""
        )
        sections.append(("WiSE-FT", f"<p>alpha = {wise['alpha']:.2f} ({esc(wise['rule'])}).</p>{table}"))
    return sections
