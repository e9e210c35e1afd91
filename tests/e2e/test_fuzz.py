"""Fuzzing a real server (``fuzz.py``): schemathesis cases from the live OpenAPI schema, hand-written hostile
requests and bytes that are not HTTP. A few examples per operation by default; ``--run-soak`` adds the long
run (hundreds per operation and mode, >= 1,000 requests), whose table and JSON go to ``--e2e-out``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fuzz import check_answer, check_raw_answer, fuzz_schema, markdown, run_hostile
from support import ADMIN_TOKEN, ServerProcess, save_json


def test_generated_requests_never_get_a_5xx_and_4xx_are_json_errors(server: ServerProcess) -> None:
    report = fuzz_schema(server.url, examples=12, admin_token=ADMIN_TOKEN)
    ops = set(httpx.get(server.url + "/openapi.json").json()["paths"])
    covered = {name.split(" ", 1)[1] for name in report.by_operation}
    assert covered == ops, ops - covered  # every endpoint was fuzzed
    assert report.requests >= 100
    assert not report.violations, report.violations[:5]
    assert any(400 <= s < 500 for s in report.by_status)  # negative cases really were sent


def test_hostile_and_raw_requests_and_concurrent_exports(server: ServerProcess) -> None:
    """The hand-written battery through the real HTTP stack (the parser included), then the server still
    answers."""
    report = run_hostile(server.url, exports=16)
    assert not report.violations, report.violations[:5]
    assert (
        report.by_operation["raw (not valid HTTP)"] == 5
        and report.by_operation["concurrent export streams"] == 16
    )
    assert server.proc is not None and server.proc.poll() is None
    assert httpx.get(server.url + "/readyz", timeout=30).status_code == 200


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
    # bytes that are not HTTP: the parser's plain 400 or a closed connection are fine, a 5xx is not
    assert check_raw_answer(400) is None and check_raw_answer(0) is None
    assert check_raw_answer(502) == "server error 502"


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_long_fuzz(server: ServerProcess, e2e_out: Path) -> None:
    """100 examples per operation and mode plus the full hostile battery; fuzz.md and fuzz.json."""
    generated = fuzz_schema(server.url, examples=100, admin_token=ADMIN_TOKEN)
    hostile = run_hostile(server.url)
    alive = server.proc is not None and server.proc.poll() is None
    payload = {"generated": generated.as_dict(), "hostile": hostile.as_dict(), "server_alive_at_end": alive}
    save_json(e2e_out / "fuzz.json", payload)
    (e2e_out / "fuzz.md").write_text(markdown(generated, hostile) + "\n")
    assert alive and generated.requests >= 1000
    assert not generated.violations and not hostile.violations
