"""The FastAPI application: ``POST /predict``, ``GET /health``, ``GET /info``, the page at ``/``, OpenAPI at ``/docs``.

A request's journey: the body-size limit (middleware) → parsing (multipart or JSON) → the number of
inputs → each upload decoded and checked on a worker thread (kind, pixels, seconds) → the batcher,
which runs it with other requests' inputs → ``task.predict``'s dicts. Every refusal is a JSON
``{"error": {"status", "code", "message"}}``; a failing input fails its own request only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from modaltune.errors import ModaltuneError
from modaltune.serve.batching import Batcher
from modaltune.serve.docs import add_docs, docs_folder
from modaltune.serve.limits import BodyLimit, ServeError
from modaltune.serve.page import page_html
from modaltune.serve.service import Input, Service, option_key

logger = logging.getLogger(__name__)

_MEDIA_KEYS = ("file", "files", "image", "audio", "media", "data")

_PREDICT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object",
            "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                         "description": "one or more media files (image, audio: what the model takes)"},
                "question": {"type": "string", "description": "the question about each file (vqa, chat)"},
                "conversation": {"type": "string", "description": "chat: instead of a question, the conversation "
                                 "to answer as a JSON list of messages ({role, content} or LLaVA's {from, value}), "
                                 "ending with the user's turn, one <image> per file"},
                "labels": {"type": "string", "description": "candidate labels, comma- or newline-separated "
                                                            "(classify: zero-shot over these instead; detect: "
                                                            "the classes to find)"},
                "texts": {"type": "string", "description": "candidate texts, one per line (retrieve)"},
            },
            "required": ["file"]}},
        "application/json": {"schema": {
            "type": "object",
            "properties": {
                "inputs": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "description": "base64 of the file, or a data: URL"},
                                   "name": {"type": "string"}, "question": {"type": "string"},
                                   "conversation": {"type": "array", "items": {"type": "object"}}}}},
                "file": {"type": "string", "description": "one input: base64 of the file, or a data: URL"},
                "question": {"type": "string"},
                "conversation": {"type": "array", "items": {"type": "object"},
                                 "description": "chat: the messages to answer, ending with the user's turn"},
                "labels": {"type": "array", "items": {"type": "string"}},
                "texts": {"type": "array", "items": {"type": "string"}},
            }}},
    },
}


def create_app(service: Service) -> FastAPI:
    """The server's application around a loaded `Service` (its limits included)."""
    limits = service.limits
    batcher = Batcher(service.run_batch, max_batch=limits.max_batch, wait_s=limits.batch_wait_ms / 1000)
    state = {"pending": 0, "served": 0, "started": time.time()}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    assets = docs_folder()
    # ReDoc has no local copy (its script comes from a CDN), so only Swagger UI's /docs is offered.
    app = FastAPI(title="modaltune", version="1", lifespan=lifespan, docs_url=None if assets else "/docs",
                  redoc_url=None, description=f"Predictions of a {service.task.name} model ({service.source}).")
    if assets is not None:
        add_docs(app, assets, "modaltune")
    app.state.service = service
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limits=limits)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse(ServeError(exc.status_code, code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(ServeError(422, "bad_request", str(exc.errors())).body(), status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Answered as JSON too; starlette logs the traceback and the server goes on serving.
        return JSONResponse(ServeError(500, "internal_error", f"{type(exc).__name__}: {exc}").body(), status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the model is loaded and the batcher runs."""
        return {"status": "ok", "task": service.task.name, "pending": state["pending"], "served": state["served"],
                "batches": len(batcher.batch_sizes), "uptime_s": round(time.time() - state["started"], 1)}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """The model's card: task, base model, labels, metrics, and what a request carries."""
        return service.info()

    @app.post("/predict", openapi_extra={"requestBody": _PREDICT_BODY})
    async def predict(request: Request) -> dict[str, Any]:
        """Predictions for the uploaded files, one dict per file, as `modaltune predict` prints them."""
        if state["pending"] >= limits.max_pending:
            raise ServeError(503, "busy", f"{state['pending']} requests are waiting already (--max-pending "
                                          f"{limits.max_pending}); retry shortly")
        state["pending"] += 1
        try:
            inputs, options = await _parse(request, service)
            options = service.request_options(options)
            items = [await run_in_threadpool(service.decode, item, i) for i, item in enumerate(inputs)]
            try:
                predictions, batch_size = await asyncio.wait_for(
                    batcher.submit(option_key(options), items), timeout=limits.timeout)
            except asyncio.TimeoutError:
                raise ServeError(504, "timeout", f"no prediction within {limits.timeout:g} s (--timeout); the "
                                                 "server is busy or the input is too large for it") from None
            except ModaltuneError as exc:
                raise ServeError(422, "bad_input", str(exc)) from None
            except Exception as exc:  # the model failed on this request's inputs: its error, not the server's
                logger.exception("prediction failed")
                raise ServeError(500, "prediction_failed", f"{type(exc).__name__}: {exc}") from None
            state["served"] += 1
            return {"task": service.task.name, "predictions": predictions, "batch_size": batch_size}
        finally:
            state["pending"] -= 1

    return app


async def _parse(request: Request, service: Service) -> tuple[list[Input], dict[str, Any]]:
    """The inputs and per-request options of a multipart or JSON request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        inputs, options = await _parse_form(request, service)
    elif content_type == "application/json":
        inputs, options = await _parse_json(request, service)
    else:
        raise ServeError(415, "unsupported_content_type",
                         f"send multipart/form-data (files in a 'file' field) or application/json, not "
                         f"{content_type or 'a body without a content type'!r}")
    if not inputs:
        raise ServeError(422, "missing_field", "no input: send at least one file (multipart field 'file', or "
                                               "JSON 'file' / 'inputs')")
    if len(inputs) > service.limits.max_batch:
        raise ServeError(413, "too_many_inputs", f"{len(inputs)} inputs in one request, over the limit of "
                                                 f"{service.limits.max_batch} (--max-batch); split the request")
    return inputs, options


async def _parse_form(request: Request, service: Service) -> tuple[list[Input], dict[str, Any]]:
    from starlette.datastructures import UploadFile

    limits = service.limits
    try:
        form = await request.form(max_files=limits.max_batch + 1, max_fields=64, max_part_size=1024 * 1024)
    except HTTPException as exc:
        if "Too many files" in str(exc.detail):
            raise ServeError(413, "too_many_inputs", f"more than {limits.max_batch} files in one request "
                                                     "(--max-batch); split the request") from None
        raise ServeError(400, "bad_multipart", str(exc.detail)) from None
    try:
        values = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        # The task's other fields (a question; a conversation, as JSON) go with every file of the request.
        fields = {k: _json_or_text(v) for k, v in values.items() if k not in ("labels", "texts")}
        inputs: list[Input] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in _MEDIA_KEYS:
                    raise ServeError(422, "unknown_field", f"file field {key!r}: send files as 'file'")
                data = await value.read()
                inputs.append(Input(data, _display_name(value.filename, len(inputs)), dict(fields)))
        options: dict[str, Any] = {name: values[name] for name in ("labels", "texts") if name in values}
        return inputs, options
    finally:
        await form.close()


async def _parse_json(request: Request, service: Service) -> tuple[list[Input], dict[str, Any]]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ServeError(422, "bad_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ServeError(422, "bad_json", "the body must be a JSON object")
    entries = body.get("inputs")
    if entries is None:
        entries = [body] if any(k in body for k in _MEDIA_KEYS) else []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ServeError(422, "bad_json", "'inputs' must be a list of objects, each with a base64 'file'")
    shared = {k: v for k, v in body.items() if k not in ("inputs", "labels", "texts", "name", *_MEDIA_KEYS)}
    inputs: list[Input] = []
    for i, entry in enumerate(entries):
        key = next((k for k in _MEDIA_KEYS if k in entry), None)
        if key is None:
            raise ServeError(422, "missing_field", f"inputs[{i}] has no 'file' (base64 of the file)")
        values = {**shared, **{k: v for k, v in entry.items() if k not in (*_MEDIA_KEYS, "name")}}
        name = entry.get("name") if isinstance(entry.get("name"), str) else None
        inputs.append(Input(_from_base64(entry[key], i), _display_name(name, i), values))
    options = {name: body[name] for name in ("labels", "texts") if name in body}
    return inputs, options


def _json_or_text(value: str) -> Any:
    """A form field's value: JSON when it is a JSON list or object (a conversation), else the text."""
    import json

    if value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def _from_base64(value: Any, index: int) -> bytes:
    """The bytes of a base64 string or a ``data:`` URL; never a path or a URL to fetch."""
    if not isinstance(value, str):
        raise ServeError(422, "bad_base64", f"inputs[{index}].file must be a base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(422, "bad_base64", f"inputs[{index}].file is not base64: send the file's content "
                                            "base64-encoded (paths and URLs are not read)") from None


def _display_name(name: str | None, index: int) -> str:
    """The client's file name, for answers and messages only (never a path here): its last part, short."""
    if not name:
        return f"input-{index}"
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return (base or f"input-{index}")[:120]
