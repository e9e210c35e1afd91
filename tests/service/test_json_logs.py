"""The background log writer: every line written in order, a bounded backlog, nothing lost at close."""

from __future__ import annotations

import io
import json
import logging
import threading

from hashrec.service import json_logs
from hashrec.service.json_logs import BackgroundWriter, JsonFormatter


def _writer(stream: io.StringIO) -> BackgroundWriter:
    writer = BackgroundWriter(stream)
    writer.setFormatter(JsonFormatter())
    return writer


class _SlowStream(io.StringIO):
    """A stream whose writes block until released: the writer falls behind on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait(timeout=30)
        return super().write(s)


def _records(n: int) -> list[logging.LogRecord]:
    return [logging.LogRecord("t", logging.INFO, __file__, 1, f"line {i}", None, None) for i in range(n)]


def test_lines_are_written_in_order_and_flushed_at_close() -> None:
    stream = io.StringIO()
    writer = _writer(stream)
    for r in _records(500):
        writer.emit(r)
    writer.close()
    msgs = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    assert msgs == [f"line {i}" for i in range(500)]


def test_a_writer_that_falls_behind_drops_and_reports_instead_of_growing(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(json_logs, "MAX_QUEUED", 100)
    stream = _SlowStream()
    writer = _writer(stream)
    for r in _records(1000):  # the writer is stuck in its first write: the queue fills at 100
        writer.emit(r)
    assert writer._queue.qsize() <= 100
    stream.release.set()
    writer.emit(_records(1)[0])
    writer.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    reports = [x for x in lines if x.get("dropped")]
    kept = [x for x in lines if not x.get("dropped")]
    assert reports and sum(x["dropped"] for x in reports) + len(kept) == 1001
    assert len(kept) < 1001 and reports[0]["level"] == "WARNING"
