"""The HTTP API against a real server process: answers equal the Retriever's, cache, batch, probes, docs."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from harness import ServerProcess

from hashrec.index.bundle import load_bundle
from hashrec.index.retriever import Retriever
from hashrec.data import Dataset


@pytest.fixture(scope="module")
def retriever(bundles: Path) -> Retriever:
    """The reference: the Retriever over the same bundle the server serves."""
    return Retriever(load_bundle(bundles))


def assert_same(answer: dict, rec) -> None:  # type: ignore[no-untyped-def]
    assert [it["item"] for it in answer["items"]] == rec.items
    assert [it["hamming"] for it in answer["items"]] == rec.hamming
    np.testing.assert_array_equal([it["score"] for it in answer["items"]], rec.scores)


def test_recommendations_equal_the_retriever(
    client: httpx.Client, retriever: Retriever, synth_dataset: Dataset
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


def test_seen_items_are_excluded(client: httpx.Client, retriever: Retriever, synth_dataset: Dataset) -> None:
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


def test_second_call_is_a_cache_hit(client: httpx.Client, synth_dataset: Dataset) -> None:
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


def test_unknown_user_gets_marked_popularity(client: httpx.Client, retriever: Retriever) -> None:
    body = client.get("/recommend/nobody-like-this", params={"k": 5}).json()
    assert body["source"] == "popular" and body["reason"] == "unknown user"
    assert [it["item"] for it in body["items"]] == retriever.popular(5).items
    assert all(it["hamming"] is None for it in body["items"])


def test_batch_known_unknown_and_new_users(
    client: httpx.Client, retriever: Retriever, synth_dataset: Dataset
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
    # (folded in as the server does, both new users in one call: BLAS sums may differ with the batch shape)
    folded = retriever.fold_in_detailed([[*given, "no-such-item"], ["no-such-item"]])
    (ref_new,) = retriever.recommend_vectors(folded.z[:1], 8, 50, exclude=folded.items[:1])
    assert res[6]["source"] == "model" and res[6]["reason"] == "1 unknown item id(s) ignored"
    assert_same(res[6], ref_new)
    assert not set(given) & {it["item"] for it in res[6]["items"]}
    assert res[7]["source"] == "popular" and "none of the given items" in res[7]["reason"]


def test_batch_uses_the_cache_per_user(client: httpx.Client, synth_dataset: Dataset) -> None:
    users = [str(u) for u in synth_dataset.users.raw[200:204]]
    client.get(f"/recommend/{users[0]}", params={"k": 9})
    res = client.post("/recommend", json={"users": users, "k": 9}).json()["results"]
    assert [x["source"] for x in res] == ["cache", "model", "model", "model"]


def test_probes(client: httpx.Client, retriever: Retriever) -> None:
    assert client.get("/livez").json() == {"status": "ok", "version": None}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["version"] == retriever.version
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["version"] == retriever.version
    assert h["index_type"] == "flat" and h["items"] == 400 and h["users"] == 600 and h["bits"] == 32
    assert h["foldin"] is True and h["cache"]["backend"] == "memory"


def test_request_id_in_and_out(client: httpx.Client) -> None:
    r = client.get("/livez", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/livez", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and re.fullmatch(
        r"[0-9a-f]{16}-[0-9a-f]+", r.headers["x-request-id"]
    )


def test_metrics_have_routes_stages_cache_and_no_user_ids(
    client: httpx.Client, synth_dataset: Dataset
) -> None:
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


def test_openapi_documents_every_endpoint_with_examples(client: httpx.Client) -> None:
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


def test_unknown_user_404_mode(bundles: Path, tmp_path: Path) -> None:
    srv = ServerProcess(bundles, tmp_path / "log", HASHREC_UNKNOWN_USER="404").start()
    try:
        r = httpx.get(srv.url + "/recommend/ghost")
        assert r.status_code == 404
        assert r.json()["error"] == {
            "code": "unknown_user",
            "message": r.json()["error"]["message"],
            "field": "path.user_id",
        }
        r = httpx.post(srv.url + "/recommend", json={"users": ["u000", "ghost"]})
        assert r.status_code == 404 and r.json()["error"]["field"] == "body.users[1]"
    finally:
        srv.stop()


def test_json_access_log_carries_the_request_id(client: httpx.Client, server: ServerProcess) -> None:
    import json
    import time

    client.get("/recommend/u000", headers={"X-Request-ID": "log-check-42"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in server.log_tail(200_000).splitlines() if x.startswith("{")]
        hit = [x for x in lines if x.get("request_id") == "log-check-42"]
        if hit:
            break
        time.sleep(0.05)
    assert hit, "no log line with the request id"
    line = hit[-1]
    assert line["logger"] == "hashrec.access" and line["status"] == 200 and line["path"] == "/recommend/u000"
    assert {"ts", "level", "msg", "ms", "method"} <= set(line)
