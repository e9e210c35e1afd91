"""docker/haproxy.cfg, run for real (Debian's haproxy, ``make services``) with only its addresses
rewritten (``support.local_haproxy_conf``): it proxies to a real ``hashrec serve``; its admission in front
of the replicas queues recommendations past a replica's ``maxconn`` and refuses past the bounded queue in
the service's error shape, at once, without touching the probes or a replica's own 503s; its own errors
use the same shape.

The admission test puts HAProxy in front of a stand-in replica that holds ``/recommend/hold`` until told:
the only way to keep a request in progress for as long as the test needs.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from support import HAProxyProcess, ServerProcess, free_port, make_bundle

HELD_BODY = b'{"held": true}'
SHED_BODY = b'{"error": {"code": "overloaded", "message": "from the replica", "field": null}}'


class _Replica(BaseHTTPRequestHandler):
    """``/recommend/hold`` waits for ``release``; ``/recommend/shed`` is a replica's own 503; else 200
    (``/readyz`` included: the health check passes). ``paths`` records the recommendation paths that
    arrived, in order."""

    protocol_version = "HTTP/1.1"  # keep-alive, as HAProxy reuses connections to a replica
    release = threading.Event()
    arrived = threading.Event()
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        status, body = 200, b'{"ok": true}'
        if self.path.startswith("/recommend"):
            self.paths.append(self.path)
        if self.path.startswith("/recommend/hold"):
            self.arrived.set()
            self.release.wait(30)
            body = HELD_BODY
        elif self.path.startswith("/recommend/shed"):
            status, body = 503, SHED_BODY
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def replica() -> Iterator[ThreadingHTTPServer]:
    _Replica.release.clear()
    _Replica.arrived.clear()
    _Replica.paths.clear()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Replica)
    srv.daemon_threads = True
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv
    _Replica.release.set()
    srv.shutdown()
    srv.server_close()


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_past_a_replicas_maxconn_requests_queue_and_past_the_queue_haproxy_refuses(
    replica: ThreadingHTTPServer, tmp_path: Path
) -> None:
    port = replica.server_address[1]
    with HAProxyProcess(port, tmp_path / "lb", recommend_maxconn=1, recommend_queue=1).start() as lb:
        results: dict[str, tuple[int, dict[str, str], bytes]] = {}
        held = threading.Thread(target=lambda: results.update(held=get(lb.port, "/recommend/hold")))
        held.start()
        assert _Replica.arrived.wait(30), "the held request never reached the replica"

        # the replica's one slot is taken: the next recommendation waits in HAProxy's queue
        queued = threading.Thread(target=lambda: results.update(queued=get(lb.port, "/recommend/u1?k=5")))
        queued.start()
        deadline = time.monotonic() + 30
        while _queued(lb) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _queued(lb) == 1, "the second recommendation was not queued"
        assert _Replica.paths == ["/recommend/hold"]  # it has not reached the replica

        # the queue is full: refused at once, in the error shape, with Retry-After
        t0 = time.monotonic()
        status, headers, body = get(lb.port, "/recommend/u2?k=5")
        refused_s = time.monotonic() - t0
        assert status == 503
        assert headers["content-type"] == "application/json" and headers["retry-after"] == "1"
        err = json.loads(body)["error"]
        assert err["code"] == "overloaded" and err["field"] is None and "limit" in err["message"]
        assert refused_s < 5  # refused, not queued behind the held request (generous: a busy machine)

        # the limit covers recommendations only: probes and other endpoints still reach the replica
        assert get(lb.port, "/livez")[0] == 200

        _Replica.release.set()
        held.join(30)
        queued.join(30)
        assert results["held"][0] == 200 and results["held"][2] == HELD_BODY
        assert results["queued"][0] == 200  # served once the slot was free, not refused
        assert _Replica.paths == ["/recommend/hold", "/recommend/u1?k=5"]
        assert get(lb.port, "/recommend/u3?k=5")[0] == 200  # nothing in progress: passes again


def _queued(lb: HAProxyProcess) -> int:
    """Requests waiting in HAProxy's queue of the recommendation backend, from its stats page."""
    return lb.stat("recommend", "BACKEND", "qcur")


def test_a_replicas_own_503_passes_through_unchanged(replica: ThreadingHTTPServer, tmp_path: Path) -> None:
    with HAProxyProcess(replica.server_address[1], tmp_path / "lb").start() as lb:
        status, _, body = get(lb.port, "/recommend/shed")
    assert status == 503 and body == SHED_BODY


def test_haproxys_own_errors_use_the_error_shape(tmp_path: Path) -> None:
    # no replica listens: the connection fails, the retry too, and HAProxy answers 503 itself
    with HAProxyProcess(free_port(), tmp_path / "lb").start() as lb:
        status, headers, body = get(lb.port, "/recommend/u1?k=5")
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["error"]["code"] == "unavailable"


def test_haproxy_proxies_the_real_service(tmp_path: Path) -> None:
    bundles = make_bundle(tmp_path / "bundles", n_users=50, n_items=80, seen_per_user=5)
    with (
        ServerProcess(bundles, tmp_path / "server.log").start(timeout=120) as srv,
        HAProxyProcess(srv.port, tmp_path / "lb").start() as lb,
    ):
        user = "u0"
        direct = get(srv.port, f"/recommend/{user}?k=5")
        proxied = get(lb.port, f"/recommend/{user}?k=5")
        assert direct[0] == proxied[0] == 200
        assert json.loads(proxied[2])["items"] == json.loads(direct[2])["items"]
        assert proxied[1]["x-request-id"]  # HAProxy gave the request an id, the service echoed it
        status, _, body = get(lb.port, f"/recommend/{user}?k=0")  # a client error, in the error shape
        assert status == 422 and json.loads(body)["error"]["field"] == "query.k"


def test_the_shipped_config_is_valid() -> None:
    # as shipped (Docker's DNS names and all): HAProxy's own check of the file compose mounts
    from support.processes import HAPROXY_CFG

    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    out = subprocess.run([exe, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
