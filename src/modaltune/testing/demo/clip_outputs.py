"""What the CLIP demo writes: the console table per regime, ``demo_results.json`` (and each section's
results file), the comparison plots and ``report.html``."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from modaltune.testing.demo.clip_base import BaseModel
from modaltune.testing.demo.clip_scores import display_name, verdict
from modaltune.testing.demo.clip_specs import KEEP, BaseSpec, TargetSpec


def results_table(results: list[dict[str, Any]], spec: TargetSpec) -> Table:
    chance = 1 / len(spec.classes)
    zero_shot = next(r for r in results if r["strategy"] == "zero-shot")
    table = Table(
        title=f"{spec.regime}: {len(spec.classes)} shapes in style {spec.style!r}, {spec.train_per_class} "
        f"labels/class, {spec.test_rows} test images (chance {chance:.3f})",
        caption=f"± = standard error of the test split, √(p(1−p)/n), n = {spec.test_rows}. "
        f"vs zero-shot: ✓ when ahead by more than 2 SE of zero-shot's accuracy "
        f"(2 × {zero_shot['standard_error']:.3f} = {zero_shot['two_se_zero_shot']:.3f}). "
        "← advisor: what `modaltune advise` recommended before anything trained.",
    )
    table.add_column("strategy")
    table.add_column("trainable params", justify="right")
    table.add_column("test accuracy ± SE", justify="right")
    table.add_column("vs zero-shot", justify="right")
    table.add_column("macro-F1", justify="right")
    table.add_column("old task", justify="right")
    table.add_column("forgetting", justify="right")
    table.add_column("seconds", justify="right")
    for row in results:
        drop = "-" if row["forgetting"] is None else f"{row['forgetting']:+.3f}"
        name = display_name(row) + (" ← advisor" if row.get("advisor_pick") else "")
        gap = (
            ""
            if row["strategy"] == "zero-shot"
            else f"{row['vs_zero_shot']:+.3f}" + (" ✓" if row["clearly_above_zero_shot"] else "  ")
        )
        table.add_row(
            name,
            f"{row['trainable_params']:,}",
            f"{row['accuracy']:.3f} ± {row['standard_error']:.3f}",
            gap,
            f"{row['macro_f1']:.3f}",
            f"{row['old_task_accuracy']:.3f}",
            drop,
            f"{row['seconds']:.1f}",
        )
    return table


def write_outputs(
    output: Path,
    results: list[dict[str, Any]],
    base: BaseModel,
    base_spec: BaseSpec,
    target_specs: tuple[TargetSpec, ...],
    timings: dict[str, float],
    *,
    advices: dict[str, Any],
    sections: Sequence[tuple[Any, list[dict[str, Any]]]] = (),
) -> None:
    """``demo_results.json``, each section's results file, ``plots/`` and ``report.html`` in ``output``."""
    from modaltune.plots import plot_strategy_comparison
    from modaltune.report import write_report

    (output / "demo_results.json").write_text(json.dumps(results, indent=2) + "\n")
    for section, section_results in sections:
        (output / section.results_file).write_text(json.dumps(section_results, indent=2) + "\n")
    plots = output / "plots"
    headline: dict[str, Any] = {}
    regime_sections = []
    for spec in target_specs:
        rows = [dict(r, strategy=display_name(r)) for r in results if r["regime"] == spec.regime]
        plot_strategy_comparison(rows, plots / f"comparison_{spec.slug}.png", "accuracy")
        plot_strategy_comparison(rows, plots / f"comparison_macro_f1_{spec.slug}.png", "macro_f1")
        advice = advices[spec.regime]
        by_name = {r["strategy"]: r for r in results if r["regime"] == spec.regime}
        pretrained = [by_name[s] for s in ("linear-probe", "last-n", "full", "lora") if s in by_name]
        best = max(pretrained, key=lambda r: r["accuracy"])
        headline[spec.regime] = {
            "labels per class": spec.train_per_class,
            "chance accuracy": 1 / len(spec.classes),
            "zero-shot accuracy": by_name["zero-shot"]["accuracy"],
            "2 SE of zero-shot (test split)": by_name["zero-shot"]["two_se_zero_shot"],
            "scratch accuracy": by_name["scratch"]["accuracy"],
            "best pretrained strategy": display_name(best),
            "its gain over zero-shot": best["vs_zero_shot"],
            "strategies ahead of zero-shot by more than 2 SE": sum(r["clearly_above_zero_shot"] for r in pretrained),
            "pretrained strategies beating scratch": sum(
                r["accuracy"] > by_name["scratch"]["accuracy"] for r in pretrained
            ),
            "advisor's pick": advice.strategy + (f" (last {advice.layers})" if advice.layers else ""),
            "measured shift": advice.inputs["shift"]["shift"],
        }
        regime_sections.append(
            (
                f"Results, {spec.regime} ({spec.train_per_class} labels per class)",
                _results_html([r for r in results if r["regime"] == spec.regime], spec)
                + f"<p>{html.escape(_plain(verdict(list(by_name.values()), spec, advice)))}</p>"
                + "<p>The advisor:</p><ul>"
                + "".join(f"<li>{html.escape(r)}</li>" for r in advice.reasons)
                + "</ul>",
            )
        )
    first = {r["strategy"]: r for r in results if r["regime"] == target_specs[0].regime}
    headline["forgetting"] = {
        "old-task accuracy of the base": first["zero-shot"]["old_task_accuracy"],
        "old-task drop, full": first["full"]["forgetting"],
        **({f"old-task drop, {KEEP}": first[KEEP]["forgetting"]} if KEEP in first else {}),
    }
    headline.update({f"base retrieval {k} (held-out captions)": v for k, v in base.info["retrieval"].items()})
    history_file = base.run_dir / "history.jsonl"
    history = [json.loads(line) for line in history_file.read_text().splitlines()] if history_file.is_file() else []
    write_report(
        output,
        title="modaltune demo: one pretrained CLIP, every way to adapt it",
        config={
            "base model": asdict(base_spec),
            **{f"target, {t.regime}": asdict(t) for t in target_specs},
            "base model directory": str(base.model),
            "base model cached": base.cached,
        },
        data_report={
            "source captions": base.info["source_rows"],
            **{
                f"target, {t.regime}": {
                    "classes": len(t.classes),
                    "style": t.style,
                    "train per class": t.train_per_class,
                    "val per class": t.val_per_class,
                    "test per class": t.test_per_class,
                }
                for t in target_specs
            },
        },
        metrics=headline,
        history=history,
        sections=[
            *regime_sections,
            *[(section.heading, section.html(section_results)) for section, section_results in sections],
            ("What the demo did", _explanation_html(base, base_spec, target_specs, timings)),
        ],
    )


def _plain(markup: str) -> str:
    """Console markup without its tags."""
    from rich.text import Text

    return Text.from_markup(markup).plain


def _results_html(results: list[dict[str, Any]], spec: TargetSpec) -> str:
    header = [
        "strategy",
        "trainable params",
        "test accuracy",
        "± SE",
        "vs zero-shot",
        "> 2 SE",
        "macro-F1",
        "val accuracy",
        "old-task accuracy",
        "forgetting",
        "seconds",
        "lr",
    ]
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(v))}</td>"
            for v in (
                display_name(r) + (" (advisor's pick)" if r.get("advisor_pick") else ""),
                f"{r['trainable_params']:,}",
                f"{r['accuracy']:.4f}",
                f"{r['standard_error']:.4f}",
                "" if r["strategy"] == "zero-shot" else f"{r['vs_zero_shot']:+.4f}",
                "" if r["strategy"] == "zero-shot" else ("yes" if r["clearly_above_zero_shot"] else "no"),
                f"{r['macro_f1']:.4f}",
                f"{r['val_accuracy']:.4f}",
                f"{r['old_task_accuracy']:.4f}",
                "n/a" if r["forgetting"] is None else f"{r['forgetting']:+.4f}",
                f"{r['seconds']:.1f}",
                f"{r['lr']:g}",
            )
        )
        + "</tr>"
        for r in results
    )
    note = (
        f"<p>SE: standard error of the test split, √(p(1−p)/n) with n = {spec.test_rows} test images. "
        f"&gt; 2 SE: ahead of zero-shot by more than twice zero-shot's standard error "
        f"({results[0]['two_se_zero_shot']:.4f}).</p>"
    )
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" + rows + "</table>" + note


def _explanation_html(base: BaseModel, b: BaseSpec, targets: tuple[TargetSpec, ...], timings: dict[str, float]) -> str:
    t, more = targets[0], targets[-1]
    pretraining = (
        f"reused from the cache (it took {base.info['pretrain_seconds']:.0f}s when it was built)"
        if base.cached
        else f"took {timings['pretraining']:.0f}s"
    )
    phases = ", ".join(
        f"{name} {seconds:.0f}" + ("" if name.startswith("CPU") else "s") for name, seconds in timings.items()
    )
    text = [
        f"<p><b>Pretraining.</b> No CLIP weights can be downloaded offline, so the demo made its own: "
        f"a CLIP with {b.layers} layers of width {b.hidden_size} in both towers ({b.patch_size}px patches "
        f"on {b.image_size}px images), its tokenizer trained on the captions, was trained contrastively "
        f"(modaltune's <code>retrieve</code> task, {b.epochs} epochs) on {base.info['source_rows']} "
        f"synthetic images of shapes drawn in style(s) {', '.join(b.styles)}, each with a caption such "
        f'as "a small red circle on the left". This {pretraining}. The loss and retrieval curves '
        f"below the results are from this pretraining.</p>",
        f"<p><b>Target task, two regimes.</b> Name the shape ({len(t.classes)} classes: {', '.join(t.classes)}) "
        f"in images drawn in style <i>{t.style}</i>, which pretraining never saw: a domain shift. "
        f"<i>{t.regime}</i>: {t.train_per_class} labelled images per class train; <i>{more.regime}</i>: "
        f"{more.train_per_class} per class (the first {t.train_per_class} are the same images). Both share "
        f"{t.val_per_class} validation images per class, which pick the best epoch, and "
        f"{t.test_per_class} test images per class ({t.test_rows} in all), never used for any choice, "
        f"which give the accuracy reported here. Chance is {1 / len(t.classes):.3f}.</p>",
        f"<p><b>Strategies.</b> <i>zero-shot</i> classifies with the prompt "
        f'"{t.prompt_template.format("&lt;shape&gt;")}" and no training; <i>linear-probe</i> trains '
        f"only the head (initialised from those prompts); <i>last-n</i> also trains the last vision "
        f"blocks (as many as the advisor asks for when it advises last-n, else {t.layers}); <i>full</i> "
        f"trains everything; <i>lora</i> trains low-rank adapters on the attention projections; "
        f"<i>scratch</i> trains the same architecture from a random init. Within a regime all trained "
        f"strategies get the same data, seed and epochs ({t.epochs} with few labels, {more.epochs} with "
        f"more); the learning rate is chosen per strategy (see the tables). <i>Seconds</i> is the wall "
        f"time of the whole run (loading, training, evaluation, export), in a worker process at one torch "
        f"thread, two runs at a time.</p>",
        "<p><b>Reading the numbers.</b> Each accuracy comes with its standard error on the test split, "
        "√(p(1−p)/n): differences smaller than about two of them are what another draw of test images "
        "could reverse. With few labels, fine-tuning has too little to learn from and the pretrained "
        "zero-shot classifier (or a linear probe started from it) is as good as anything; with more "
        "labels, re-training blocks adapts the features to the new style. The gap between "
        "<i>scratch</i> and the pretrained strategies is what pretraining buys.</p>",
        f"<p><b>Forgetting.</b> The old task is something pretraining taught and the target never "
        f"trains: name the colour ({', '.join(t.old_classes)}) of shapes drawn in style "
        f"<i>{b.styles[0]}</i>, scored zero-shot with the same prompt template on {t.old_test_per_class} "
        f"images per class, before (the base model) and after each strategy. <i>{KEEP}</i> (few-label "
        f"regime) is <i>full</i> again with half of every batch rehearsing the old task "
        f"({t.old_train_per_class} images per class) and WiSE-FT choosing how far to move from the "
        f"base weights on validation data.</p>",
        f"<p><b>Time.</b> The base pretrains in a worker process at torch's default thread count while the "
        f"sections that need no base model run beside it in two workers at one thread each; the CLIP runs "
        f"then take those two workers. Wall seconds per phase (a section's, in its worker): "
        f"{html.escape(phases)}.</p>",
    ]
    return "\n".join(text)
