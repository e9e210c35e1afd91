"""uvicorn's HTTP protocol (httptools), hardened: bounded request heads and JSON error bodies below the app.

Requests that are not valid HTTP never reach FastAPI: uvicorn answers them itself, in plain text
(``Invalid HTTP request received.``), and it accepts request heads of any size (a 10 MB header or URL is
buffered whole, per connection). This subclass keeps uvicorn's behaviour otherwise and changes two things:

- the request line plus headers may not exceed ``MAX_HEAD_BYTES`` (the URL alone ``MAX_URL_BYTES``): larger
  ones get ``431`` / ``414`` and the connection is closed, so a client cannot make the server hold
  megabytes per connection before the app's own body limit applies;
- every error uvicorn sends itself uses the service's one error shape
  ``{"error": {"code", "message", "field"}}`` with ``application/json``.

Used by ``hashrec serve`` (``uvicorn.run(..., http=HardenedHttpToolsProtocol)``).
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_URL_BYTES = 16 * 1024
# Counted per read while the head is incomplete, so it must exceed one read (asyncio reads <= 256 KiB) plus
# a legitimate head; a head this large is never legitimate for this API.
MAX_HEAD_BYTES = 1024 * 1024

_REASONS = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


def error_bytes(status: int, code: str, message: str, field: str | None = None) -> bytes:
    """A complete HTTP/1.1 error response (JSON body, ``connection: close``)."""
    body = json.dumps({"error": {"code": code, "message": message, "field": field}}).encode()
    head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error"))
    head += b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    return head + body


class HeadTooLargeError(Exception):
    """Raised from a parser callback when the URL exceeds its limit (becomes a 414)."""


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._error: tuple[int, str, str, str | None] | None = None

    def on_message_begin(self) -> None:
        """A new request on this connection: its head starts now."""
        super().on_message_begin()
        self._head_bytes = 0
        self._in_head = True
        self._error = None

    def on_url(self, url: bytes) -> None:
        """Accumulate the URL (uvicorn's way) but refuse it past ``MAX_URL_BYTES``."""
        if len(self.url) + len(url) > MAX_URL_BYTES:
            self._error = (414, "uri_too_long", f"request URL exceeds {MAX_URL_BYTES} bytes", "path")
            raise HeadTooLargeError
        super().on_url(url)

    def on_headers_complete(self) -> None:
        """The head is complete: stop counting it."""
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        """Count head bytes before handing them to the parser; refuse heads past ``MAX_HEAD_BYTES``."""
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._error = (
                    431,
                    "headers_too_large",
                    f"request line and headers exceed {MAX_HEAD_BYTES} bytes",
                    "header",
                )
                self.send_400_response("")
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own error answer, in the service's JSON error shape (and 414/431 for oversized heads)."""
        if self.transport.is_closing():
            return
        if self._error is not None:
            status, code, message, field = self._error
        else:
            status, code, message, field = 400, "malformed_http", f"malformed HTTP request: {msg}", None
        self.transport.write(error_bytes(status, code, message, field))
        self.transport.close()
