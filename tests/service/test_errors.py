"""Every endpoint's bad-input cases, in-process: the documented 4xx, always ``{"error": {code, message,
field}}``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import ADMIN_TOKEN, app_client

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# (method, path, kwargs for httpx, status, code, field)
CASES: list[tuple[str, str, dict[str, Any], int, str, str | None]] = [
    ("GET", "/recommend/u000", {"params": {"k": 0}}, 422, "invalid_parameter", "query.k"),
    ("GET", "/recommend/u000", {"params": {"k": 201}}, 422, "invalid_parameter", "query.k"),
    ("GET", "/recommend/u000", {"params": {"k": "ten"}}, 422, "invalid_parameter", "query.k"),
    ("GET", "/recommend/u000", {"params": {"k": "1_0"}}, 422, "invalid_parameter", "query.k"),
    (
        "GET",
        "/recommend/u000",
        {"params": {"k": "99999999999999999999"}},
        422,
        "invalid_parameter",
        "query.k",
    ),
    ("GET", "/recommend/u000", {"params": {"k": ""}}, 422, "invalid_parameter", "query.k"),
    ("GET", "/recommend/u000", {"params": {"candidates": 0}}, 422, "invalid_parameter", "query.candidates"),
    (
        "GET",
        "/recommend/u000",
        {"params": {"candidates": 5001}},
        422,
        "invalid_parameter",
        "query.candidates",
    ),
    (
        "GET",
        "/recommend/u000",
        {"params": {"exclude_seen": "maybe"}},
        422,
        "invalid_parameter",
        "query.exclude_seen",
    ),
    ("GET", "/recommend/" + "x" * 300, {}, 422, "invalid_parameter", "path.user_id"),
    ("GET", "/recommend/bad%01id", {}, 422, "invalid_parameter", "path.user_id"),
    ("PUT", "/recommend/u000", {}, 405, "method_not_allowed", None),
    ("GET", "/no/such/route", {}, 404, "not_found", None),
    ("POST", "/livez", {}, 405, "method_not_allowed", None),
    (
        "POST",
        "/recommend",
        {"content": b'{"users": [', "headers": {"content-type": "application/json"}},
        400,
        "malformed_json",
        "body",
    ),
    ("POST", "/recommend", {"json": {}}, 422, "invalid_parameter", "body.users"),
    ("POST", "/recommend", {"json": {"users": "u000"}}, 422, "invalid_parameter", "body.users"),
    ("POST", "/recommend", {"json": {"users": [1]}}, 422, "invalid_parameter", "body.users[0]"),
    ("POST", "/recommend", {"json": {"users": [""]}}, 422, "invalid_parameter", "body.users[0]"),
    ("POST", "/recommend", {"json": {"users": ["u000"], "k": 0}}, 422, "invalid_parameter", "body.k"),
    # strict bodies: a boolean or a string is not a number, a string is not a flag
    ("POST", "/recommend", {"json": {"users": ["u000"], "k": True}}, 422, "invalid_parameter", "body.k"),
    ("POST", "/recommend", {"json": {"users": ["u000"], "k": "5"}}, 422, "invalid_parameter", "body.k"),
    (
        "POST",
        "/recommend",
        {"json": {"users": ["u000"], "exclude_seen": "no"}},
        422,
        "invalid_parameter",
        "body.exclude_seen",
    ),
    (
        "POST",
        "/candidates/export",
        {"json": {"candidates": 1.5}},
        422,
        "invalid_parameter",
        "body.candidates",
    ),
    ("POST", "/recommend", {"json": {"users": ["u000"], "k": 999}}, 422, "invalid_parameter", "body.k"),
    (
        "POST",
        "/recommend",
        {"json": {"users": ["u000"], "candidates": 10**6}},
        422,
        "invalid_parameter",
        "body.candidates",
    ),
    ("POST", "/recommend", {"json": {"userz": ["u000"]}}, 422, "invalid_parameter", "body.userz"),
    (
        "POST",
        "/recommend",
        {"json": {"users": [f"u{i}" for i in range(1001)]}},
        422,
        "invalid_parameter",
        "body.users",
    ),
    (
        "POST",
        "/recommend",
        {"json": {"new_users": [{"key": "g", "items": []}]}},
        422,
        "invalid_parameter",
        "body.new_users[0].items",
    ),
    (
        "POST",
        "/recommend",
        {"json": {"new_users": [{"key": "g", "items": ["i001"] * 1001}]}},
        422,
        "invalid_parameter",
        "body.new_users[0].items",
    ),
    ("POST", "/recommend", {"json": ["u000"]}, 422, "invalid_parameter", "body"),
    ("POST", "/recommend", {"content": b"x" * 1_100_000}, 413, "body_too_large", "body"),
    ("POST", "/candidates/export", {"json": {"candidates": 0}}, 422, "invalid_parameter", "body.candidates"),
    (
        "POST",
        "/candidates/export",
        {"json": {"candidates": 9999}},
        422,
        "invalid_parameter",
        "body.candidates",
    ),
    (
        "POST",
        "/candidates/export",
        {"json": {"users": ["u000", "ghost"]}},
        422,
        "unknown_user",
        "body.users[1]",
    ),
    ("POST", "/candidates/export", {"json": {"users": "u000"}}, 422, "invalid_parameter", "body.users"),
    ("POST", "/admin/reload", {}, 401, "unauthorized", "header.authorization"),
    (
        "POST",
        "/admin/reload",
        {"headers": {"Authorization": "Bearer wrong"}},
        401,
        "unauthorized",
        "header.authorization",
    ),
    (
        "POST",
        "/admin/reload",
        {"headers": {"Authorization": f"Basic {ADMIN_TOKEN}"}},
        401,
        "unauthorized",
        "header.authorization",
    ),
    (
        "POST",
        "/admin/reload",
        {"json": {"version": "../etc"}, "headers": AUTH},
        422,
        "invalid_parameter",
        "body.version",
    ),
    (
        "POST",
        "/admin/reload",
        {"json": {"version": "20990101T000000Z-deadbeef"}, "headers": AUTH},
        404,
        "bundle_not_found",
        "body.version",
    ),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code", "field"), CASES)
def test_bad_input(
    client: TestClient,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code
    assert body["error"]["field"] == field
    assert body["error"]["message"]


def test_chunked_body_over_the_limit_gets_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"users": ['
        for _ in range(200_000):
            yield b'"u000",'
        yield b'"u000"]}'

    r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_admin_disabled_without_token(bundles: Path) -> None:
    with app_client(bundles, admin_token="") as c:
        r = c.post("/admin/reload", headers=AUTH)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_service_still_answers_after_bad_inputs(client: TestClient) -> None:
    assert client.get("/recommend/u000").status_code == 200
