"""The middleware's admission control and API token, in-process (request ids are in test_api.py, the body
limit in test_errors.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support import ADMIN_TOKEN, app_client

from hashrec.service.middleware import RefusalLog


def test_past_max_inflight_requests_get_503_at_once_but_probes_answer(bundles: Path) -> None:
    """One request in progress (an export streaming) fills ``max_inflight = 1``: the next gets 503
    ``overloaded`` with Retry-After in the one error shape; probes and metrics still answer; once the
    stream ends, requests are admitted again."""
    with app_client(bundles, max_inflight=1, retry_after_s=2, export_batch=16) as c:
        with c.stream("POST", "/candidates/export", json={"candidates": 20}) as held:
            lines = held.iter_lines()
            next(lines)  # the export is in progress
            r = c.get("/recommend/u000")
            assert r.status_code == 503 and r.headers["retry-after"] == "2"
            assert r.json()["error"]["code"] == "overloaded" and r.json()["error"]["message"]
            for probe in ("/livez", "/readyz", "/healthz", "/metrics"):
                assert c.get(probe).status_code == 200, probe
            assert 'hashrec_shed_requests_total{reason="inflight"} 1.0' in c.get("/metrics").text
            for _ in lines:
                pass
        assert c.get("/recommend/u000").status_code == 200


def test_api_token_guards_everything_but_probes_and_admin(bundles: Path) -> None:
    token = "api-token-0123456789abcdef"
    auth = {"Authorization": f"Bearer {token}"}
    with app_client(bundles, api_token=token, admin_token=ADMIN_TOKEN) as c:
        for method, path, body in (
            ("GET", "/recommend/u000", None),
            ("POST", "/recommend", {"users": ["u000"]}),
            ("POST", "/candidates/export", {"users": ["u000"]}),
        ):
            r = c.request(method, path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["field"] == "header.authorization"
            assert r.headers["www-authenticate"] == "Bearer"
            bad = c.request(method, path, json=body, headers={"Authorization": f"Bearer {token}x"})
            assert bad.status_code == 401
            assert c.request(method, path, json=body, headers=auth).status_code == 200, path
        for probe in ("/livez", "/readyz", "/healthz", "/metrics"):
            assert c.get(probe).status_code == 200, probe
        # the admin endpoint has its own token: the API token neither opens nor blocks it
        assert c.post("/admin/reload", headers=auth).status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200


def test_refusals_are_logged_once_a_second_with_their_count(
    bundles: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of refusals is one access-log line (the first at once), not a line each; every refusal is
    still counted in the metrics; admitted requests keep their own line."""
    caplog.set_level(logging.INFO, logger="hashrec.access")
    with app_client(bundles, max_inflight=1, export_batch=16, access_log=True) as c:
        with c.stream("POST", "/candidates/export", json={"candidates": 20}) as held:
            lines = held.iter_lines()
            next(lines)
            for _ in range(5):
                assert c.get("/recommend/u000").status_code == 503
            assert 'hashrec_shed_requests_total{reason="inflight"} 5.0' in c.get("/metrics").text
            for _ in lines:
                pass
        assert c.get("/recommend/u001").status_code == 200
    refused = [r for r in caplog.records if getattr(r, "status", None) == 503]
    assert [r.refused for r in refused] == [1], [r.getMessage() for r in refused]  # type: ignore[attr-defined]
    assert "GET /recommend/u000 503 overloaded: 1 request(s) refused" in refused[0].getMessage()
    assert any(getattr(r, "path", None) == "/recommend/u001" for r in caplog.records)


def test_refusal_log_carries_the_count_since_its_last_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hashrec.access")
    log = RefusalLog(every_s=3600.0)
    for _ in range(4):
        log.note("GET", "/recommend/a")
    log.last -= 3600.0  # an hour later
    log.note("POST", "/recommend")
    counts = [r.refused for r in caplog.records]  # type: ignore[attr-defined]
    assert counts == [1, 4]
    assert caplog.records[-1].getMessage().startswith("POST /recommend 503 overloaded: 4 request(s)")
