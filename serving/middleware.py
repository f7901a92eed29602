"""The API's outermost layer: a cap on request bodies (413) and per-request metrics.

The cap holds whether or not the client tells the truth: a declared Content-Length over the limit is
refused before a byte is read; otherwise the body is read as it streams in (chunked, or a
Content-Length that lies low) and refused the moment it passes the limit. A body within the limit is
buffered and replayed to the app, so nothing behind this layer ever sees an oversize body. Both
refusals are JSON `ErrorResponse`s (FastAPI's own `max_body_size` answers the first in plain text).
"""

from __future__ import annotations

import json
import time

from .api_models import error_body
from .metrics import ServingMetrics


class BodyLimitAndMetrics:
    """Pure ASGI middleware. Every HTTP answer (413s and 429s included) is counted by endpoint,
    method and status, with its latency; `endpoints` are the app's route paths and any other path
    counts as "other", so clients cannot mint label values. A client gone before the answer: 499."""

    def __init__(self, app, metrics: ServingMetrics, max_body: int, endpoints: frozenset[str]):
        self.app, self.metrics, self.max_body, self.endpoints = app, metrics, max_body, endpoints

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 499

        async def send_tracked(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            replay = await self._read_body(scope, receive, send_tracked)
            if replay is not None:
                await self.app(scope, replay, send_tracked)
        except Exception:
            status = 500 if status == 499 else status
            raise
        finally:
            path = scope.get("path", "")
            self.metrics.observe_request(path if path in self.endpoints else "other", scope.get("method", ""),
                                         status, time.perf_counter() - started)

    async def _read_body(self, scope, receive, send):
        """A `receive` that replays the whole body, or None once the request has been answered
        (413, 400) or the client has gone."""
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit():
                await _answer(send, 400, "bad_request", "Content-Length is not a number")
                return None
            if int(declared) > self.max_body:
                await _answer(send, 413, "too_large", f"request body of {int(declared)} bytes is over the "
                                                      f"limit of {self.max_body} bytes")
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _answer(send, 413, "too_large", f"request body is over the limit of {self.max_body} bytes")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the server's disconnect notice, when it comes

        return replay


async def _answer(send, status: int, error: str, message: str) -> None:
    payload = json.dumps(error_body(error, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
