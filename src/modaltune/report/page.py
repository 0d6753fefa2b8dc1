"""``report.html`` itself: the page template and the tables it shows (metrics, training, data, config),
with the run's plots inline."""

from __future__ import annotations

import base64
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import jinja2

from modaltune.plots import is_number, metric_names, plot_history, series

PLOTS_DIR = "plots"
REPORT_FILE = "report.html"
#: Images shown first in the report, in this order; any other PNG follows alphabetically.
_PLOT_ORDER = ["loss", "lr", "metrics", "confusion_matrix", "comparison"]
_CAPTIONS = {"lr": "Learning rate", "metrics": "Validation metrics"}


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pos { color: #17803d; } .neg { color: #b3261e; }
figure { margin: 1rem 0; } figcaption { color: #666; font-size: .85rem; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% macro table(t) -%}
{% if t.title %}<h3>{{ t.title }}</h3>{% endif %}
<table>
<tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for cell in row -%}
<td{% if cell.cls %} class="{{ cell.cls }}"{% endif %}>{{ cell.text }}</td>
{%- endfor %}</tr>
{% endfor %}</table>
{%- endmacro %}
{% if metric_tables %}<h2>Metrics</h2>
{% for t in metric_tables %}{{ table(t) }}{% endfor %}{% endif %}
{% if images %}<h2>Plots</h2>
{% for img in images %}<figure><img src="data:image/png;base64,{{ img.data }}" alt="{{ img.name }}">
<figcaption>{{ img.name }}</figcaption></figure>
{% endfor %}{% endif %}
{% if training_tables %}<h2>Training</h2>
{% for t in training_tables %}{{ table(t) }}{% endfor %}{% endif %}
{% if data_tables %}<h2>Data</h2>
{% for t in data_tables %}{{ table(t) }}{% endfor %}{% endif %}
{% for heading, html in sections %}<h2>{{ heading }}</h2>
{{ html | safe }}
{% endfor %}
<h2>Configuration</h2>
{{ table(config_table) }}
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def write_report(
    run_dir: Path,
    *,
    title: str,
    config: dict,
    data_report: dict | None,
    metrics: dict,
    history: list[dict],
    sections: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write ``run_dir/report.html`` and return its path.

    Shows the metrics (top-level numbers; nested dicts such as ``zero_shot`` side by side with
    this run's values when they share keys; ``per_class`` as its own table), every PNG in
    ``run_dir/plots/`` inline, a training summary from ``history`` (its curves are plotted first
    when ``plots/loss.png`` is missing), the data report and the config.

    ``sections`` are extra ``(heading, html)`` parts; the heading is escaped, the html is
    inserted as is, so the caller must have escaped anything user-supplied in it.
    """
    run_dir = Path(run_dir)
    plots = run_dir / PLOTS_DIR
    if history and not (plots / "loss.png").exists():
        plot_history(history, plots)

    html = _ENV.from_string(_TEMPLATE).render(
        title=title,
        metric_tables=_metric_tables(metrics),
        images=_images(plots),
        training_tables=_training_tables(history),
        data_tables=_data_tables(data_report),
        sections=list(sections),
        config_table=_Table("", ["setting", "value"], [[_cell(k), _cell(v)] for k, v in _flatten(config)]),
    )
    path = run_dir / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)  # a reader (or the serve page) never sees half a report
    return path


@dataclass
class _Table:
    """What the template's table macro needs: a title, a header row and rows of cells."""

    title: str
    header: list[str]
    rows: list[list[dict]]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, Integral):  # also numpy / torch-converted integers
        return str(int(value))
    if isinstance(value, Real):
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.4g}"  # learning rates and big counts: .4f would show 0.0000 / 123456.0000
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _cell(value: Any, cls: str = "") -> dict:
    if not cls and is_number(value):
        cls = "num"
    return {"text": _fmt(value), "cls": cls}


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys (``train.lr``), so a config reads as one two-column table."""
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(_flatten(value, name + "."))
        else:
            items.append((name, value))
    return items


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _records_table(title: str, records: Mapping[str, Mapping[str, Any]], key_name: str) -> _Table:
    """A dict of dicts (per class, per strategy) as one table, columns = union of inner keys."""
    columns: dict[str, None] = {}
    for inner in records.values():
        columns.update(dict.fromkeys(k for k, v in inner.items() if _is_scalar(v)))
    rows = [[_cell(name)] + [_cell(inner.get(c, "")) for c in columns] for name, inner in records.items()]
    return _Table(title, [key_name, *columns], rows)


def _metric_tables(metrics: Mapping[str, Any]) -> list[_Table]:
    scalars = {k: v for k, v in metrics.items() if _is_scalar(v)}
    tables = []
    if scalars:
        tables.append(_Table("", ["metric", "value"], [[_cell(k), _cell(v)] for k, v in scalars.items()]))
    for name, value in metrics.items():
        if name == "confusion_matrix" or not isinstance(value, Mapping) or not value:
            continue  # the confusion matrix is shown as a plot
        if name == "per_class" and all(isinstance(v, Mapping) for v in value.values()):
            tables.append(_records_table("Per class", value, "class"))
            continue
        shared = [k for k, v in value.items() if is_number(v) and is_number(scalars.get(k))]
        if shared:
            tables.append(_comparison_table(name, value, scalars, shared))
        else:
            flat = [(k, v) for k, v in _flatten(value) if _is_scalar(v)]
            tables.append(_Table(_title(name), ["metric", "value"], [[_cell(k), _cell(v)] for k, v in flat]))
    return tables


def _comparison_table(name: str, baseline: Mapping[str, Any], final: Mapping[str, Any], keys: list[str]) -> _Table:
    """E.g. zero-shot baseline vs this run, with the change: the number a user asks for first."""
    rows = []
    for key in keys:
        before, after = float(baseline[key]), float(final[key])
        delta = after - before
        sign = "pos" if delta > 0 else "neg" if delta < 0 else "num"
        change = {"text": f"{delta:+.4f}", "cls": f"num {sign}"}
        rows.append([_cell(key), _cell(before), _cell(after), change])
    return _Table(f"{_title(name)} vs this run", ["metric", _title(name), "this run", "change"], rows)


def _title(key: str) -> str:
    return str(key).replace("_", " ").replace("-", " ").capitalize()


def _images(plots: Path) -> list[dict[str, str]]:
    if not plots.is_dir():
        return []

    def order(path: Path) -> tuple[int, str]:
        rank = _PLOT_ORDER.index(path.stem) if path.stem in _PLOT_ORDER else len(_PLOT_ORDER)
        return rank, path.name

    return [
        {"name": _CAPTIONS.get(p.stem, _title(p.stem)), "data": base64.b64encode(p.read_bytes()).decode()}
        for p in sorted(plots.glob("*.png"), key=order)
    ]


def _training_tables(history: list[dict]) -> list[_Table]:
    steps = [r for r in history if r.get("kind", "step") == "step"]
    evals = [r for r in history if r.get("kind") == "eval"]
    if not steps and not evals:
        return []
    summary: list[tuple[str, Any]] = [("logged steps", len(steps)), ("evaluations", len(evals))]
    last = history[-1]
    for key in ("step", "epoch"):
        if is_number(last.get(key)):
            summary.append((f"last {key}", last[key]))
    for key in ("loss", "lr"):
        xs, ys = series(steps, key)
        if ys:
            summary.append((f"last train {key}", ys[-1]))
    tables = [_Table("", ["", "value"], [[_cell(k), _cell(v)] for k, v in summary])]
    if evals:
        names = (["val_loss"] if any("val_loss" in r for r in evals) else []) + metric_names(evals)
        rows = [
            [_cell(r.get("step", "")), _cell(r.get("epoch", ""))] + [_cell(r.get(n, "")) for n in names] for r in evals
        ]
        tables.append(_Table("Evaluations", ["step", "epoch", *names], rows))
    return tables


def _data_tables(report: Mapping[str, Any] | None) -> list[_Table]:
    """The data report, whatever its sections: numbers as a summary, dicts (reason counts, label
    counts) as tables, lists of skipped rows as counts by reason plus the first examples."""
    if not report:
        return []
    summary = [(k, v) for k, v in report.items() if _is_scalar(v)]
    tables = [_Table("", ["", "value"], [[_cell(k), _cell(v)] for k, v in summary])] if summary else []
    for key, value in report.items():
        if isinstance(value, Mapping) and value:
            if all(isinstance(v, Mapping) for v in value.values()):
                tables.append(_records_table(_title(key), value, "name"))
            else:
                flat = _flatten(value)
                counts = all(isinstance(v, int) and not isinstance(v, bool) for _, v in flat)
                tables.append(
                    _Table(_title(key), ["", "count" if counts else "value"], [[_cell(k), _cell(v)] for k, v in flat])
                )
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables.extend(_row_list_tables(_title(key), value))
        elif isinstance(value, list) and value:
            tables.append(_Table(_title(key), ["values"], [[_cell(value)]]))
    return tables


def _row_list_tables(title: str, rows: list[Mapping[str, Any]], examples: int = 20) -> list[_Table]:
    tables = []
    reasons = Counter(str(r["reason"]) for r in rows if "reason" in r)
    if reasons:
        tables.append(
            _Table(f"{title}: by reason", ["reason", "rows"], [[_cell(k), _cell(v)] for k, v in reasons.most_common()])
        )
    columns = list(dict.fromkeys(k for r in rows[:examples] for k in r))
    shown = [[_cell(r.get(c, "")) for c in columns] for r in rows[:examples]]
    more = f" (first {examples} of {len(rows)})" if len(rows) > examples else ""
    tables.append(_Table(f"{title}{more}", columns, shown))
    return tables
