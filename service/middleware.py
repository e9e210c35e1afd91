"""The service's one ASGI middleware: request id, body-size limit, metrics and the access log.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``, which costs a task and a stream per request) because
it runs on every request, including the benchmark's floor endpoint.

- **Request id**: ``X-Request-ID`` from the client when safe to echo, else a new one; set on the response
  and in a context variable that every log line of the request carries.
- **Body limit**: bodies larger than ``max_body_bytes`` get 413 in the one error shape, whether the client
  announced the size (``Content-Length``) or streamed it chunked; the body is read here (bounded) and
  replayed to the app.
- **Metrics**: count and latency per route template (never the raw path: no per-user series), method and
  status; unmatched paths are labelled ``<unmatched>``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .metrics import ServiceMetrics
from .request_context import accept_request_id, request_id_var

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("hashrec.access")

_BODY_METHODS = {"POST", "PUT", "PATCH"}


def _error_body(code: str, message: str, field: str | None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "field": field}}).encode()


class ServiceMiddleware:
    """Wraps the FastAPI app; see the module docstring."""

    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int, log_requests: bool = True
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope (HTTP only; lifespan and others pass through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = dict(scope.get("headers") or ())
        rid = accept_request_id(
            headers.get(b"x-request-id", b"").decode("latin-1") if b"x-request-id" in headers else None
        )
        token = request_id_var.set(rid)
        status_holder = [500]
        started = [False]
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            if scope["method"] in _BODY_METHODS:
                body = await self._read_body(headers, receive)
                if body is None:
                    await self._send_413(send_wrapper)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # A bug escaped the app's handlers. Answer 500 in the one error shape with the request id (when
            # nothing was sent yet) instead of letting the server drop the connection; log the stack once.
            access_log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started[0]:
                body = _error_body("internal", f"internal error (request id {rid})", None)
                await send_wrapper(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send_wrapper({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - t0
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            status = str(status_holder[0])
            method = scope["method"]
            self.metrics.requests.labels(template, method, status).inc()
            self.metrics.latency.labels(template, method, status).observe(elapsed)
            if self.log_requests:
                access_log.info(
                    "%s %s %s %.2f ms",
                    method,
                    scope["path"],
                    status,
                    elapsed * 1000,
                    extra={
                        "method": method,
                        "path": scope["path"],
                        "status": int(status),
                        "ms": elapsed * 1000,
                    },
                )
            request_id_var.reset(token)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it exceeds the limit (announced or streamed)."""
        announced = headers.get(b"content-length")
        if announced is not None:
            try:
                if int(announced) > self.max_body_bytes:
                    return None
            except ValueError:
                pass  # a malformed Content-Length is the server's (h11/httptools) business
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _send_413(self, send: Send) -> None:
        body = _error_body(
            "body_too_large", f"request body exceeds the limit of {self.max_body_bytes} bytes", "body"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive callable that yields ``body`` once, then defers to the real one (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
