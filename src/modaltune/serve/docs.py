"""``/docs`` (Swagger UI) from files on this machine, so the API's page renders behind a firewall.

FastAPI's own ``/docs`` page loads Swagger UI's script and style from a CDN: offline it is blank.
Here the same page (FastAPI's ``get_swagger_ui_html``, its documented recipe for self-hosted docs
assets) points at ``/docs/assets/…``, answered from the ``swagger-ui-bundle-v2`` package of the
``serve`` extra (Swagger UI's release files as a Python package). Swagger UI 5 or later is needed:
FastAPI writes OpenAPI 3.1, which older releases refuse to render. Without such a package the CDN
page is kept, with a warning saying what to install.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

ASSETS_PATH = "/docs/assets"
#: The files the page loads, and their media types: nothing else of the package is served.
ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
          "favicon-32x32.png": "image/png"}
#: Swagger UI releases before this one cannot read OpenAPI 3.1 documents.
MIN_MAJOR = 5


def swagger_ui_folder() -> Path | None:
    """The installed Swagger UI release folder (5 or later) with every asset, else None."""
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    folder = Path(str(swagger_ui_path))
    version = re.search(r"swagger-ui-(\d+)\.", folder.name)
    if version is None or int(version.group(1)) < MIN_MAJOR:
        return None
    if not all((folder / name).is_file() for name in ASSETS):
        return None
    return folder


def docs_folder() -> Path | None:
    """``swagger_ui_folder()``, or None with a warning: FastAPI's CDN page is then kept."""
    folder = swagger_ui_folder()
    if folder is None:
        logger.warning("/docs loads Swagger UI from a CDN (blank without network): pip install "
                       "'swagger-ui-bundle-v2>=5' (in the serve extra) to serve it from this machine")
    return folder


def add_docs(app: FastAPI, folder: Path, title: str) -> None:
    """Serve ``/docs`` on ``app`` (made with ``docs_url=None``) with the Swagger UI assets of ``folder``."""
    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{title} - API",
                                   swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png")

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in ASSETS:  # a fixed list: no client-given name reaches the file system
            raise HTTPException(404, f"no docs asset {name!r}")
        return FileResponse(folder / name, media_type=ASSETS[name],
                            headers={"cache-control": "public, max-age=86400"})
