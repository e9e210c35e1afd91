"""The service's one ASGI middleware: request id, admission control, API token, body-size limit, metrics and
the access log.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``, which costs a task and a stream per request) because
it runs on every request, including the benchmark's floor endpoint.

- **Request id**: ``X-Request-ID`` from the client when safe to echo, else a new one; set on the response
  and in a context variable that every log line of the request carries.
- **Admission control**: at most ``max_inflight`` requests in progress in this worker (probes and metrics
  are never counted nor refused); past it, 503 ``overloaded`` with ``Retry-After`` at once, in the one error
  shape, instead of a queue that grows until every request is late. The arrival time is left in the scope
  (``hashrec.arrival``) for the handlers' deadlines.
- **API token** (``api_token``): every endpoint but the probes and the admin one (which has its own token)
  asks for ``Authorization: Bearer <token>``; 401 otherwise.
- **Body limit**: bodies larger than ``max_body_bytes`` get 413 in the one error shape, whether the client
  announced the size (``Content-Length``) or streamed it chunked; the body is read here (bounded) and
  replayed to the app.
- **Metrics**: count and latency per route template (never the raw path: no per-user series), method and
  status; unmatched paths are labelled ``<unmatched>``.
- **Access log**: one line per request, except refusals by admission control: those are counted and logged
  as one line a second (:class:`RefusalLog`), because a flood of them is what overload looks like.
"""

from __future__ import annotations

import hmac
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
PROBES = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})


def _error_body(code: str, message: str, field: str | None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "field": field}}).encode()


def bearer_ok(headers: dict[bytes, bytes], token: str) -> bool:
    """Whether the headers carry ``Authorization: Bearer <token>`` (constant-time comparison: the time
    taken must not tell how much of a guess was right)."""
    scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class RefusalLog:
    """Access-log lines for requests refused by admission control: the first at once, then at most one per
    ``every_s`` carrying how many were refused since the previous line (``refused``). A line per refusal
    cost a third of each refusal's CPU (serving_limits.py ``refusals``: 170 vs 111 us with the access log
    off), CPU an overloaded worker lacks. A burst's last count waits for the next refusal;
    ``hashrec_shed_requests_total`` counts every one at once."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.pending = 0
        self.last = -float("inf")

    def note(self, method: str, path: str) -> None:
        """One more refusal (``method path`` is the latest one's, named in the line)."""
        self.pending += 1
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        access_log.info(
            "%s %s 503 overloaded: %d request(s) refused since the last such line",
            method,
            path,
            self.pending,
            extra={"method": method, "path": path, "status": 503, "refused": self.pending},
        )
        self.pending, self.last = 0, now


class ServiceMiddleware:
    """Wraps the FastAPI app; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        max_body_bytes: int,
        log_requests: bool = True,
        max_inflight: int = 0,
        retry_after_s: int = 1,
        api_token: str | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.log_requests = log_requests
        self.max_inflight = max_inflight  # 0 = no limit
        self.retry_after = str(retry_after_s).encode()
        self.api_token = api_token
        self.inflight = 0
        self.refusals = RefusalLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope (HTTP only; lifespan and others pass through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        scope["hashrec.arrival"] = time.monotonic()
        headers = dict(scope.get("headers") or ())
        rid = accept_request_id(
            headers[b"x-request-id"].decode("latin-1") if b"x-request-id" in headers else None
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

        counted = scope["path"] not in PROBES
        try:
            if counted and not await self._admit(scope, headers, send_wrapper):
                return
            if scope["method"] in _BODY_METHODS:
                body = await self._read_body(headers, receive)
                if body is None:
                    await self._send_error(
                        send_wrapper,
                        413,
                        "body_too_large",
                        f"request body exceeds the limit of {self.max_body_bytes} bytes",
                        "body",
                        close=True,
                    )
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # A bug escaped the app's handlers. Answer 500 in the one error shape with the request id (when
            # nothing was sent yet) instead of letting the server drop the connection; log the stack once.
            access_log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started[0]:
                await self._send_error(
                    send_wrapper, 500, "internal", f"internal error (request id {rid})", None
                )
        finally:
            if counted and scope.get("hashrec.admitted"):
                self.inflight -= 1
                self.metrics.inflight.set(self.inflight)
            self._observe(scope, status_holder[0], time.perf_counter() - t0)
            request_id_var.reset(token)

    async def _admit(self, scope: Scope, headers: dict[bytes, bytes], send: Send) -> bool:
        """Admission control and the API token; answers the refusal itself (returns False then)."""
        if self.max_inflight and self.inflight >= self.max_inflight:
            self.metrics.shed.labels("inflight").inc()
            scope["hashrec.refused"] = True
            await self._send_error(
                send,
                503,
                "overloaded",
                f"the service is at its limit of {self.max_inflight} requests in progress; retry later",
                None,
                extra=[(b"retry-after", self.retry_after)],
            )
            return False
        if (
            self.api_token is not None
            and not scope["path"].startswith("/admin/")
            and not bearer_ok(headers, self.api_token)
        ):
            await self._send_error(
                send,
                401,
                "unauthorized",
                "a valid `Authorization: Bearer <token>` header is required",
                "header.authorization",
                extra=[(b"www-authenticate", b"Bearer")],
            )
            return False
        scope["hashrec.admitted"] = True
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        return True

    def _observe(self, scope: Scope, status: int, elapsed: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "<unmatched>"
        method = scope["method"]
        self.metrics.requests.labels(template, method, str(status)).inc()
        self.metrics.latency.labels(template, method, str(status)).observe(elapsed)
        if not self.log_requests:
            return
        if scope.get("hashrec.refused"):
            self.refusals.note(method, scope["path"])
        else:
            access_log.info(
                "%s %s %s %.2f ms",
                method,
                scope["path"],
                status,
                elapsed * 1000,
                extra={"method": method, "path": scope["path"], "status": status, "ms": elapsed * 1000},
            )

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

    @staticmethod
    async def _send_error(
        send: Send,
        status: int,
        code: str,
        message: str,
        field: str | None,
        *,
        close: bool = False,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        body = _error_body(code, message, field)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(extra or []),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
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
