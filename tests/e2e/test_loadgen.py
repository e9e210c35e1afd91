"""The load generator's checks are what make the fault tests meaningful: prove they catch wrong,
mixed-version, truncated and unanswered requests (a check that always passed would make every fault
scenario pass)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from loadgen import (
    NOT_ANSWERED,
    HttpError,
    LoadResult,
    LoadSpec,
    Target,
    check_answer,
    http_exchange,
    run_load,
    start_load,
    window_stats,
)
from support import free_port

EXPECTED = {"v1": {"u1": ["a", "b"]}, "v2": {"u1": ["c", "d"]}}


def answer(version: str, items: list[str], source: str = "model") -> bytes:
    return json.dumps(
        {"user": "u1", "version": version, "source": source, "items": [{"item": i} for i in items]}
    ).encode()


def test_check_answer_accepts_the_right_items_of_either_version() -> None:
    t = Target("GET", "/recommend/u1", user="u1")
    assert check_answer(t, 200, answer("v1", ["a", "b"]), EXPECTED) == ("", "v1", "model")
    assert check_answer(t, 200, answer("v2", ["c", "d"], "cache"), EXPECTED) == ("", "v2", "cache")


@pytest.mark.parametrize(
    ("status", "body", "needle"),
    [
        (200, answer("v1", ["c", "d"]), "wrong items"),  # v2's items labelled v1: a mixed-version answer
        (200, answer("v1", ["a"]), "wrong items"),
        (200, answer("v3", ["a", "b"]), "unknown version"),
        (500, b"{}", "http 500"),
        (200, b"{not json", "malformed"),
        (200, b'{"items": []}', "without a version"),
    ],
)
def test_check_answer_catches_bad_answers(status: int, body: bytes, needle: str) -> None:
    err, _v, _s = check_answer(Target("GET", "/recommend/u1", user="u1"), status, body, EXPECTED)
    assert needle in err


def test_batch_answers_must_carry_one_version() -> None:
    t = Target("POST", "/recommend", kind="batch")
    ok = json.dumps({"version": "v1", "results": [{"version": "v1"}, {"version": "v1"}]}).encode()
    mixed = json.dumps({"version": "v1", "results": [{"version": "v1"}, {"version": "v2"}]}).encode()
    assert check_answer(t, 200, ok, None)[0] == ""
    assert "mixed" in check_answer(t, 200, mixed, None)[0]


async def _serve_once(reply: bytes) -> tuple[asyncio.base_events.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10, "truncated"),
        (b"", NOT_ANSWERED),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "truncated"),
    ],
)
def test_http_exchange_reports_cut_answers(reply: bytes, needle: str) -> None:
    async def go() -> None:
        server, port = await _serve_once(reply)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(HttpError, match=needle):
            await http_exchange(reader, writer, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        writer.close()
        server.close()

    asyncio.run(go())


def test_http_exchange_reads_chunked_and_sized_bodies() -> None:
    async def go(reply: bytes) -> bytes:
        server, port = await _serve_once(reply)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        status, _h, body, _keep = await http_exchange(reader, writer, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        writer.close()
        server.close()
        assert status == 200
        return body

    assert asyncio.run(go(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")) == b"abc"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert asyncio.run(go(chunked)) == b"abcde"


def test_open_loop_counts_every_scheduled_request_even_when_nothing_listens() -> None:
    spec = LoadSpec(port=free_port(), targets=[Target("GET", "/x", kind="status")], duration_s=0.5, rate=40)
    res = asyncio.run(run_load(spec))
    assert len(res) == 20 and all(res.error)  # every request failed (refused), none silently dropped
    assert all(sent >= t for sent, t in zip(res.sent, res.t, strict=True))  # sent at or after its schedule
    stats = window_stats(res, res.t0, res.t0 + 0.5)
    assert stats["requests"] == 20 and stats["failures"] == 20


def test_window_stats() -> None:
    r = LoadResult(t0=0.0)
    for i in range(100):
        r.add(i * 0.01, 0.001 * (i + 1), 200, "" if i != 50 else "http 500", "v", "model")
    s = window_stats(r, 0.0, 0.5)
    assert s["requests"] == 50 and s["failures"] == 0 and s["rps"] == 100.0
    assert s["p50_ms"] == pytest.approx(25.5) and s["p99_ms"] == pytest.approx(49.51)
    assert window_stats(r, 0.5, 1.0)["failures"] == 1
    assert window_stats(r, 5.0, 6.0)["p99_ms"] is None


def test_closed_loop_stops_at_its_count() -> None:
    spec = LoadSpec(
        port=free_port(), targets=[Target("GET", "/x", kind="status")], duration_s=30, connections=3, count=7
    )
    t = time.monotonic()
    res = asyncio.run(run_load(spec))
    assert len(res) == 7 and time.monotonic() - t < 10  # the count ended it, not the 30 s


def test_a_stopped_run_sends_nothing_more_and_still_reports() -> None:
    """``stop`` ends an open-loop run long before its duration; what was sent before is in the result."""
    spec = LoadSpec(port=free_port(), targets=[Target("GET", "/x", kind="status")], duration_s=600, rate=50)
    handle = start_load(spec)
    time.sleep(3.0)  # the process starts (spawn) and, unless the machine is busy, sends for a while
    t = time.monotonic()
    handle.stop()
    res = handle.result(timeout=60)
    assert time.monotonic() - t < 30  # not the 600 s it was given
    assert len(res) < 50 * 30 and all(res.error)  # refused (nothing listens); none after the stop
