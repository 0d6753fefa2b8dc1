"""`modaltune` command line: thin; every command calls the Python API.

Exit codes: 0 ok, 2 bad usage/config/data (message names the field, row or file), 1 internal error,
143 stopped by SIGTERM after a checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modaltune.cli.options import DOTTED, DOTTED_HELP, config_options, tasks_help
from modaltune.errors import ModaltuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adapt pretrained multimodal models to your own task and data.")
console = Console(stderr=True)


def _split_list(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _int_list(value: Optional[str], option: str) -> Optional[list[int]]:
    items = _split_list(value)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated whole numbers such as 1,2,4, got {value!r}",
                                 param_hint=option) from None


def _limits(data_format: Optional[str], max_audio_seconds: Optional[float], box_format: Optional[str] = None,
            normalized: Optional[bool] = None) -> dict[str, Any]:
    """The data-reading options given on the command line (those not given keep the API's defaults)."""
    if max_audio_seconds is not None and max_audio_seconds <= 0:
        raise typer.BadParameter(f"must be more than 0 seconds, got {max_audio_seconds}",
                                 param_hint="--max-audio-seconds")
    options: dict[str, Any] = {"data_format": data_format}
    if max_audio_seconds is not None:
        options["max_audio_seconds"] = max_audio_seconds
    reading = {k: v for k, v in (("box_format", box_format), ("normalized", normalized or None)) if v is not None}
    if reading:
        options["reader_options"] = reading
    return options


def _required(flags: dict[str, Any], dotted: dict[str, str], config: Optional[Path], *names: str) -> None:
    """Without --config, the options a run cannot do without must be given (as flags or dotted)."""
    from modaltune.config.train import flat_paths

    paths = flat_paths()
    for name in names:
        if flags.get(name) is None and config is None and paths.get(name, name) not in dotted:
            raise typer.BadParameter(f"--{name} is required (or give --config)", param_hint=f"--{name}")


def _config(config: Optional[Path], args: list[str], flags: dict[str, Any], required: tuple[str, ...]) -> Any:
    """The run config of a command: --config, then the classic flags, then --section.key overrides."""
    from modaltune.cli.options import option_specs
    from modaltune.config import build_config, overrides_from_args

    dotted = overrides_from_args(args)
    _required(flags, dotted, config, *required)
    names = {spec.dest: spec.decls[0].split("/")[0] for spec in option_specs().values()}
    return build_config(config, dotted=dotted, flag_names=names, **flags)


_CONFIG_HELP = "YAML config, nested (model:, data:, optim: …) or flat as older runs wrote it; flags override it"


@app.command()
@config_options(only=("data_format", "max_audio_seconds", "box_format", "normalized"))
def validate(
    task: str = typer.Option(..., help=f"the task that reads the data: {tasks_help()}"),
    data: Path = typer.Option(
        ..., help="image or audio folder, CSV or JSONL manifest, COCO captions or VQA json"),
    json_out: bool = typer.Option(False, "--json", help="print the report as JSON"),
    **flags: Any,
) -> None:
    """Check every row of a dataset and print the data report (no model, no training)."""
    from modaltune.api import validate as run_validate

    reports = run_validate(task, data, **_limits(flags["data_format"], flags["max_audio_seconds"],
                                                 flags["box_format"], flags["normalized"]))
    if json_out:
        print(json.dumps(reports, indent=2))
        return
    bad_total = 0
    for split, report in reports.items():
        table = Table(title=f"{data} [{split}]")
        table.add_column("what")
        table.add_column("count", justify="right")
        table.add_row("rows read", str(report["rows_read"]))
        table.add_row("rows ok", str(report["rows_ok"]))
        for reason, count in report.get("reasons", {}).items():
            table.add_row(f"bad: {reason}", str(count))
        for reason, count in report.get("fixed", {}).items():
            table.add_row(f"fixed: {reason}", str(count))
        for label, count in report.get("label_counts", {}).items():
            table.add_row(f"label {label}", str(count))
        Console().print(table)
        for bad in report["bad"][:20]:
            Console().print(f"  {bad['id']}: {bad['reason']} — {bad['detail']}")
        if len(report["bad"]) > 20:
            Console().print(f"  … and {len(report['bad']) - 20} more")
        bad_total += len(report["bad"])
    if bad_total:
        console.print(f"[yellow]{bad_total} bad row(s): fix them, or train with --skip-bad to skip them[/]")
        raise typer.Exit(2)


@app.command(context_settings=DOTTED, epilog=DOTTED_HELP)
@config_options()
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, help=_CONFIG_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --output from its last checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    **flags: Any,
) -> None:
    """Adapt a model to your data with a strategy and write a run directory."""
    from modaltune.api import train as run_train
    from modaltune.progress import TrainingProgress

    output = flags.get("output")
    if resume and config is None and output and (Path(output) / "config.yaml").is_file():
        config = Path(output) / "config.yaml"
    cfg = _config(config, ctx.args, flags, ("task", "model", "data"))
    progress = None if quiet else TrainingProgress(f"{cfg.task}/{cfg.strategy.name}", console)
    metrics = run_train(cfg, resume=resume, progress=progress)
    if not metrics:
        return  # another process of a multi-process run: the main one reports
    _print_metrics(metrics, cfg.runtime.output)
    _print_transfer(metrics)


def _print_transfer(metrics: dict) -> None:
    if "advice" in metrics:
        advice = metrics["advice"]
        layers = f" (layers {advice['layers']})" if advice["layers"] else ""
        Console().print(f"advisor: {advice['strategy']}{layers}")
        for reason in advice["reasons"]:
            Console().print(f"  - {reason}")
    if "wise_ft" in metrics:
        Console().print(f"WiSE-FT alpha {metrics['wise_ft']['alpha']:.2f} ({metrics['wise_ft']['rule']})")
    forgetting = metrics.get("forgetting")
    if forgetting:
        before = "n/a" if forgetting["before"] is None else f"{forgetting['before']:.4f}"
        drop = "n/a" if forgetting["drop"] is None else f"{forgetting['drop']:+.4f}"
        Console().print(f"old task ({forgetting['metric']}): before {before}, after {forgetting['after']:.4f}, "
                        f"drop {drop}")


@app.command(context_settings=DOTTED, epilog=DOTTED_HELP)
@config_options(sections=("task", "model", "data", "tasks"), only=("batch_size", "seed", "eval_batch_size"))
def advise(
    ctx: typer.Context,
    reference: Optional[str] = typer.Option(
        None, help="data the base model knows (its original task): adds a Fréchet distance"),
    config: Optional[Path] = typer.Option(None, help=_CONFIG_HELP),
    json_out: bool = typer.Option(False, "--json", help="print the advice as JSON"),
    **flags: Any,
) -> None:
    """Measure the domain shift of your data for a base model and recommend a strategy, with reasons.

    --batch-size is the one you will train with (it sets the advised epoch count)."""
    from modaltune.api import advise_config

    cfg = _config(config, ctx.args, flags, ("task", "model", "data"))
    advice = advise_config(cfg, reference=reference)
    model, data = cfg.model.name, cfg.data.train
    if json_out:
        print(json.dumps(advice.to_dict(), indent=2))
        return
    shift = advice.inputs["shift"]
    table = Table(title=f"domain shift of {data} for {model}")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    for key in ("rows", "zero_shot", "chance", "zero_shot_gain", "separability", "separability_gain", "frechet",
                "familiarity", "shift"):
        value = shift.get(key)
        table.add_row(key, "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value)))
    Console().print(table)
    Console().print(f"[bold]recommendation:[/] modaltune train {advice.summary()}")
    for reason in advice.reasons:
        Console().print(f"  - {reason}")


@app.command(context_settings=DOTTED, epilog=DOTTED_HELP)
@config_options(exclude=("strategy", "output"))
def compare(
    ctx: typer.Context,
    strategies: str = typer.Option("zero-shot,linear-probe,last-n,full,lora,scratch", help="comma-separated"),
    layers: Optional[str] = typer.Option(None, help="last-n layer counts to sweep, e.g. 1,2,4"),
    config: Optional[Path] = typer.Option(None, help="YAML config for every other training setting"),
    output: Path = typer.Option(..., help="comparison directory (one run per strategy inside)"),
    quiet: bool = typer.Option(False, "--quiet"),
    **flags: Any,
) -> None:
    """Run several strategies on identical data, seed and budget; table, comparison.json and report.

    Every training option applies to each strategy; the learning rate, unless given, is each strategy's own."""
    from modaltune.compare import compare as run_compare
    from modaltune.progress import TrainingProgress

    layer_list = _int_list(layers, "--layers")
    names = _split_list(strategies) or []
    cfg = _config(config, ctx.args, {**flags, "output": str(output)}, ("task", "model", "data"))
    factory = None if quiet else (lambda name: TrainingProgress(name, console))
    rows = run_compare(cfg, names, layers=layer_list, output=output, console=console, progress_factory=factory)
    table = Table(title=f"compare: {cfg.task} on {cfg.data.train}")
    for column in ("strategy", "trainable params", rows[0]["metric"] if rows else "target", "old task",
                   "forgetting", "seconds", "peak MB"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for r in rows:
        def num(v, fmt=".4f"):
            return "-" if v is None else format(v, fmt)
        table.add_row(r["name"], f"{r['trainable_params']:,}", num(r["target"]), num(r["old_task"]),
                      num(r["forgetting"]), f"{r['seconds']:.1f}", num(r["peak_memory_mb"], ".0f"))
    Console().print(table)
    console.print(f"comparison in {output / 'comparison.json'}, report {output / 'report.html'}")


def _print_metrics(metrics: dict, output: str) -> None:
    table = Table(title=f"run {output}")
    table.add_column("metric")
    table.add_column("adapted", justify="right")
    table.add_column("zero-shot", justify="right")
    base = metrics.get("zero_shot", {})
    for key, value in metrics.items():
        if isinstance(value, float):
            ref = base.get(key)
            table.add_row(key, f"{value:.4f}", f"{ref:.4f}" if isinstance(ref, float) else "-")
    Console().print(table)


@app.command("eval")
@config_options(only=("data_format", "max_audio_seconds", "box_format", "normalized"))
def evaluate(
    run_or_model: str = typer.Argument(..., help="run directory, its model/ folder, or a base model with --task"),
    data: Optional[str] = typer.Option(None, help="evaluation data (default: the run's validation data)"),
    task: Optional[str] = typer.Option(None, help=f"task for a base model: {tasks_help()}"),
    batch_size: int = typer.Option(64),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    json_out: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
    **flags: Any,
) -> None:
    """Evaluate a trained run or model on data with the task's metrics."""
    from modaltune.api import evaluate as run_evaluate

    metrics = run_evaluate(run_or_model, data, task=task, batch_size=batch_size, skip_bad=skip_bad,
                           **_limits(flags["data_format"], flags["max_audio_seconds"], flags["box_format"],
                                     flags["normalized"]))
    if json_out:
        print(json.dumps(metrics, indent=2))
    else:
        _print_metrics(metrics, run_or_model)


@app.command()
@config_options(only=("num_beams", "max_new_tokens", "threshold", "max_detections", "save_images"))
def predict(
    run_or_model: str = typer.Argument(..., help="run directory, its model/ folder, or a base model with --task"),
    inputs: list[str] = typer.Argument(..., help="media files the model takes (images, audio clips)"),
    task: Optional[str] = typer.Option(None, help=f"task for a base model: {tasks_help()}"),
    labels: Optional[str] = typer.Option(None, help="classify (or detect) zero-shot over these labels: a,b,c"),
    texts: Optional[str] = typer.Option(None, help="retrieve: rank these candidate texts: a,b,c"),
    question: Optional[str] = typer.Option(None, help="vqa: the question asked about every image"),
    **flags: Any,
) -> None:
    """Predict for media files; one JSON object per line on stdout."""
    from modaltune.api import predict as run_predict

    for result in run_predict(run_or_model, inputs, task=task, labels=_split_list(labels), texts=_split_list(texts),
                              question=question, num_beams=flags["num_beams"],
                              max_new_tokens=flags["max_new_tokens"], threshold=flags.get("threshold"),
                              max_detections=flags.get("max_detections"), save_images=flags.get("save_images")):
        print(json.dumps(result))


@app.command()
def demo(
    output: Path = typer.Option(Path("demo-output"), help="where results, runs and report.html go"),
    quick: bool = typer.Option(False, "--quick", help="a much smaller demo (for tests)"),
) -> None:
    """The offline end-to-end demo: pretrain a small CLIP on synthetic data, then adapt it every way."""
    from modaltune.testing.demo import run_demo  # scaffolding, not product code: imported only here

    run_demo(output, quick=quick, console=console)


#: The benchmarks are scripts of the source checkout (``benchmarks/``), not part of the installed package.
BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def load_benchmark(name: str, command: str) -> Any:
    """``benchmarks/<name>.py`` of the source checkout this package runs from, imported as a module."""
    import importlib.util

    from modaltune.errors import ConfigError

    script = BENCHMARKS / f"{name}.py"
    if not script.is_file():
        raise ConfigError(f"`modaltune {command}` runs benchmarks/{name}.py of a source checkout, and this "
                          f"installation has none ({script} does not exist): clone the repository, "
                          f"`pip install -e .` there and run `python benchmarks/{name}.py`")
    module_spec = importlib.util.spec_from_file_location(f"_modaltune_benchmark_{name}", script)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up while the file runs
    module_spec.loader.exec_module(module)
    return module


@app.command("bench-transfer", hidden=True)
def bench_transfer(
    output: Path = typer.Option(Path("bench-transfer-output"), help="where data, runs and results go"),
    quick: bool = typer.Option(False, "--quick", help="a tiny version (for tests)"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds to average over (default 8-12; "
                                     "seeds 0-7 developed or measured earlier rules)"),
    rerun: Optional[str] = typer.Option(None, help="re-measure only these rows (comma-separated, e.g. "
                                        "auto+replay+wise-ft) of the finished benchmark in --output"),
) -> None:
    """The synthetic transfer benchmark (benchmarks/bench_transfer.py of a source checkout)."""
    bench = load_benchmark("bench_transfer", "bench-transfer")
    bench.run_bench(output, quick=quick, seeds=_int_list(seeds, "--seeds"),
                    rerun=_split_list(rerun), console=console)


from modaltune.cli import chat as _chat  # noqa: E402, F401  (registers `modaltune chat`)
from modaltune.cli import export as _export  # noqa: E402, F401  (registers `modaltune export`)
from modaltune.cli import push as _push  # noqa: E402, F401  (registers `modaltune push`)
from modaltune.cli import serve as _serve  # noqa: E402, F401  (registers `modaltune serve`)

#: Typer 0.2x vendors its own click: the usage errors it raises (a missing or malformed option, a
#: `typer.BadParameter` from a command) are not `click.ClickException`s, and were reported as
#: internal errors (exit 1) instead of bad usage (exit 2).
_TYPER_USAGE_ERROR: type[Any] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _log_to_console() -> None:
    """The library's warnings and notes (``logging``, never ``print``) shown through rich on stderr."""
    import logging

    from rich.logging import RichHandler

    package = logging.getLogger("modaltune")
    if not any(isinstance(h, RichHandler) for h in package.handlers):
        package.addHandler(RichHandler(console=console, show_time=False, show_path=False, markup=False))
    package.setLevel(logging.INFO)


def main() -> None:
    _log_to_console()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Our own progress bar is the one to watch; the hub's per-file bars only add noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except ModaltuneError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        console.print("aborted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors are handled below; anything else is our bug
        import click

        if isinstance(exc, (click.ClickException, _TYPER_USAGE_ERROR)):
            exc.show()
            sys.exit(2)
        if os.environ.get("MODALTUNE_DEBUG"):
            raise
        console.print(f"[red]internal error:[/] {type(exc).__name__}: {exc}\n"
                      "Rerun with MODALTUNE_DEBUG=1 for the traceback, and please report it.", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
