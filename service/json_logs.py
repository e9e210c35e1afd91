"""Structured logs for the service: one JSON object per line on stderr, with the request id.

Fields: ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``msg``, ``request_id`` when the
record was emitted while handling a request, any ``extra={...}`` fields passed to the logger, and ``exc``
(the formatted traceback) for exceptions.

Writing happens in a background thread (:class:`BackgroundWriter`): the request path only stamps the
record with its request id and puts it on a queue; every ``FLUSH_S`` the writer formats what has queued up
and writes it in one system call. A write and flush per access-log line on the event loop cost about a
tenth of the CPU of a request; a writer woken by every record cost a fifth to a quarter of an uncached
request's CPU (a thread wake-up and a hand-over of the GIL per record; docs/benchmarks.md, "Access-log
writer"), hence the timer. Lines reach stderr at most ``FLUSH_S`` late. At exit the queue is drained, so no line is lost on a
clean shutdown. The queue is bounded
(``MAX_QUEUED`` records): when the writer falls behind (an overload logs a line per shed request), records
past the bound are dropped and counted, and the writer reports the count, instead of the backlog growing
the process's memory without limit.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import logging
import queue
import sys
import threading
import time
from typing import Any, TextIO

from .request_context import request_id_var

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is emitted as a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
MAX_QUEUED = 50_000
FLUSH_S = 0.02  # the writer's period: how late a line may reach stderr


class JsonFormatter(logging.Formatter):
    """Format records as single-line JSON objects."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line (never raises on odd ``extra`` values: they are ``str()``-ed)."""
        out: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid is not None:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key == "request_id":
                continue
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class BackgroundWriter(logging.Handler):
    """A handler that queues records and writes them, JSON-formatted, from a daemon thread in batches."""

    def __init__(self, stream: TextIO, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.stream = stream
        self._queue: queue.Queue[logging.LogRecord | None] = queue.Queue(MAX_QUEUED)
        self._dropped = 0  # records refused by the full queue since the writer last said so
        self._thread = threading.Thread(target=self._run, name="hashrec-log-writer", daemon=True)
        self._sync = False
        self._thread.start()
        atexit.register(self.close)

    def emit(self, record: logging.LogRecord) -> None:
        """Stamp the request id (a context variable of the caller's thread) and queue the record (or, after
        :meth:`go_synchronous`, write it now)."""
        if self._sync:
            try:
                self.stream.write(self.format(record) + "\n")
                self.stream.flush()
            except Exception:  # stderr closed or an unformattable record: never raise from logging
                pass
            return
        # (exc_info stays on the record: the writer formats the traceback from it)
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        # resolve %-arguments now: they may be mutable objects that change before the writer runs
        record.msg = record.getMessage()
        record.args = None
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._dropped += 1  # a lost update under a race is harmless: the count is a report, not a ledger

    def _run(self) -> None:
        while True:
            # a timer, not a wait on the queue: a put then wakes no thread (see the module docstring)
            time.sleep(FLUSH_S)
            batch: list[logging.LogRecord | None] = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = []
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                lines.append(
                    json.dumps(
                        {
                            "level": "WARNING",
                            "logger": "hashrec.logs",
                            "msg": "log records dropped: the writer fell behind",
                            "dropped": dropped,
                        }
                    )
                )
            stop = False
            for rec in batch:
                if rec is None:
                    stop = True
                    continue
                try:
                    lines.append(self.format(rec))
                except Exception:  # a bad record must not kill the writer
                    lines.append(json.dumps({"level": "ERROR", "msg": "unformattable log record"}))
            if lines:
                try:
                    self.stream.write("\n".join(lines) + "\n")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass  # stderr closed: nothing left to tell
            if stop:
                return

    def go_synchronous(self) -> None:
        """Write what is queued now, then write later records in the caller's thread.

        For shutdown: uvicorn re-raises SIGTERM once it has stopped, which kills the process with no atexit
        hooks, so records still queued (or emitted after the lifespan ends: "Application shutdown complete",
        "Finished server process") would be lost.
        """
        self.close()
        self._sync = True

    def close(self) -> None:
        """Write what is queued and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)
        super().close()


def finish_background_logging() -> None:
    """Drain every :class:`BackgroundWriter` of the root logger and make it synchronous (see
    :meth:`BackgroundWriter.go_synchronous`); call when the app shuts down."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BackgroundWriter):
            handler.go_synchronous()


def setup_json_logging(level: str = "INFO") -> None:
    """Send every logger (ours, uvicorn's) to stderr as JSON lines at ``level``."""
    handler = BackgroundWriter(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    root._hashrec_configured = True  # type: ignore[attr-defined]  # hashrec.logs must not replace it
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
