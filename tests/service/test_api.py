"""The HTTP API in-process: answers equal the Retriever's, cache, batch, probes, docs, access log."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import app_client

from hashrec.data import Dataset
from hashrec.index.bundle import load_bundle
from hashrec.index.retriever import Retriever
from hashrec.service.json_logs import JsonFormatter


@pytest.fixture(scope="module")
def retriever(bundles: Path) -> Retriever:
    """The reference: the Retriever over the same bundle the server serves."""
    return Retriever(load_bundle(bundles))


def assert_same(answer: dict, rec) -> None:  # type: ignore[no-untyped-def]
    assert [it["item"] for it in answer["items"]] == rec.items
    assert [it["hamming"] for it in answer["items"]] == rec.hamming
    np.testing.assert_array_equal([it["score"] for it in answer["items"]], rec.scores)


def test_recommendations_equal_the_retriever(
    client: TestClient, retriever: Retriever, synth_dataset: Dataset
) -> None:
    users = [str(u) for u in synth_dataset.users.raw[:25]]
    for user in users:
        for k, c, excl in ((20, 500, True), (7, 30, False)):
            r = client.get(f"/recommend/{user}", params={"k": k, "candidates": c, "exclude_seen": excl})
            assert r.status_code == 200, r.text
            body = r.json()
            (ref,) = retriever.recommend([user], k, c, exclude_seen=excl)
            assert body["version"] == retriever.version
            assert body["user"] == user and body["k"] == k and body["candidates"] == c
            assert_same(body, ref)
            assert len(body["items"]) == k


def test_seen_items_are_excluded(client: TestClient, retriever: Retriever, synth_dataset: Dataset) -> None:
    user = str(synth_dataset.users.raw[3])
    uid = synth_dataset.users.get(user)
    seen = {str(synth_dataset.items.raw[i]) for i in retriever.seen_items(uid)}
    assert seen
    body = client.get(f"/recommend/{user}", params={"k": 100, "candidates": 400}).json()
    assert not seen & {it["item"] for it in body["items"]}
    body = client.get(
        f"/recommend/{user}", params={"k": 200, "candidates": 400, "exclude_seen": False}
    ).json()
    assert seen & {it["item"] for it in body["items"]}


def test_second_call_is_a_cache_hit(client: TestClient, synth_dataset: Dataset) -> None:
    user = str(synth_dataset.users.raw[42])
    first = client.get(f"/recommend/{user}", params={"k": 11}).json()
    second = client.get(f"/recommend/{user}", params={"k": 11}).json()
    assert first["source"] == "model"
    assert second["source"] == "cache"
    assert second["items"] == first["items"] and second["version"] == first["version"]
    # a different parameter is a different question: not served from the other's entry
    assert client.get(f"/recommend/{user}", params={"k": 12}).json()["source"] == "model"
    assert (
        client.get(f"/recommend/{user}", params={"k": 11, "exclude_seen": False}).json()["source"] == "model"
    )


def test_unknown_user_gets_marked_popularity(client: TestClient, retriever: Retriever) -> None:
    body = client.get("/recommend/nobody-like-this", params={"k": 5}).json()
    assert body["source"] == "popular" and body["reason"] == "unknown user"
    assert [it["item"] for it in body["items"]] == retriever.popular(5).items
    assert all(it["hamming"] is None for it in body["items"])


def test_batch_known_unknown_and_new_users(
    client: TestClient, retriever: Retriever, synth_dataset: Dataset
) -> None:
    users = [str(u) for u in synth_dataset.users.raw[100:105]]
    given = [str(i) for i in synth_dataset.items.raw[[3, 17, 60]]]
    r = client.post(
        "/recommend",
        json={
            "users": [*users, "ghost"],
            "new_users": [
                {"key": "guest-1", "items": [*given, "no-such-item"]},
                {"key": "guest-2", "items": ["no-such-item"]},
            ],
            "k": 8,
            "candidates": 50,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == retriever.version
    res = body["results"]
    assert [x["user"] for x in res] == [*users, "ghost", "guest-1", "guest-2"]
    refs = retriever.recommend(users, 8, 50)
    for answer, ref in zip(res[:5], refs, strict=True):
        assert_same(answer, ref)
    assert res[5]["source"] == "popular" and res[5]["reason"] == "unknown user"
    # new user: folded in from the known items, the given items never recommended back
    # (encoded as the server does, both new users in one call: BLAS sums may differ with the batch shape)
    folded = retriever.encode_new([[*given, "no-such-item"], ["no-such-item"]])
    (ref_new,) = retriever.recommend_new(folded.subset([0]), 8, 50)
    assert res[6]["source"] == "model" and res[6]["reason"] == "1 unknown item id(s) ignored"
    assert_same(res[6], ref_new)
    assert not set(given) & {it["item"] for it in res[6]["items"]}
    assert res[7]["source"] == "popular" and "none of the given items" in res[7]["reason"]


def test_batch_item_filters_and_their_cache_keys(
    client: TestClient, retriever: Retriever, synth_dataset: Dataset
) -> None:
    """``exclude_items`` / ``include_items`` apply to every user of the request; unknown ids are counted in
    ``reason``; the filters are part of the cache key (a filtered answer never serves an unfiltered
    question, nor the reverse)."""
    users = [str(u) for u in synth_dataset.users.raw[300:305]]
    exclude = ["i010", "i011", "ghost-item"]
    include = [f"i{j:03d}" for j in range(0, 400, 2)]
    body = {"users": users, "k": 8, "candidates": 50, "exclude_items": exclude, "include_items": include}
    res = client.post("/recommend", json=body).json()["results"]
    ex, _ = retriever.item_index(exclude)
    inc, _ = retriever.item_index(include)
    for answer, ref in zip(
        res, retriever.recommend(users, 8, 50, exclude_items=ex, include_items=inc), strict=True
    ):
        assert_same(answer, ref)
        assert (
            answer["source"] == "model" and answer["reason"] == "1 unknown item id(s) in the filters ignored"
        )
        assert {it["item"] for it in answer["items"]} <= set(include) - set(exclude)
    again = client.post("/recommend", json=body).json()["results"]
    assert [x["source"] for x in again] == ["cache"] * 5 and [x["items"] for x in again] == [
        x["items"] for x in res
    ]
    plain = client.post("/recommend", json={"users": users, "k": 8, "candidates": 50}).json()["results"]
    assert [x["source"] for x in plain] == ["model"] * 5


def test_batch_uses_the_cache_per_user(client: TestClient, synth_dataset: Dataset) -> None:
    users = [str(u) for u in synth_dataset.users.raw[200:204]]
    client.get(f"/recommend/{users[0]}", params={"k": 9})
    res = client.post("/recommend", json={"users": users, "k": 9}).json()["results"]
    assert [x["source"] for x in res] == ["cache", "model", "model", "model"]


def test_probes(client: TestClient, retriever: Retriever) -> None:
    assert client.get("/livez").json() == {"status": "ok", "version": None}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["version"] == retriever.version
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["version"] == retriever.version
    assert h["index_type"] == "flat" and h["items"] == 400 and h["users"] == 600 and h["bits"] == 32
    assert h["foldin"] is True and h["cache"]["backend"] == "memory"


def test_request_id_in_and_out(client: TestClient) -> None:
    r = client.get("/livez", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/livez", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and re.fullmatch(
        r"[0-9a-f]{16}-[0-9a-f]+", r.headers["x-request-id"]
    )


def test_metrics_have_routes_stages_cache_and_no_user_ids(client: TestClient, synth_dataset: Dataset) -> None:
    user = str(synth_dataset.users.raw[7])
    client.get(f"/recommend/{user}")
    client.get(f"/recommend/{user}")
    client.get("/recommend/unknown-user-xyz")
    text = client.get("/metrics").text
    assert 'hashrec_http_requests_total{method="GET",route="/recommend/{user_id}",status="200"}' in text
    assert (
        'hashrec_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/recommend/{user_id}"'
        in text
    )
    for stage in ("recall", "rerank", "model"):
        assert f'hashrec_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert 'hashrec_cache_requests_total{backend="memory",op="get",result="hit"}' in text
    assert 'hashrec_fallbacks_total{reason="unknown user"}' in text
    assert "hashrec_bundle_info{" in text
    assert user not in text and "unknown-user-xyz" not in text  # no per-user labels


def test_openapi_documents_every_endpoint_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/recommend/{user_id}", "get"),
        ("/recommend", "post"),
        ("/candidates/export", "post"),
        ("/livez", "get"),
        ("/readyz", "get"),
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/admin/reload", "post"),
    }
    for path, method in expected:
        assert method in paths[path], (path, method)
        op = paths[path][method]
        assert op.get("summary") and "200" in op["responses"]
    params = paths["/recommend/{user_id}"]["get"]["parameters"]
    assert [(x["name"], x["in"]) for x in params] == [
        ("user_id", "path"),
        ("k", "query"),
        ("candidates", "query"),
        ("exclude_seen", "query"),
    ]
    assert params[1]["schema"]["maximum"] == 200 and params[2]["schema"]["maximum"] == 5000
    schemas = spec["components"]["schemas"]
    assert "examples" in schemas["Recommendation"] and "examples" in schemas["BatchRequest"]
    assert "ErrorResponse" in schemas
    assert paths["/recommend/{user_id}"]["get"]["responses"]["422"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/ErrorResponse"}


def test_unknown_user_404_mode(bundles: Path) -> None:
    with app_client(bundles, unknown_user="404") as c:
        r = c.get("/recommend/ghost")
        assert r.status_code == 404
        assert r.json()["error"] == {
            "code": "unknown_user",
            "message": r.json()["error"]["message"],
            "field": "path.user_id",
        }
        r = c.post("/recommend", json={"users": ["u000", "ghost"]})
        assert r.status_code == 404 and r.json()["error"]["field"] == "body.users[1]"


class _JsonLines(logging.Handler):
    """Formats each record as it is emitted (the request id is a context variable of that moment)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []  # type: ignore[type-arg]

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_json_access_log_carries_the_request_id(bundles: Path) -> None:
    handler = _JsonLines()
    access = logging.getLogger("hashrec.access")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        with app_client(bundles, access_log=True) as c:
            c.get("/recommend/u000", headers={"X-Request-ID": "log-check-42"})
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    hit = [x for x in handler.lines if x.get("request_id") == "log-check-42"]
    assert len(hit) == 1, handler.lines
    line = hit[0]
    assert line["logger"] == "hashrec.access" and line["status"] == 200 and line["path"] == "/recommend/u000"
    assert {"ts", "level", "msg", "ms", "method"} <= set(line)
