"""Security basics (issue 6): the admin token is compared in constant time and enforced; bodies and exports
are bounded; no request reaches the file system outside the bundles directory; secrets never appear in
logs or answers."""

from __future__ import annotations

import ast
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from hashrec.bench.server_process import ADMIN_TOKEN, RedisProcess, ServerProcess, make_random_bundle
from hashrec.data import Dataset

REPO = Path(__file__).resolve().parents[2]


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def test_admin_token_is_compared_in_constant_time() -> None:
    """Static check of the only place the token is compared: hmac.compare_digest, never == / !=."""
    for path in (REPO / "service").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            # == / != / in on the secret's value would leak, through timing, how much of a guess was right
            if isinstance(node, ast.Compare) and any(
                isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops
            ):
                sides = [node.left, *node.comparators]
                if any(isinstance(side, ast.Constant) for side in sides):
                    continue  # against a literal ("" or None): not a guess being checked
                src = ast.unparse(node)
                assert "get_secret_value" not in src and "admin_token" not in src, f"{path}: {src}"
    admin = ast.parse((REPO / "service" / "routes" / "admin.py").read_text())
    digests = [c for c in _calls(admin) if ast.unparse(c.func) in ("hmac.compare_digest", "compare_digest")]
    assert digests and any("get_secret_value" in ast.unparse(c) for c in digests)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        f"Basic {ADMIN_TOKEN}",
        f"Bearer {ADMIN_TOKEN[:-1]}",  # a prefix
        f"Bearer {ADMIN_TOKEN}x",  # an extension
        f"Bearer {ADMIN_TOKEN[:-1]}X",  # same length, last character wrong
        f"Bearer {ADMIN_TOKEN.upper()}",
        ("Bearer " + "\u00e9" * len(ADMIN_TOKEN)).encode(),  # non-ASCII must not crash the comparison
    ],
)
def test_admin_reload_refuses_every_wrong_token(server: ServerProcess, header: str | bytes | None) -> None:
    headers = {} if header is None else {"authorization": header}
    r = httpx.post(server.url + "/admin/reload", json={}, headers=headers, timeout=30)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["field"] == "header.authorization"


def test_admin_reload_accepts_the_token(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/admin/reload", json={}, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "version",
    ["..", "../x", "/etc", "a/b", "current/../..", ".hidden", "..%2f..", "x" * 129, "~root", "\\..\\.."],
)
def test_reload_versions_cannot_name_paths(server: ServerProcess, version: str) -> None:
    r = httpx.post(
        server.url + "/admin/reload",
        json={"version": version},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    assert r.status_code in (404, 422), r.text
    assert r.json()["error"]["field"] == "body.version"


def test_a_symlink_in_the_bundles_directory_cannot_lead_outside_it(
    tmp_path: Path, synth_dataset: Dataset, start_server: Callable[..., ServerProcess]
) -> None:
    """A version name that resolves (through a symlink) to a directory outside the bundles directory is
    refused: a request can only ever load what lies under HASHREC_BUNDLES."""
    inside, outside = tmp_path / "bundles", tmp_path / "elsewhere"
    make_random_bundle(inside, 300, 200, 32, seed=1)
    other = make_random_bundle(outside, 300, 200, 32, seed=2)
    os.symlink(other, inside / "evil")
    srv = start_server(inside, env={"HASHREC_ADMIN_TOKEN": ADMIN_TOKEN})
    before = httpx.get(srv.url + "/healthz").json()["version"]
    r = httpx.post(
        srv.url + "/admin/reload",
        json={"version": "evil"},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    assert r.status_code in (404, 422), r.text
    assert httpx.get(srv.url + "/healthz").json()["version"] == before


def test_export_and_batch_sizes_are_bounded(
    bundles: Path, start_server: Callable[..., ServerProcess]
) -> None:
    srv = start_server(
        bundles,
        env={
            "HASHREC_MAX_EXPORT_USERS": "5",
            "HASHREC_MAX_BATCH_USERS": "5",
            "HASHREC_MAX_CANDIDATES": "50",
            "HASHREC_DEFAULT_CANDIDATES": "50",
            "HASHREC_MAX_BODY_BYTES": "4096",
        },
    )
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/candidates/export", json={"users": ["0"] * 6})
        assert r.status_code == 422 and r.json()["error"]["field"] == "body.users"
        r = c.post("/candidates/export", json={"users": ["0"], "candidates": 51})
        assert r.status_code == 422 and r.json()["error"]["field"] == "body.candidates"
        r = c.post("/recommend", json={"users": ["0"] * 6})
        assert r.status_code == 422 and r.json()["error"]["field"] == "body.users"
        r = c.post("/recommend", json={"users": ["0"] * 2000})  # > 4096 bytes
        assert r.status_code == 413
        r = c.get("/recommend/0", params={"candidates": 51})
        assert r.status_code == 422


def test_export_memory_is_bounded_by_one_batch(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    """Streaming 20,000 users x 100 candidates (~40 MB of NDJSON) grows the server's RSS by far less than
    the export's size: rows are computed a batch at a time and dropped once sent."""
    bundles = tmp_path / "big"
    make_random_bundle(bundles, 20_000, 3000, 64, seed=3)
    srv = start_server(bundles, env={"HASHREC_EXPORT_BATCH": "256"})
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
    assert rows == 20_000
    assert size > 30 * 2**20
    assert peak - rss0 < size / 3, (peak - rss0, size)


def test_secrets_never_appear_in_logs_or_answers(
    bundles: Path, tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    redis = RedisProcess(tmp_path / "redis", ["--requirepass", "redis-pass-9f8e7d6c5b4a"]).start()
    try:
        wrong_pw = f"redis://:wrong-pass-1a2b3c4d5e6f@127.0.0.1:{redis.port}/0"
        srv = start_server(
            bundles,
            env={
                "HASHREC_ADMIN_TOKEN": ADMIN_TOKEN,
                "HASHREC_REDIS_URL": wrong_pw,
                "HASHREC_LOG_LEVEL": "DEBUG",
            },
            access_log=True,
        )
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            answers = [c.get("/recommend/0").text for _ in range(5)]
            answers.append(c.get("/healthz").text)
            answers.append(c.get("/metrics").text)
            answers.append(c.get("/openapi.json").text)
            for token in (ADMIN_TOKEN, ADMIN_TOKEN + "x", "not-the-token-at-all-000"):
                answers.append(
                    c.post("/admin/reload", json={}, headers={"authorization": f"Bearer {token}"}).text
                )
        srv.stop()
        log = srv.log_text()
        assert "cache" in log.lower()  # the Redis failure itself is logged ...
        for secret in (ADMIN_TOKEN, "wrong-pass-1a2b3c4d5e6f", "not-the-token-at-all-000"):
            assert secret not in log, f"{secret!r} in the server log"  # ... but never a secret
            for a in answers:
                assert secret not in a, f"{secret!r} in an answer"
    finally:
        redis.stop()
