"""schemathesis against the live server's OpenAPI schema (short CI version of ``hashrec bench fuzz``)."""

from __future__ import annotations

import json

import httpx

from hashrec.bench.fuzz import check_answer, fuzz_schema
from hashrec.bench.server_process import ADMIN_TOKEN, ServerProcess


def test_generated_requests_never_get_a_5xx_and_4xx_are_json_errors(server: ServerProcess) -> None:
    report = fuzz_schema(server.url, examples=12, admin_token=ADMIN_TOKEN)
    ops = set(httpx.get(server.url + "/openapi.json").json()["paths"])
    covered = {name.split(" ", 1)[1] for name in report.by_operation}
    assert covered == ops, ops - covered  # every endpoint was fuzzed
    assert report.requests >= 100
    assert not report.violations, report.violations[:5]
    assert any(400 <= s < 500 for s in report.by_status)  # negative cases really were sent


def test_the_rule_itself() -> None:
    ok = json.dumps(
        {"error": {"code": "invalid_parameter", "message": "k: bad", "field": "query.k"}}
    ).encode()
    assert check_answer(200, "application/json", b"{}") is None
    assert check_answer(422, "application/json", ok) is None
    assert check_answer(500, "application/json", ok) == "server error 500"
    assert check_answer(0, "", b"") is not None
    assert "not JSON" in str(
        check_answer(400, "text/plain; charset=utf-8", b"Invalid HTTP request received.")
    )
    no_field = json.dumps({"error": {"code": "x", "message": "y", "field": None}}).encode()
    assert check_answer(400, "application/json", no_field) is None
    assert "field" in str(check_answer(422, "application/json", no_field))
    assert check_answer(404, "application/json", b'{"detail": "Not Found"}') is not None
