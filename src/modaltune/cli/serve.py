"""`modaltune serve`: load a run (or a base model) once and serve it over HTTP with a web page."""

from __future__ import annotations

from typing import Any, Optional

import typer

from modaltune.cli import _split_list, app, console
from modaltune.cli.options import config_options, tasks_help
from modaltune.serve.limits import ServeLimits

_DEFAULTS = ServeLimits()
#: The tasks' own options a server may set (`predict`'s, less --save-images: a server writes no files).
_TASK_OPTIONS = ("num_beams", "max_new_tokens", "threshold", "max_detections")


@app.command()
@config_options(only=_TASK_OPTIONS)
def serve(
    run_or_model: str = typer.Argument(..., help="run directory, its model/ folder, or a base model with --task"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, help="port to listen on"),
    task: Optional[str] = typer.Option(None, help=f"task for a base model: {tasks_help()}"),
    labels: Optional[str] = typer.Option(None, help="classify (or detect) zero-shot over these labels: a,b,c"),
    texts: Optional[str] = typer.Option(None, help="retrieve: candidate texts to rank: a,b,c"),
    max_upload_mb: float = typer.Option(_DEFAULTS.max_upload_mb, help="largest request body, in MB (413 past it)"),
    max_pixels: int = typer.Option(_DEFAULTS.max_pixels, help="largest decoded image, in pixels (413 past it)"),
    max_audio_seconds: float = typer.Option(_DEFAULTS.max_audio_seconds,
                                            help="longest audio clip, in seconds (413 past it)"),
    max_batch: int = typer.Option(_DEFAULTS.max_batch,
                                  help="most inputs per model call (and per request: 413 past it)"),
    batch_wait_ms: float = typer.Option(_DEFAULTS.batch_wait_ms,
                                        help="how long a request waits for others to batch with, in ms"),
    timeout: float = typer.Option(_DEFAULTS.timeout, help="seconds a request waits for its prediction (504)"),
    max_pending: int = typer.Option(_DEFAULTS.max_pending,
                                    help="requests in progress at once; more are answered 503"),
    trust_remote_code: bool = typer.Option(False, help="allow a hub model's own code to run"),
    **flags: Any,
) -> None:
    """Serve a model: POST /predict, GET /health, GET /info, a web page at /, OpenAPI at /docs."""
    from modaltune.serve import Service, run_server

    limits = ServeLimits(max_upload_mb=max_upload_mb, max_pixels=max_pixels, max_audio_seconds=max_audio_seconds,
                         max_batch=max_batch, batch_wait_ms=batch_wait_ms, timeout=timeout,
                         max_pending=max_pending).check()
    service = Service.load(run_or_model, limits=limits, task=task, labels=_split_list(labels),
                           texts=_split_list(texts), trust_remote_code=trust_remote_code,
                           **{name: flags.get(name) for name in _TASK_OPTIONS})
    console.print(f"serving {service.task.name} model {run_or_model} on http://{host}:{port}/ "
                  f"(API docs at /docs; Ctrl-C stops)", highlight=False)
    run_server(service, host=host, port=port)
