"""docker/nginx.conf, run for real (Debian's nginx, ``make services``) with only its addresses rewritten
(``support.local_nginx_conf``): it proxies to a real ``hashrec serve``, and its admission in front of the
replicas refuses past its in-flight limit in the service's error shape, at once, without touching the
probes or a replica's own 503s.

The admission test puts nginx in front of a stand-in replica that holds ``/recommend/hold`` until told:
the only way to keep a request in progress for as long as the test needs.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import NginxProcess, ServerProcess, make_bundle

HELD_BODY = b'{"held": true}'
SHED_BODY = b'{"error": {"code": "overloaded", "message": "from the replica", "field": null}}'


class _Replica(BaseHTTPRequestHandler):
    """``/recommend/hold`` waits for ``release``; ``/recommend/shed`` is a replica's own 503; else 200."""

    protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream keepalive expects
    release = threading.Event()
    arrived = threading.Event()

    def do_GET(self) -> None:
        status, body = 200, b'{"ok": true}'
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


def test_past_its_limit_nginx_refuses_recommendations_in_the_error_shape(
    replica: ThreadingHTTPServer, tmp_path: Path
) -> None:
    with NginxProcess(replica.server_address[1], tmp_path / "nginx", recommend_inflight=1).start() as ngx:
        held: dict[str, object] = {}
        th = threading.Thread(target=lambda: held.update(r=get(ngx.port, "/recommend/hold")))
        th.start()
        assert _Replica.arrived.wait(30), "the held request never reached the replica"

        t0 = time.monotonic()
        status, headers, body = get(ngx.port, "/recommend/u1?k=5")
        refused_s = time.monotonic() - t0
        assert status == 503
        assert headers["content-type"] == "application/json" and headers["retry-after"] == "1"
        err = json.loads(body)["error"]
        assert err["code"] == "overloaded" and err["field"] is None and "limit" in err["message"]
        assert refused_s < 5  # refused, not queued behind the held request (generous: a busy machine)

        # the limit covers recommendations only: probes and other endpoints still reach the replica
        assert get(ngx.port, "/livez")[0] == 200

        _Replica.release.set()
        th.join(30)
        assert held["r"][0] == 200 and held["r"][2] == HELD_BODY  # type: ignore[index]
        # with nothing in progress, a recommendation passes again
        assert get(ngx.port, "/recommend/u1?k=5")[0] == 200


def test_a_replicas_own_503_passes_through_unchanged(replica: ThreadingHTTPServer, tmp_path: Path) -> None:
    with NginxProcess(replica.server_address[1], tmp_path / "nginx").start() as ngx:
        status, _, body = get(ngx.port, "/recommend/shed")
    assert status == 503 and body == SHED_BODY


def test_nginx_proxies_the_real_service(tmp_path: Path) -> None:
    bundles = make_bundle(tmp_path / "bundles", n_users=50, n_items=80, seen_per_user=5)
    with (
        ServerProcess(bundles, tmp_path / "server.log").start(timeout=120) as srv,
        NginxProcess(srv.port, tmp_path / "nginx").start() as ngx,
    ):
        user = "u0"
        direct = get(srv.port, f"/recommend/{user}?k=5")
        proxied = get(ngx.port, f"/recommend/{user}?k=5")
        assert direct[0] == proxied[0] == 200
        assert json.loads(proxied[2])["items"] == json.loads(direct[2])["items"]
        status, _, body = get(ngx.port, f"/recommend/{user}?k=0")  # a client error, in the error shape
        assert status == 422 and json.loads(body)["error"]["field"] == "query.k"
