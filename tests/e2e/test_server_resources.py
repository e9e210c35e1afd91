"""What only a server process shows: slow clients do not starve others, and an export's memory is one
batch, not the whole stream (the server's resident memory while it streams)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from support import ServerProcess, make_bundle
from support.processes import descendants


def test_slow_clients_do_not_starve_others(server: ServerProcess) -> None:
    """Slowloris-style, bounded: 40 connections dribble a request one byte at a time for 3 s while a
    normal client keeps getting answers; its median stays far below the time the slow ones hold."""
    socks = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET /recommend/u0 HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    lat = []
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            end = time.monotonic() + 3.0
            i = 0
            while time.monotonic() < end or len(lat) < 20:
                for s in socks:
                    # one byte of a header name per round: never completes (the server may close the
                    # connection, which is fine)
                    with contextlib.suppress(OSError):
                        s.sendall(b"X")
                t0 = time.perf_counter()
                r = c.get(f"/recommend/u{3 + i}", params={"k": 5 + i % 5})
                lat.append(time.perf_counter() - t0)
                assert r.status_code == 200
                i += 1
                time.sleep(0.05)
    finally:
        for s in socks:
            s.close()
    lat.sort()
    # a starved client would wait for the slow ones (3 s and more); a busy machine adds milliseconds
    assert lat[len(lat) // 2] < 0.5, f"median latency {lat[len(lat) // 2]:.3f} s under slow clients"


def test_export_memory_is_bounded_by_one_batch(tmp_path: Path) -> None:
    """Streaming 20,000 users x 100 candidates (~40 MB of NDJSON) grows the server's RSS (its export
    process included) by far less than the export's size: rows are computed a batch at a time and dropped
    once sent."""
    bundles = tmp_path / "big"
    make_bundle(bundles, seed=3, bits=64, n_users=20_000, n_items=3000)
    env = {"HASHREC_EXPORT_BATCH": "256"}
    with ServerProcess(bundles, tmp_path / "server.log", env=env).start(timeout=120) as srv:
        # a small export first: the export process starts and loads the bundle (its fixed cost)
        users = [f"u{i}" for i in range(5)]
        r0 = httpx.post(f"{srv.url}/candidates/export", json={"users": users, "candidates": 100}, timeout=120)
        assert r0.status_code == 200 and r0.text.count("\n") == 6
        assert descendants(srv.pid), "the export ran in a child process of the server"
        rss0 = srv.rss()
        peak, size, rows = rss0, 0, 0
        with (
            httpx.Client(base_url=srv.url, timeout=120) as c,
            c.stream("POST", "/candidates/export", json={"users": None, "candidates": 100}) as r,
        ):
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                size += len(chunk)
                rows += chunk.count(b"\n")
                peak = max(peak, srv.rss())
    assert rows == 20_000 + 1  # and the end line
    assert size > 30 * 2**20
    assert peak - rss0 < size / 3, (peak - rss0, size)


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_export_process_ends_with_its_server(how: str, random_bundles: Path, tmp_path: Path) -> None:
    """The export process never outlives its worker: a clean stop or a SIGKILL of the server (whose one
    worker is the process itself) leaves no export child behind (it watches its parent)."""
    srv = ServerProcess(random_bundles, tmp_path / "server.log").start()
    try:
        users = [f"u{i}" for i in range(3)]
        r = httpx.post(f"{srv.url}/candidates/export", json={"users": users, "candidates": 10}, timeout=120)
        assert r.status_code == 200
        kids = descendants(srv.pid)
        assert kids, "the export ran in a child process of the server"
        if how == "sigkill":
            os.kill(srv.pid, signal.SIGKILL)
            assert srv.proc is not None
            srv.proc.wait(timeout=30)
    finally:
        srv.stop()
    deadline = time.monotonic() + 30  # the child polls its parent every 0.5 s; a loaded machine is slower
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [k for k in kids if _alive(k)], f"export processes left running after {how}"
