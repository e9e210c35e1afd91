"""Hand-written hostile requests, in-process: every answer is a JSON error naming the problem (or a normal
answer), never a 5xx, and the app keeps serving afterwards. (Slow clients, which need real sockets, are in
tests/e2e/test_server_resources.py; generated requests in tests/e2e/test_fuzz.py.)"""

from __future__ import annotations

import concurrent.futures as cf
import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from support import app_client

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
def test_out_of_range_query_parameters(client: TestClient, params: dict, field: str) -> None:
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
def test_bad_batch_bodies(client: TestClient, body: dict, field: str) -> None:
    assert_json_error(client.post("/recommend", json=body), 422, field)


def test_export_limits(client: TestClient) -> None:
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
def test_unicode_and_odd_ids_are_unknown_users_not_errors(client: TestClient, raw_id: str) -> None:
    r = client.get("/recommend/" + httpx.URL(path=raw_id).raw_path.decode())  # percent-encoded
    assert r.status_code == 200, r.text[:300]
    doc = r.json()
    assert doc["user"] == raw_id and doc["source"] == "popular" and doc["reason"] == "unknown user"
    r = client.post("/recommend", json={"users": [raw_id]})
    assert r.status_code == 200 and r.json()["results"][0]["user"] == raw_id


@pytest.mark.parametrize("encoded", ["a%00b", "a%0Ab", "%7F", "a%1Fb", "x" * 257])
def test_control_characters_and_long_ids_in_the_path(client: TestClient, encoded: str) -> None:
    assert_json_error(client.get(f"/recommend/{encoded}"), 422, "path.user_id")


def test_ten_megabyte_ids_in_bodies_are_refused_with_413(client: TestClient) -> None:
    huge = "u" * 10_000_000
    for path, body in (
        ("/recommend", {"users": [huge]}),
        ("/recommend", {"new_users": [{"key": huge, "items": ["1"]}]}),
        ("/candidates/export", {"users": [huge]}),
        ("/admin/reload", {"version": huge}),
    ):
        assert_json_error(client.post(path, json=body), 413, "body")


def test_chunked_body_without_length_is_bounded(client: TestClient) -> None:
    def chunks():  # never announces its size: the server must count while reading
        for _ in range(40):
            yield b"[" * 50_000

    assert_json_error(
        client.post("/recommend", content=chunks(), headers={"content-type": "application/json"}), 413, "body"
    )


@pytest.mark.parametrize("depth", [50, 1000, 200_000])
def test_deeply_nested_json(client: TestClient, depth: int) -> None:
    for body in (b"[" * depth + b"]" * depth, b'{"users":' + b"[" * depth + b"]" * depth + b"}"):
        r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
        assert r.status_code in (400, 413, 422), (r.status_code, r.text[:200])
        assert_json_error(r, r.status_code, None)


@pytest.mark.parametrize(
    "body",
    [b'{"users": ["0"', b'{"users": ["0"]', b"{", b'{"users": [', b"\xff\xfe\x00", b'{"users": ["\xff"]}'],
)
def test_truncated_or_undecodable_json(client: TestClient, body: bytes) -> None:
    r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert_json_error(r, 400, None)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data", ""],
)
def test_wrong_content_types(client: TestClient, content_type: str) -> None:
    r = client.post("/recommend", content=b"users=0", headers={"content-type": content_type})
    assert r.status_code in (400, 415, 422), r.text
    assert_json_error(r, r.status_code, None)


def test_unknown_routes_and_methods(client: TestClient) -> None:
    assert_json_error(client.get("/recommend/..%2F..%2Fetc%2Fpasswd/x"), 404, None)
    assert_json_error(client.delete("/recommend/0"), 405, None)
    assert_json_error(client.get("/admin/reload"), 405, None)
    assert_json_error(client.put("/candidates/export", json={}), 405, None)


def test_many_concurrent_export_streams_are_complete_or_refused(
    bundles: Path, synth_dataset: Dataset
) -> None:
    """16 exports at once against a cap of 4 streams: each is either complete (every row, one version, the
    end line) or refused at once with 503 ``too_many_exports`` and Retry-After; at least the first 4 run."""
    n_users = synth_dataset.n_users

    def export(c: TestClient, i: int) -> tuple[int, str]:
        with c.stream("POST", "/candidates/export", json={"users": None, "candidates": 50 + i}) as r:
            if r.status_code != 200:
                r.read()
                assert r.status_code == 503 and r.headers["retry-after"], r.text
                assert r.json()["error"]["code"] == "too_many_exports"
                return 503, ""
            *rows, end = [json.loads(line) for line in r.iter_lines() if line]
            assert all(
                len(row["items"]) == len(row["scores"]) == len(row["hamming"]) == 50 + i for row in rows
            )
            assert len(rows) == end["rows"] == int(r.headers["x-total-users"]) == n_users
            assert {row["version"] for row in rows} == {end["version"]}
            return 200, end["version"]

    with app_client(bundles, max_exports=4) as c, cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: export(c, i), range(16)))
        assert c.get("/readyz").status_code == 200
    assert sum(status == 200 for status, _v in results) >= 4
    assert len({v for status, v in results if status == 200}) == 1


def test_server_survives_everything_above(client: TestClient) -> None:
    """After the cases above: the process still answers, and no request ended in a 5xx."""
    assert client.get("/livez").status_code == 200
    metrics = client.get("/metrics").text
    bad = [
        line
        for line in metrics.splitlines()
        if line.startswith("hashrec_http_requests_total") and 'status="5' in line
    ]
    assert not bad, bad
