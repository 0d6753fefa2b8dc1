"""What one request may cost the server, and the JSON errors it answers when a request asks too much.

Every limit is checked before the expensive step it guards: the body size while the bytes arrive
(``Content-Length`` first, then a running count for chunked uploads), the pixel count from the image
header before any pixel is decoded (the decompression-bomb rule training uses), the audio length from
the header, the number of inputs before anything is decoded, and the wait for a result by a timeout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from modaltune.data.media import DEFAULT_MAX_PIXELS
from modaltune.data.validate import DEFAULT_MAX_AUDIO_SECONDS
from modaltune.errors import ConfigError

MB = 1024 * 1024

#: HTTP status of a media reason code (`modaltune.data.validate.REASONS`): too big is 413, not a
#: kind the model reads is 415, anything else wrong with the content is 422.
REASON_STATUS = {
    "image_too_large": 413,
    "audio_too_long": 413,
    "not_an_image": 415,
    "not_audio": 415,
    "unsupported_file": 415,
}


@dataclass(frozen=True)
class ServeLimits:
    """The server's limits; `check` says which one is set wrong."""

    max_upload_mb: float = 10.0  # the whole request body
    max_pixels: int = DEFAULT_MAX_PIXELS  # per decoded image, as in training
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS  # per decoded clip, as in training
    max_batch: int = 8  # inputs per model call, and per request
    batch_wait_ms: float = 10.0  # how long the first request of a batch waits for others
    timeout: float = 60.0  # seconds a request waits for its predictions
    max_pending: int = 64  # requests being decoded or waiting for the model; more are turned away (503)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    def check(self) -> ServeLimits:
        positive = {"max_upload_mb": self.max_upload_mb, "max_pixels": self.max_pixels,
                    "max_audio_seconds": self.max_audio_seconds, "max_batch": self.max_batch,
                    "timeout": self.timeout, "max_pending": self.max_pending}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be more than 0, got {value}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"--batch-wait-ms must be 0 or more, got {self.batch_wait_ms}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ServeError(Exception):
    """A request the server refuses: an HTTP status, a short code (a media reason code where there is
    one) and a message naming the problem and how to fix it. Answered as JSON, never a crash."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


def too_large(limits: ServeLimits, size: int | None = None) -> ServeError:
    got = f" ({size / MB:.1f} MB)" if size is not None else ""
    return ServeError(413, "upload_too_large",
                      f"the request body{got} is over the server's limit of {limits.max_upload_mb:g} MB "
                      "(--max-upload-mb); send a smaller file")


class BodyLimit:
    """ASGI middleware: a body over the limit is refused with 413 before the application reads it,
    from ``Content-Length`` when the client sends one, else by counting the bytes as they arrive."""

    def __init__(self, app: Any, limits: ServeLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_upload_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_error(send, too_large(self.limits, int(declared)))
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large(self.limits)  # answered by the application's ServeError handler
            return message

        await self.app(scope, counted, send)


async def _send_error(send: Any, error: ServeError) -> None:
    import json

    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
