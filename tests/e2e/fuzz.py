"""Fuzzing a real server: property-based requests from its live OpenAPI schema (schemathesis), hand-written
hostile ones, and bytes that are not HTTP at all. The rule checked on every HTTP answer:

- never a 5xx (and never a dropped connection);
- every 4xx is ``application/json`` in the one error shape ``{"error": {"code", "message", "field"}}`` with a
  non-empty code and message; a 422 also names the ``field`` at fault.

Bytes that are not valid HTTP never reach the app: the server's HTTP parser answers them (uvicorn's plain
400) or closes the connection; the rule there is no 5xx, bounded memory (the connection is refused early,
not buffered) and a server that keeps serving.

Generation is schemathesis (Hypothesis underneath): for every operation of ``/openapi.json``, positive cases
(valid by the schema) and negative ones (each violating it somewhere), with the admin bearer token on half
of the admin calls so that the reload path itself is fuzzed, not only its 401. tests/e2e/test_fuzz.py runs
a few examples per operation by default and hundreds in the opt-in long run.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class FuzzReport:
    """What was sent and what came back; ``violations`` lists every answer that broke the rule."""

    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    violations: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_operation": dict(self.by_operation),
            "server_errors": sum(v for k, v in self.by_status.items() if k >= 500 or k == 0),
            "violations": self.violations[:50],
            "violation_count": len(self.violations),
        }


def check_answer(status: int, content_type: str, body: bytes) -> str | None:
    """Why this answer breaks the rule (see the module docstring), or None when it is fine."""
    if status == 0:
        return "no answer (connection dropped)"
    if status >= 500:
        return f"server error {status}"
    if 400 <= status < 500:
        if not content_type.startswith("application/json"):
            return f"{status} with content type {content_type!r}, not JSON"
        try:
            err = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return f"{status} body is not the error shape: {body[:200]!r}"
        if not isinstance(err, dict) or not err.get("code") or not err.get("message"):
            return f"{status} error without code or message: {err!r}"
        if status == 422 and not err.get("field"):
            return f"422 without the field at fault: {err!r}"
    return None


def fuzz_schema(base_url: str, examples: int, admin_token: str | None) -> FuzzReport:
    """Run schemathesis-generated cases (positive and negative, derandomized: the same cases every run)
    for every operation; collect violations."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    report = FuzzReport()
    session = requests.Session()
    ops = []
    for result in schema.get_all_operations():
        if not hasattr(result, "ok"):  # an operation the schema cannot describe: say so, fuzz the rest
            log.warning("skipping an invalid operation of the schema: %s", result)
            continue
        ops.append(result.ok())
    jobs = [(op, mode) for op in ops for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    for op, mode in jobs:
        name = f"{op.method.upper()} {op.path}"
        send = _sender(name, mode.value, base_url, session, admin_token, report)
        test = settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(given(op.as_strategy(generation_mode=mode))(send))
        try:
            test()
        except Unsatisfiable:
            log.info("%s: no %s cases to generate", name, mode.value)
        except Exception as err:  # schemathesis cannot generate for this mode (e.g. nothing to negate)
            log.warning("%s (%s): generation stopped: %s", name, mode.value, str(err).splitlines()[0][:200])
    return report


def _sender(
    name: str, mode: str, base_url: str, session: Any, admin_token: str | None, report: FuzzReport
) -> Any:
    """The Hypothesis test body for one operation and mode: send the case, record and check the answer."""
    import requests

    counter = [0]

    def send(case: Any) -> None:
        headers = {}
        if admin_token and "/admin/" in name and counter[0] % 2 == 0:
            headers["authorization"] = f"Bearer {admin_token}"
        counter[0] += 1
        try:
            resp = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
            ctype_raw = resp.headers.get("content-type") or ""
            # schemathesis' Response keeps every header as a list of values
            ctype = ctype_raw[0] if isinstance(ctype_raw, list) else str(ctype_raw)
            status, body = resp.status_code, resp.content
        except requests.RequestException as err:
            status, ctype, body = 0, "", str(err).encode()
        report.requests += 1
        report.by_status[status] += 1
        report.by_operation[name] += 1
        problem = check_answer(status, ctype, body)
        if problem:
            report.violations.append(
                {"operation": name, "mode": mode, "problem": problem, "curl": case.as_curl_command()}
            )

    return send


def hostile_requests() -> list[tuple[str, str, dict[str, str], bytes]]:
    """Hand-written hostile requests: (method, path, headers, body)."""
    j = {"content-type": "application/json"}
    deep = 100_000
    return [
        ("GET", "/recommend/0?k=100000000000000000000000", {}, b""),
        ("GET", "/recommend/0?k=-1", {}, b""),
        ("GET", "/recommend/0?candidates=-99999999999", {}, b""),
        ("GET", "/recommend/0?candidates=1e400", {}, b""),
        ("GET", "/recommend/a%00b", {}, b""),
        ("GET", "/recommend/%E2%80%AEevil", {}, b""),
        ("GET", "/recommend/%F0%9F%99%82", {}, b""),
        ("GET", "/recommend/%ff%fe", {}, b""),
        ("GET", "/recommend/" + "x" * 5000, {}, b""),
        ("POST", "/recommend", j, json.dumps({"users": ["u" * 10_000_000]}).encode()),
        ("POST", "/recommend", j, b"[" * deep + b"]" * deep),
        ("POST", "/recommend", j, b'{"users":' + b"[" * deep + b"]" * deep + b"}"),
        ("POST", "/recommend", j, b'{"users": ["0"'),
        ("POST", "/recommend", j, b'{"users": ["\xff"]}'),
        ("POST", "/recommend", {"content-type": "text/plain"}, b'{"users": ["0"]}'),
        ("POST", "/recommend", {"content-type": "application/xml"}, b"<users/>"),
        ("POST", "/recommend", {"content-type": "multipart/form-data; boundary=x"}, b"--x--"),
        ("POST", "/recommend", j, json.dumps({"users": ["0"] * 100_000}).encode()),
        (
            "POST",
            "/recommend",
            j,
            json.dumps({"new_users": [{"key": "g", "items": ["1"] * 100_000}]}).encode(),
        ),
        ("POST", "/candidates/export", j, json.dumps({"users": None, "candidates": 10**12}).encode()),
        ("POST", "/candidates/export", j, json.dumps({"users": ["nobody"] * 1000}).encode()),
        ("POST", "/admin/reload", j, json.dumps({"version": "../../etc"}).encode()),
        ("POST", "/admin/reload", {**j, "authorization": "Bearer " + "a" * 10_000}, b"{}"),
        ("POST", "/admin/reload", {**j, "authorization": "Basic Zm9vOmJhcg=="}, b"{}"),
        ("GET", "/metrics?name[]=x", {}, b""),
        ("PATCH", "/recommend/0", {}, b""),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd", {}, b""),
    ]


def check_raw_answer(status: int) -> str | None:
    """Why the answer to bytes that are not valid HTTP breaks the rule (a 5xx), or None (a 4xx of any
    content type, or the connection closed without an answer)."""
    return f"server error {status}" if status >= 500 else None


def raw_hostile_requests() -> list[bytes]:
    """Hostile requests that are not valid HTTP (oversized heads, garbage), as raw bytes."""
    return [
        b"GET /recommend/" + b"u" * 10_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000_000 + b"\r\n\r\n",
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello on the plain port
    ]


def raw_exchange(port: int, payload: bytes) -> tuple[int, str, bytes]:
    """Send raw bytes to 127.0.0.1:port; (status, content type, body) of the answer, status 0 if none."""
    import contextlib
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with contextlib.suppress(OSError):  # the server may close while we are still sending
            s.sendall(payload)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, "", out
    ctype = ""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            ctype = value.strip().decode("latin-1")
    return status, ctype, body


def run_hostile(base_url: str, exports: int = 32) -> FuzzReport:
    """Send :func:`hostile_requests`, :func:`raw_hostile_requests` and ``exports`` concurrent export streams
    (16 at a time: the server must allow that many, ``HASHREC_MAX_EXPORTS``); collect violations."""
    import concurrent.futures as cf

    import httpx

    report = FuzzReport()
    with httpx.Client(base_url=base_url, timeout=60.0) as c:
        for method, path, headers, body in hostile_requests():
            try:
                r = c.request(method, path, headers=headers, content=body or None)
                status, ctype, content = r.status_code, r.headers.get("content-type", ""), r.content
            except httpx.HTTPError as err:
                status, ctype, content = 0, "", str(err).encode()
            report.requests += 1
            report.by_status[status] += 1
            name = f"{method} {path[:60]}"
            report.by_operation["hostile"] += 1
            problem = check_answer(status, ctype, content)
            if problem:
                report.violations.append({"operation": name, "mode": "hostile", "problem": problem})

    # below the app: requests that are not valid HTTP, sent as raw bytes
    port = int(base_url.rsplit(":", 1)[1])
    for payload in raw_hostile_requests():
        status, ctype, content = raw_exchange(port, payload)
        report.requests += 1
        report.by_status[status] += 1
        report.by_operation["raw (not valid HTTP)"] += 1
        problem = check_raw_answer(status)
        if problem:
            report.violations.append({"operation": repr(payload[:40]), "mode": "raw", "problem": problem})

    def export(i: int) -> tuple[int, str | None]:
        try:
            with (
                httpx.Client(base_url=base_url, timeout=120.0) as c,
                c.stream("POST", "/candidates/export", json={"users": None, "candidates": 20 + i}) as r,
            ):
                if r.status_code != 200:
                    return r.status_code, f"export status {r.status_code}"
                *rows, end = [json.loads(line) for line in r.iter_lines() if line]
                total = int(r.headers["x-total-users"])
                complete = end.get("end") and end["rows"] == len(rows) == total
                return 200, None if complete else f"{len(rows)} rows of {total}, last line {end}"
        except (httpx.HTTPError, ValueError) as err:
            return 0, f"export stream broke: {err}"

    with cf.ThreadPoolExecutor(16) as pool:
        for status, problem in pool.map(export, range(exports)):
            report.requests += 1
            report.by_status[status] += 1
            report.by_operation["concurrent export streams"] += 1
            if problem:
                report.violations.append(
                    {"operation": "POST /candidates/export", "mode": "concurrent", "problem": problem}
                )
    return report


def markdown(generated: FuzzReport, hostile: FuzzReport) -> str:
    """The fuzz table: requests, 5xx or dropped, 4xx and rule violations per suite, then the violations."""
    from support.report import md_table

    rows = []
    for name, rep in (
        ("schemathesis (positive + negative, every operation)", generated),
        ("hand-written hostile (HTTP and raw) + concurrent exports", hostile),
    ):
        d = rep.as_dict()
        four = sum(v for k, v in rep.by_status.items() if 400 <= k < 500)
        statuses = ", ".join(f"{k}: {v}" for k, v in d["by_status"].items())
        rows.append([name, d["requests"], d["server_errors"], four, d["violation_count"], statuses])
    table = md_table(["suite", "requests", "5xx / dropped", "4xx", "rule violations", "statuses"], rows)
    ops = ", ".join(f"`{k}` {v}" for k, v in sorted(generated.by_operation.items()))
    body = table + f"\n\nGenerated requests per operation: {ops}.\n"
    violations = generated.violations + hostile.violations
    if violations:
        body += "\nViolations (first 10):\n\n" + "\n".join(
            f"- {v['operation']} ({v['mode']}): {v['problem']}" for v in violations[:10]
        )
    return body
