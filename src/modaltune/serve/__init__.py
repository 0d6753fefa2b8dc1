"""Serve a trained (or base) model over HTTP: a REST API, a web page, limits and dynamic batching.

``modaltune serve RUN`` loads the model once (`Service.load`), wraps it in the FastAPI application of
`create_app` and runs it with uvicorn (`run_server`). Needs the ``serve`` extra (fastapi, uvicorn,
python-multipart); nothing here is imported by the rest of modaltune.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modaltune.serve.limits import ServeError, ServeLimits
from modaltune.serve.service import Service

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ServeError", "ServeLimits", "Service", "create_app", "run_server"]


def create_app(service: Service) -> FastAPI:
    """The application around ``service`` (imports FastAPI, so the ``serve`` extra must be installed)."""
    _require_extra()
    from modaltune.serve.app import create_app as build

    return build(service)


def run_server(service: Service, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
               **uvicorn_options: Any) -> None:
    """Serve ``service`` until interrupted. ``limit_concurrency`` bounds open connections beyond the
    app's own ``max_pending`` (uvicorn answers 503 past it)."""
    app = create_app(service)
    import uvicorn

    options = {"limit_concurrency": service.limits.max_pending * 2, **uvicorn_options}
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, **options)
    finally:
        service.close()


def _require_extra() -> None:
    import importlib.util

    from modaltune.errors import ConfigError

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"serving needs {', '.join(missing)}: pip install 'modaltune[serve]'")
