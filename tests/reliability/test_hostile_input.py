"""Hand-written hostile requests against the real server: every answer is a JSON error naming the problem
(or a normal answer), never a 5xx, and the server keeps serving afterwards."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import socket
import time

import httpx
import pytest

from hashrec.bench.server_process import ServerProcess
from hashrec.data import Dataset


def assert_json_error(r: httpx.Response, status: int, field: str | None = "any") -> dict:
    """``r`` is the documented error shape with ``status``; ``field`` (when given) is named."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert err["code"] and err["message"], err
    if field is None:
        return err
    if field == "any":
        assert err["field"], err
    else:
        assert err["field"] == field, err
    return err


@pytest.fixture()
def client(server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"k": 10**30}, "query.k"),
        ({"k": -1}, "query.k"),
        ({"k": 0}, "query.k"),
        ({"k": "1e3"}, "query.k"),
        ({"k": "NaN"}, "query.k"),
        ({"candidates": 10**30}, "query.candidates"),
        ({"candidates": -(10**30)}, "query.candidates"),
        ({"exclude_seen": "maybe"}, "query.exclude_seen"),
    ],
)
def test_out_of_range_query_parameters(client: httpx.Client, params: dict, field: str) -> None:
    first_user = "0"
    assert_json_error(client.get(f"/recommend/{first_user}", params=params), 422, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"users": ["0"], "k": 10**30}, "body.k"),
        ({"users": ["0"], "k": -7}, "body.k"),
        ({"users": ["0"], "candidates": 10**400}, "body.candidates"),
        ({"users": ["0"], "candidates": -1}, "body.candidates"),
        ({"users": ["a\x00b"]}, "body.users[0]"),
        ({"users": ["ok", "\x1b[31mred"]}, "body.users[1]"),
        ({"users": [""]}, "body.users[0]"),
        ({"users": [17]}, "body.users[0]"),
        ({"users": "0"}, "body.users"),
        ({"users": ["0"], "surprise": 1}, "body.surprise"),
        ({"new_users": [{"key": "g", "items": []}]}, "body.new_users[0].items"),
        ({}, "body.users"),
    ],
)
def test_bad_batch_bodies(client: httpx.Client, body: dict, field: str) -> None:
    assert_json_error(client.post("/recommend", json=body), 422, field)


def test_export_limits(client: httpx.Client) -> None:
    assert_json_error(
        client.post("/candidates/export", json={"users": ["0"], "candidates": 10**9}), 422, "body.candidates"
    )
    assert_json_error(
        client.post("/candidates/export", json={"users": ["0"], "candidates": -3}), 422, "body.candidates"
    )
    assert_json_error(
        client.post("/candidates/export", json={"users": ["no-such-user"]}), 422, "body.users[0]"
    )


@pytest.mark.parametrize(
    "raw_id",
    ["é", "用户", "🙂", "\u202eevil", "a b", "'; DROP TABLE users; --", "%", "<script>", "\ufeff", "x" * 256],
)
def test_unicode_and_odd_ids_are_unknown_users_not_errors(client: httpx.Client, raw_id: str) -> None:
    r = client.get("/recommend/" + httpx.URL(path=raw_id).raw_path.decode())  # percent-encoded
    assert r.status_code == 200, r.text[:300]
    doc = r.json()
    assert doc["user"] == raw_id and doc["source"] == "popular" and doc["reason"] == "unknown user"
    r = client.post("/recommend", json={"users": [raw_id]})
    assert r.status_code == 200 and r.json()["results"][0]["user"] == raw_id


@pytest.mark.parametrize("encoded", ["a%00b", "a%0Ab", "%7F", "a%1Fb", "x" * 257])
def test_control_characters_and_long_ids_in_the_path(client: httpx.Client, encoded: str) -> None:
    assert_json_error(client.get(f"/recommend/{encoded}"), 422, "path.user_id")


def test_ten_megabyte_ids_in_bodies_are_refused_with_413(client: httpx.Client) -> None:
    huge = "u" * 10_000_000
    for path, body in (
        ("/recommend", {"users": [huge]}),
        ("/recommend", {"new_users": [{"key": huge, "items": ["1"]}]}),
        ("/candidates/export", {"users": [huge]}),
        ("/admin/reload", {"version": huge}),
    ):
        assert_json_error(client.post(path, json=body), 413, "body")


def test_chunked_body_without_length_is_bounded(client: httpx.Client) -> None:
    def chunks():  # never announces its size: the server must count while reading
        for _ in range(40):
            yield b"[" * 50_000

    assert_json_error(
        client.post("/recommend", content=chunks(), headers={"content-type": "application/json"}), 413, "body"
    )


@pytest.mark.parametrize("depth", [50, 1000, 200_000])
def test_deeply_nested_json(client: httpx.Client, depth: int) -> None:
    for body in (b"[" * depth + b"]" * depth, b'{"users":' + b"[" * depth + b"]" * depth + b"}"):
        r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
        assert r.status_code in (400, 413, 422), (r.status_code, r.text[:200])
        assert_json_error(r, r.status_code, None)


@pytest.mark.parametrize(
    "body",
    [b'{"users": ["0"', b'{"users": ["0"]', b"{", b'{"users": [', b"\xff\xfe\x00", b'{"users": ["\xff"]}'],
)
def test_truncated_or_undecodable_json(client: httpx.Client, body: bytes) -> None:
    r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert_json_error(r, 400, None)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data", ""],
)
def test_wrong_content_types(client: httpx.Client, content_type: str) -> None:
    r = client.post("/recommend", content=b"users=0", headers={"content-type": content_type})
    assert r.status_code in (400, 415, 422), r.text
    assert_json_error(r, r.status_code, None)


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    assert_json_error(client.get("/recommend/..%2F..%2Fetc%2Fpasswd/x"), 404, None)
    assert_json_error(client.delete("/recommend/0"), 405, None)
    assert_json_error(client.get("/admin/reload"), 405, None)
    assert_json_error(client.put("/candidates/export", json={}), 405, None)


def test_slow_clients_do_not_starve_others(server: ServerProcess, synth_dataset: Dataset) -> None:
    """Slowloris-style, bounded: 40 connections dribble a request one byte at a time for 3 s while a
    normal client keeps getting answers quickly."""
    socks = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET /recommend/0 HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    user = str(synth_dataset.users.raw[3])
    lat = []
    try:
        with httpx.Client(base_url=server.url, timeout=5.0) as c:
            end = time.monotonic() + 3.0
            i = 0
            while time.monotonic() < end:
                for s in socks:
                    # one byte of a header name per round: never completes (the server may close the
                    # connection, which is fine)
                    with contextlib.suppress(OSError):
                        s.sendall(b"X")
                t0 = time.perf_counter()
                r = c.get(f"/recommend/{user}", params={"k": 5 + i % 5})
                lat.append(time.perf_counter() - t0)
                assert r.status_code == 200
                i += 1
                time.sleep(0.05)
    finally:
        for s in socks:
            s.close()
    lat.sort()
    assert len(lat) >= 20
    assert lat[len(lat) // 2] < 0.25, f"median latency {lat[len(lat) // 2]:.3f} s under slow clients"


def test_many_concurrent_export_streams_are_complete(server: ServerProcess, synth_dataset: Dataset) -> None:
    n_users = synth_dataset.n_users

    def export(i: int) -> tuple[int, int, set[str]]:
        with (
            httpx.Client(base_url=server.url, timeout=60.0) as c,
            c.stream("POST", "/candidates/export", json={"users": None, "candidates": 50 + i}) as r,
        ):
            assert r.status_code == 200
            rows, versions = 0, set()
            for line in r.iter_lines():
                row = json.loads(line)
                assert len(row["items"]) == len(row["scores"]) == len(row["hamming"]) == 50 + i
                versions.add(row["version"])
                rows += 1
            return rows, int(r.headers["x-total-users"]), versions

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(export, range(16)))
    for rows, total, versions in results:
        assert rows == total == n_users and len(versions) == 1
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/readyz").status_code == 200


def test_server_survives_everything_above(client: httpx.Client) -> None:
    """After the cases above: the process still answers, and no request ended in a 5xx."""
    assert client.get("/livez").status_code == 200
    metrics = client.get("/metrics").text
    bad = [
        line
        for line in metrics.splitlines()
        if line.startswith("hashrec_http_requests_total") and 'status="5' in line
    ]
    assert not bad, bad


def _raw_exchange(port: int, payload: bytes) -> bytes:
    """Send raw bytes, return everything the server answers before closing (bounded wait)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        with contextlib.suppress(OSError):  # the server may close while we are still sending
            s.sendall(payload)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                out += chunk
        return out


def _json_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)["error"]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"GET /recommend/" + b"u" * 10_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000_000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (b"GET /livez HTTP/1.1\r\n" + b"X-A: b\r\n" * 300_000 + b"\r\n", 431, "headers_too_large"),
        (b"THIS IS NOT HTTP\r\n\r\n", 400, "malformed_http"),
        (b"GET /livez HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400, "malformed_http"),
        (b"GET /livez HTTP/9.9\x00\r\n\r\n", 400, "malformed_http"),
    ],
)
def test_requests_that_are_not_valid_http_get_json_errors(
    server: ServerProcess, payload: bytes, status: int, code: str
) -> None:
    """Below the app: oversized request heads are refused early (bounded memory per connection) and even
    garbage gets the one JSON error shape (service/http_protocol.py)."""
    got_status, err = _json_error(_raw_exchange(server.port, payload))
    assert (got_status, err["code"]) == (status, code), err
    assert err["message"]
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/livez").status_code == 200
