"""Security basics, in-process: the admin token is compared in constant time and enforced; bodies and
exports are bounded; no request reaches the file system outside the bundles directory; secrets never
appear in logs or answers. (The export's memory bound, a property of the server process, is checked in
tests/e2e/test_server_resources.py.)"""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import ADMIN_TOKEN, RedisProcess, app_client, make_bundle

from hashrec.service.json_logs import JsonFormatter

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
def test_admin_reload_refuses_every_wrong_token(client: TestClient, header: str | bytes | None) -> None:
    headers = {} if header is None else {"authorization": header}
    r = client.post("/admin/reload", json={}, headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["field"] == "header.authorization"


def test_admin_reload_accepts_the_token(client: TestClient) -> None:
    r = client.post("/admin/reload", json={}, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "version",
    ["..", "../x", "/etc", "a/b", "current/../..", ".hidden", "..%2f..", "x" * 129, "~root", "\\..\\.."],
)
def test_reload_versions_cannot_name_paths(client: TestClient, version: str) -> None:
    r = client.post(
        "/admin/reload", json={"version": version}, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert r.status_code in (404, 422), r.text
    assert r.json()["error"]["field"] == "body.version"


def test_a_symlink_in_the_bundles_directory_cannot_lead_outside_it(tmp_path: Path) -> None:
    """A version name that resolves (through a symlink) to a directory outside the bundles directory is
    refused: a request can only ever load what lies under HASHREC_BUNDLES."""
    inside, outside = tmp_path / "bundles", tmp_path / "elsewhere"
    make_bundle(inside, seed=1, n_users=300, n_items=200)
    other = make_bundle(outside, seed=2, n_users=300, n_items=200)
    os.symlink(other, inside / "evil")
    with app_client(inside, admin_token=ADMIN_TOKEN) as c:
        before = c.get("/healthz").json()["version"]
        r = c.post(
            "/admin/reload", json={"version": "evil"}, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert r.status_code in (404, 422), r.text
        assert c.get("/healthz").json()["version"] == before


def test_export_and_batch_sizes_are_bounded(bundles: Path) -> None:
    limits = {"max_export_users": 5, "max_batch_users": 5, "max_candidates": 50, "default_candidates": 50}
    with app_client(bundles, max_body_bytes=4096, **limits) as c:
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


class _Lines(logging.Handler):
    """Every record, formatted as the service writes it (JSON, extra fields and request id included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_secrets_never_appear_in_logs_or_answers(bundles: Path, tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis", ["--requirepass", "redis-pass-9f8e7d6c5b4a"]).start()
    handler, root = _Lines(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        wrong_pw = f"redis://:wrong-pass-1a2b3c4d5e6f@127.0.0.1:{redis.port}/0"
        with app_client(bundles, admin_token=ADMIN_TOKEN, redis_url=wrong_pw, log_level="DEBUG") as c:
            answers = [c.get(f"/recommend/u00{i}").text for i in range(5)]  # known users: cache look-ups
            answers += [c.get(path).text for path in ("/healthz", "/metrics", "/openapi.json")]
            for token in (ADMIN_TOKEN, ADMIN_TOKEN + "x", "not-the-token-at-all-000"):
                answers.append(
                    c.post("/admin/reload", json={}, headers={"authorization": f"Bearer {token}"}).text
                )
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        redis.stop()
    log = "\n".join(handler.lines)
    assert "cache breaker opened after Redis" in log, log[-3000:]  # the Redis failure itself is logged ...
    for secret in (ADMIN_TOKEN, "wrong-pass-1a2b3c4d5e6f", "not-the-token-at-all-000"):
        assert secret not in log, f"{secret!r} in the log"  # ... but never a secret
        for a in answers:
            assert secret not in a, f"{secret!r} in an answer"
