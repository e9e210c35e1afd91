"""Fault scenarios: the service under load while its world fails, every answer checked.

Each scenario starts a real ``hashrec serve`` (and a private ``redis-server`` where it needs one), sends an
open-loop load from a separate process (:mod:`loadgen`: every answer must be a 200 whose items are exactly
the Retriever's answer for the version it names), injects one fault in the middle, and reports the three
phases: *before* (normal), *during* (the fault), *after* (recovered). tests/e2e/test_faults.py runs each
scenario short (the default test run) and all of them at full length (opt-in, ``--run-soak``), writing the
table of :func:`markdown` and the JSON to ``--e2e-out``.

Scenarios: ``redis_killed`` (SIGKILL, restarted on the same port), ``redis_stalled`` (SIGSTOP/SIGCONT),
``redis_slow`` (back-to-back ``DEBUG SLEEP``), ``redis_flapping``, ``redis_full`` (``maxmemory`` with
``noeviction``: every write refused), ``reload`` (hot reloads between two versions), ``corrupt_reload``
(a bundle with a damaged file offered for reload), ``bundles_deleted`` (the bundles directory removed under
the server), ``sigterm`` (graceful shutdown with requests and export streams in flight),
``export_disconnect`` (a client drops an export stream: the server stops computing it),
``export_killed`` (bundle export SIGKILLed mid-write: ``current`` intact), and ``control`` (no fault: the
machine's own noise between phases).

Redis scenarios run with the near cache off (``HASHREC_NEAR_CACHE_BYTES=0``) so that every request touches
Redis: the hard case. "Data lost" is checked for what the service owns: answers (none wrong, none
truncated), the served bundle (still loads and serves) and ``current`` (intact).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen import NOT_ANSWERED, LoadSpec, Target, recommend_targets, sources, start_load, window_stats
from support import ADMIN_TOKEN, RedisProcess, ServerProcess, expected_answers, make_bundle
from support.report import md_table

TESTS_DIR = Path(__file__).resolve().parents[1]

log = logging.getLogger(__name__)

SCENARIOS = (
    "control",
    "redis_killed",
    "redis_stalled",
    "redis_slow",
    "redis_flapping",
    "redis_full",
    "reload",
    "corrupt_reload",
    "bundles_deleted",
    "sigterm",
    "export_disconnect",
    "export_killed",
)


@dataclass
class FaultConfig:
    """Sizes and timings of a fault run (the defaults are the full run; the short tests use smaller ones)."""

    n_users: int = 5000
    n_items: int = 8000
    bits: int = 64
    rate: float = 150.0  # requests/s, open loop
    connections: int = 32
    phase_s: float = 8.0  # before / during / after each last this long
    # Redis scenarios: one trial call per this long while the breaker is open (5 s = the service default)
    breaker_reset_s: float = 5.0
    sample_users: int = 400  # users the load asks for (answers precomputed per version)
    # latency checks compare with max(normal latency, this floor): scheduling noise on a shared machine
    # must not read as a fault; a floor below half the Redis timeout (50 ms) still catches requests that
    # wait for Redis
    latency_floor_ms: float = 5.0
    workdir: Path | None = None


@dataclass
class ScenarioResult:
    """One row of the reliability table, plus the checks that decide pass/fail."""

    scenario: str
    load: str
    requests: int = 0
    failures: int = 0
    p99_before_ms: float | None = None
    p99_during_ms: float | None = None
    p99_after_ms: float | None = None
    data_lost: str = "none"
    checks: dict[str, bool] = field(default_factory=dict)
    notes: str = ""
    errors: dict[str, int] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every check held, no failed request, nothing lost."""
        return self.failures == 0 and self.data_lost == "none" and all(self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (for faults.json), with ``passed``."""
        return {**dataclasses.asdict(self), "passed": self.passed}


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m is None or m.group(1) != name:
            continue
        lab = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(lab.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def _send(req: urllib.request.Request | str, timeout: float) -> tuple[int, bytes]:
    """(status, body) of one request; status 0 when the connection fails."""
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body); status 0 when the connection fails."""
    return _send(url, timeout)


def http_post(
    url: str, body: dict[str, Any] | None, token: str | None = None, timeout: float = 30.0
) -> tuple[int, bytes]:
    """POST JSON to ``url``: (status, body); status 0 when the connection fails."""
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return _send(urllib.request.Request(url, data=data, headers=headers, method="POST"), timeout)


class Harness:
    """Shared set-up of one fault run: a bundles directory, sample users and their expected answers."""

    def __init__(self, cfg: FaultConfig) -> None:
        self.cfg = cfg
        self.workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="hashrec-faults-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def fresh_bundles(self, versions: int = 1) -> tuple[Path, list[str]]:
        """A new bundles directory with ``versions`` published versions (the last is ``current``)."""
        self._n += 1
        d = self.workdir / f"bundles{self._n}"
        names = [self.bundle(d, seed=s).name for s in range(versions)]
        return d, names

    def bundle(self, bundles: Path, seed: int) -> Path:
        """Publish one random version of the configured shape into ``bundles``."""
        c = self.cfg
        return make_bundle(bundles, seed=seed, bits=c.bits, n_users=c.n_users, n_items=c.n_items)

    def users(self) -> list[str]:
        """The sample of users the load asks for (spread over the whole id range)."""
        step = max(1, self.cfg.n_users // self.cfg.sample_users)
        return [f"u{i}" for i in range(0, self.cfg.n_users, step)][: self.cfg.sample_users]

    def server(self, bundles: Path, env: dict[str, str] | None = None, name: str = "server") -> ServerProcess:
        """Start a server on ``bundles`` (admin token set, access log on)."""
        self._n += 1
        return ServerProcess(
            bundles,
            self.workdir / f"{name}{self._n}.log",
            env={"HASHREC_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})},
        ).start()

    def redis(self) -> RedisProcess:
        """A private redis-server."""
        self._n += 1
        return RedisProcess(self.workdir / f"redis{self._n}").start()

    def targets(self) -> list[Target]:
        """Half the requests over the sample users (mostly cache misses), half over 20 hot users (hits)."""
        users = self.users()
        cold = recommend_targets(users, k=20)
        hot = recommend_targets(users[:20], k=20)
        return [t for i, c in enumerate(cold) for t in (c, hot[i % len(hot)])]

    def load_desc(self) -> str:
        """The load column of the table."""
        c = self.cfg
        return (
            f"{c.rate:.0f} req/s open loop, GET /recommend k=20, {c.sample_users} users (half on 20 hot ones)"
        )


def run_phased(
    h: Harness,
    srv: ServerProcess,
    expected: dict[str, dict[str, list[str]]] | None,
    fault_start: Callable[[], None],
    fault_end: Callable[[], None],
    targets: list[Target] | None = None,
    settle_s: float = 0.5,
) -> tuple[Any, dict[str, dict[str, Any]], dict[str, float]]:
    """Load for 3 phases; ``fault_start`` at the start of *during*, ``fault_end`` at its end.

    Returns (LoadResult, stats per phase, phase start times). The *during* statistics skip the first
    ``settle_s`` seconds of the fault (the breaker's opening: a few requests may pay the Redis timeout
    before it opens, by design) and are reported separately as ``during_all``.
    """
    c = h.cfg
    targets = targets or h.targets()
    warm = 1.0  # not counted: first connections, first misses
    t0 = time.time() + 2.0 + warm  # the load process needs ~1 s to start (spawn + imports)
    spec = LoadSpec(
        port=srv.port,
        targets=targets,
        duration_s=warm + 3 * c.phase_s,
        rate=c.rate,
        connections=c.connections,
        expected=expected,
        start_at=t0 - warm,
    )
    handle = start_load(spec)
    t_fault = t0 + c.phase_s
    t_end_fault = t0 + 2 * c.phase_s
    _sleep_until(t_fault)
    fault_start()
    _sleep_until(t_end_fault)
    fault_end()
    res = handle.result()
    end = t0 + 3 * c.phase_s
    stats = {
        "before": window_stats(res, t0, t_fault),
        "during": window_stats(res, t_fault + settle_s, t_end_fault),
        "during_all": window_stats(res, t_fault, t_end_fault),
        "after": window_stats(res, t_end_fault, end),
        "all": window_stats(res, t0, end),
    }
    stats["sources_after"] = sources(res, t_end_fault, end)
    return res, stats, {"t0": t0, "fault": t_fault, "end_fault": t_end_fault, "end": end}


class _Repeat:
    """``step(stop)`` over and over in a daemon thread, from :meth:`start` until :meth:`stop` (which waits
    for the thread; idempotent). ``step`` sleeps with ``stop.wait`` so that it ends promptly."""

    def __init__(self, step: Callable[[threading.Event], object], join_s: float = 30.0) -> None:
        self._stop = threading.Event()
        self._join_s = join_s
        self._thread = threading.Thread(target=self._run, args=(step,), daemon=True)

    def _run(self, step: Callable[[threading.Event], object]) -> None:
        while not self._stop.is_set():
            step(self._stop)

    def start(self) -> None:
        """Start repeating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop repeating and wait for the step in progress."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._join_s)


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def _fill(result: ScenarioResult, stats: dict[str, dict[str, Any]]) -> None:
    allp = stats["all"]
    result.requests = allp["requests"]
    result.failures = allp["failures"]
    result.errors = allp["errors"]
    result.p99_before_ms = stats["before"]["p99_ms"]
    result.p99_during_ms = stats["during"]["p99_ms"]
    result.p99_after_ms = stats["after"]["p99_ms"]
    result.detail["phases"] = stats


def _latency_check(stats: dict[str, dict[str, Any]], floor_ms: float, q: str = "p99") -> bool:
    """Latency (quantile ``q``) during the fault, after the breaker opened, within 2x of normal;
    ``floor_ms`` keeps a millisecond baseline on a noisy shared machine from turning scheduling jitter
    into a failure."""
    before, during = stats["before"][f"{q}_ms"], stats["during"][f"{q}_ms"]
    if before is None or during is None:
        return False
    return during <= 2.0 * max(before, floor_ms)


# --------------------------------------------------------------------------------------------- Redis faults
def _redis_scenario(
    h: Harness, name: str, inject: Callable[[RedisProcess], Callable[[], None]], notes: str
) -> ScenarioResult:
    """Common body of the Redis scenarios; ``inject(redis)`` starts the fault and returns its undo."""
    bundles, versions = h.fresh_bundles()
    expected = expected_answers(bundles, versions, h.users(), 20, 500)
    redis = h.redis()
    srv = h.server(
        bundles,
        {
            "HASHREC_REDIS_URL": redis.url,
            "HASHREC_NEAR_CACHE_BYTES": "0",
            # one trial call per reset period: at 2 s and 100 req/s that is 0.5% of the requests
            "HASHREC_BREAKER_RESET_S": str(h.cfg.breaker_reset_s),
            "HASHREC_REDIS_TIMEOUT_S": "0.05",
        },
    )
    result = ScenarioResult(name, h.load_desc(), notes=notes)
    undo: list[Callable[[], None]] = []
    try:

        def start() -> None:
            undo.append(inject(redis))

        def end() -> None:
            undo.pop()()

        res, stats, times = run_phased(h, srv, expected, start, end)
        # which requests paid for the fault: slower than 2x the normal p99, and when (s after the fault)
        limit = 2.0 * max(stats["before"]["p99_ms"] or 0.0, h.cfg.latency_floor_ms) / 1000.0
        slow = [
            round(t - times["fault"], 2)
            for t, lat in zip(res.t, res.latency, strict=True)
            if times["fault"] <= t < times["end_fault"] and lat > limit
        ]
        result.notes += (
            f"; {len(slow)} requests during the fault slower than 2x normal p99,"
            f" {sum(1 for x in slow if x < 0.5)} of them in its first 0.5 s"
        )
        _, metrics = http_get(srv.url + "/metrics")
        text = metrics.decode()
        redis_hits = metric_sum(text, "hashrec_cache_requests_total", backend="redis", op="get", result="hit")
        errors = metric_sum(text, "hashrec_cache_requests_total", backend="redis", result="error")
        skipped = metric_sum(text, "hashrec_cache_requests_total", backend="redis", result="skipped")
        # "cache used again": answers served from Redis in the after phase
        after_cache = stats["sources_after"].get("cache", 0)
        _fill(result, stats)
        result.checks = {
            "no failed request": stats["all"]["failures"] == 0,
            "p99 within 2x of normal after the breaker opened": _latency_check(stats, h.cfg.latency_floor_ms),
            "p50 within 2x of normal after the breaker opened": _latency_check(
                stats, h.cfg.latency_floor_ms, q="p50"
            ),
            "cache used again after recovery": after_cache > 0,
            "cache failures counted": errors > 0,
        }
        result.detail.update(
            redis_hits=redis_hits,
            cache_errors=errors,
            cache_skipped=skipped,
            cache_answers_after=after_cache,
            times=times,
            slow_during_s_after_fault=slow[:50],
        )
    finally:
        while undo:
            undo.pop()()
        srv.stop()
        redis.stop()
    return result


def control(h: Harness) -> ScenarioResult:
    """No fault at all (Redis up throughout): the noise floor of the three phases on this machine."""

    def inject(r: RedisProcess) -> Callable[[], None]:
        return lambda: None

    res = _redis_scenario(h, "control", inject, "no fault: the machine's own noise between phases")
    res.checks.pop("cache failures counted", None)
    return res


def redis_killed(h: Harness) -> ScenarioResult:
    """Redis SIGKILLed during load, restarted (same port, empty) after one phase."""

    def inject(r: RedisProcess) -> Callable[[], None]:
        r.stop()

        def undo() -> None:
            r.start()

        return undo

    return _redis_scenario(h, "redis_killed", inject, "SIGKILL, restarted empty on the same port")


def redis_stalled(h: Harness) -> ScenarioResult:
    """Redis frozen (SIGSTOP): connections hang instead of failing; the breaker must cut the waits."""

    def inject(r: RedisProcess) -> Callable[[], None]:
        assert r.proc is not None
        pid = r.proc.pid
        os.kill(pid, signal.SIGSTOP)
        return lambda: os.kill(pid, signal.SIGCONT)

    return _redis_scenario(h, "redis_stalled", inject, "SIGSTOP for one phase, then SIGCONT")


def redis_slow(h: Harness) -> ScenarioResult:
    """Redis slowed: back-to-back ``DEBUG SLEEP 0.2`` (each blocks the whole server 200 ms)."""

    def inject(r: RedisProcess) -> Callable[[], None]:
        def sleep_redis(stop: threading.Event) -> None:
            r.command("DEBUG", "SLEEP", "0.2", timeout=2.0)
            stop.wait(0.02)

        slow = _Repeat(sleep_redis)
        slow.start()
        return slow.stop

    return _redis_scenario(h, "redis_slow", inject, "DEBUG SLEEP 0.2 back to back (Redis answers in ~200 ms)")


def redis_flapping(h: Harness) -> ScenarioResult:
    """Redis killed and restarted every 0.6 s for one phase."""

    def inject(r: RedisProcess) -> Callable[[], None]:
        def flap(stop: threading.Event) -> None:
            r.stop()
            stop.wait(0.6)
            r.start()
            stop.wait(0.6)

        flapping = _Repeat(flap)
        flapping.start()

        def undo() -> None:
            flapping.stop()
            if r.command("PING", timeout=0.5) != "PONG":
                r.start()

        return undo

    return _redis_scenario(h, "redis_flapping", inject, "killed/restarted every 0.6 s")


def redis_full(h: Harness) -> ScenarioResult:
    """Redis full: ``maxmemory 1`` with ``noeviction`` (every write answers OOM), then back to normal."""

    def inject(r: RedisProcess) -> Callable[[], None]:
        # empty first: with every answer already cached the service would never write, and a full Redis
        # is about refused writes (reads keep answering, all misses now)
        r.command("FLUSHALL")
        r.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        r.command("CONFIG", "SET", "maxmemory", "1")

        def undo() -> None:
            r.command("CONFIG", "SET", "maxmemory", "0")

        return undo

    res = _redis_scenario(
        h, "redis_full", inject, "flushed, then maxmemory 1 byte with noeviction: every SET refused (OOM)"
    )
    return res


# ------------------------------------------------------------------------------------------- bundle faults
def reload_under_load(h: Harness) -> ScenarioResult:
    """Hot reloads back and forth between two versions, every 0.4 s, for one phase."""
    bundles, versions = h.fresh_bundles(versions=2)
    expected = expected_answers(bundles, versions, h.users(), 20, 500)
    srv = h.server(bundles)
    result = ScenarioResult("reload", h.load_desc(), notes="hot reload between 2 versions every 0.4 s")
    outcomes: list[int] = []

    def swap(stop: threading.Event) -> None:
        st, _ = http_post(srv.url + "/admin/reload", {"version": versions[len(outcomes) % 2]}, ADMIN_TOKEN)
        outcomes.append(st)
        stop.wait(0.4)

    reloads = _Repeat(swap)
    try:
        res, stats, _ = run_phased(h, srv, expected, reloads.start, reloads.stop)
        _fill(result, stats)
        seen = {v for v in res.version if v}
        result.checks = {
            "no failed or mixed-version answer": stats["all"]["failures"] == 0,
            "every reload succeeded": bool(outcomes) and all(s == 200 for s in outcomes),
            "both versions served": seen == set(versions),
        }
        result.detail.update(reloads=len(outcomes), versions_served=sorted(seen))
    finally:
        reloads.stop()
        srv.stop()
    return result


CORRUPTED = "item_vectors.npy"


def _corrupt(vdir: Path) -> None:
    """Flip bytes in the middle of the item vectors (the manifest's sha256 no longer matches)."""
    p = vdir / CORRUPTED
    data = bytearray(p.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)
    data[mid] ^= 0xFF
    p.write_bytes(bytes(data))


def corrupt_reload(h: Harness) -> ScenarioResult:
    """A damaged bundle version offered for reload repeatedly under load: refused, the old one serves."""
    bundles, versions = h.fresh_bundles(versions=1)
    expected = expected_answers(bundles, versions, h.users(), 20, 500)
    srv = h.server(bundles)
    bad = h.bundle(bundles, seed=99)
    _corrupt(bad)
    result = ScenarioResult(
        "corrupt_reload", h.load_desc(), notes=f"reload of a version whose {CORRUPTED} is damaged"
    )
    outcomes: list[tuple[int, str]] = []

    def offer(stop: threading.Event) -> None:
        for body in ({"version": bad.name}, None):  # by name, and `current` (which points to it)
            st, raw = http_post(srv.url + "/admin/reload", body, ADMIN_TOKEN)
            outcomes.append((st, _error_message(raw)))
        stop.wait(0.4)

    offers = _Repeat(offer)
    try:
        _res, stats, _ = run_phased(h, srv, expected, offers.start, offers.stop)
        _fill(result, stats)
        _, health = http_get(srv.url + "/healthz")
        served = json.loads(health).get("version")
        result.checks = {
            "no failed request": stats["all"]["failures"] == 0,
            "every corrupt reload refused with 422": bool(outcomes) and all(s == 422 for s, _ in outcomes),
            "refusal names the file": all(CORRUPTED in m for _, m in outcomes),
            "old version keeps serving": served == versions[0],
        }
        result.detail.update(reload_attempts=len(outcomes), first_refusal=outcomes[0][1] if outcomes else "")
    finally:
        offers.stop()
        srv.stop()
    return result


def _error_message(raw: bytes) -> str:
    """The ``message`` of an error answer (the raw body, shortened, when it is not the error shape)."""
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:1000]


def bundles_deleted(h: Harness) -> ScenarioResult:
    """The bundles directory removed under a running server (its files stay mapped): keeps serving."""
    bundles, versions = h.fresh_bundles(versions=1)
    expected = expected_answers(bundles, versions, h.users(), 20, 500)
    srv = h.server(bundles)
    result = ScenarioResult(
        "bundles_deleted", h.load_desc(), notes="rm -rf of the bundles directory mid-load"
    )
    reload_status: list[int] = []
    try:

        def start() -> None:
            shutil.rmtree(bundles)
            st, _ = http_post(srv.url + "/admin/reload", None, ADMIN_TOKEN)
            reload_status.append(st)

        _res, stats, _ = run_phased(h, srv, expected, start, lambda: None)
        _fill(result, stats)
        _, health = http_get(srv.url + "/healthz")
        ready, _ = http_get(srv.url + "/readyz")
        result.checks = {
            "no failed request": stats["all"]["failures"] == 0,
            "reload of the deleted directory refused (4xx)": bool(reload_status)
            and 400 <= reload_status[0] < 500,
            "running version keeps serving": json.loads(health).get("version") == versions[0]
            and ready == 200,
        }
        result.detail.update(reload_status=reload_status)
    finally:
        srv.stop()
    return result


# ---------------------------------------------------------------------------------------------- shutdown
def _read_export(url: str, first_line: threading.Event, out: list[Any], pace_s: float) -> None:
    """Stream an export, signal after the first line, then read the rest slowly; append (rows, total, err):
    ``err`` is "" only when the stream ended with its end line counting exactly the rows received."""
    req = urllib.request.Request(
        url + "/candidates/export",
        data=json.dumps({"users": None, "candidates": 100}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    rows, err, end = 0, "", None
    total = -1
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            total = int(r.headers["x-total-users"])
            while line := r.readline():
                doc = json.loads(line)
                if doc.get("end"):
                    end = doc
                    continue
                rows += 1
                if rows == 1:
                    first_line.set()
                if pace_s and rows % 200 == 0:
                    time.sleep(pace_s)
        if end is None or end["rows"] != rows:
            err = f"stream cut: {rows} rows, end line {end}"
    except Exception as exc:  # a truncated stream is exactly what this records
        err = f"{type(exc).__name__}: {exc}"
    first_line.set()
    out.append((rows, total, err))


# HASHREC_DRAIN_S of the sigterm scenario: after SIGTERM, /readyz answers 503 this long while requests
# are still accepted and answered; then the server stops accepting and finishes what is in flight
DRAIN_S = 3.0
# requests sent until this long after SIGTERM reach a draining server: each must be answered. Later ones
# may meet a closed port or a connection closed before any answer byte: a refusal, which clients retry,
# not lost work. (The second of margin absorbs a busy machine's scheduling delay.)
ANSWERED_UNTIL_S = DRAIN_S - 1.0


def _watch_readiness(url: str, out: list[tuple[float, int]], stop: threading.Event) -> None:
    """Record (time, /readyz status) every 0.1 s until the server stops answering or ``stop`` is set."""
    while not stop.is_set():
        status, _ = http_get(url + "/readyz", timeout=2.0)
        out.append((time.time(), status))
        if status == 0:
            return
        stop.wait(0.1)


def sigterm(h: Harness) -> ScenarioResult:
    """SIGTERM with recommend load and 4 slow-reading export streams in flight: /readyz turns 503 while
    requests are still answered (the drain), everything started finishes complete, the process exits
    cleanly; only requests sent after the drain may be refused."""
    bundles, versions = h.fresh_bundles(versions=1)
    expected = expected_answers(bundles, versions, h.users(), 20, 500)
    env = {"HASHREC_EXPORT_BATCH": "64", "HASHREC_MAX_EXPORTS": "4", "HASHREC_DRAIN_S": str(DRAIN_S)}
    srv = h.server(bundles, env)
    result = ScenarioResult(
        "sigterm", h.load_desc() + " + 4 export streams", notes="SIGTERM mid-load; exports read slowly"
    )
    exports: list[Any] = []
    exit_code: list[int] = []
    readiness: list[tuple[float, int]] = []
    stop_watch = threading.Event()
    try:
        c = h.cfg
        t0 = time.time() + 2.0
        spec = LoadSpec(
            port=srv.port,
            targets=h.targets(),
            duration_s=2 * c.phase_s,
            rate=c.rate,
            connections=c.connections,
            expected=expected,
            start_at=t0,
        )
        handle = start_load(spec)
        _sleep_until(t0 + c.phase_s - 0.5)
        threads = []
        for _ in range(4):
            ev = threading.Event()
            t = threading.Thread(target=_read_export, args=(srv.url, ev, exports, 0.01), daemon=True)
            t.start()
            ev.wait(60)
            threads.append(t)
        t_sig = time.time()
        srv.signal(signal.SIGTERM)
        watch = threading.Thread(target=_watch_readiness, args=(srv.url, readiness, stop_watch), daemon=True)
        watch.start()
        try:
            exit_code.append(srv.wait(timeout=120))
        except subprocess.TimeoutExpired:
            exit_code.append(-1)
        t_exit = time.time()
        stop_watch.set()
        watch.join(10)
        for t in threads:
            t.join(120)
        res = handle.result()
        _fill_shutdown(result, res, exports, t_sig, t_exit)
        result.checks.update(
            {
                # uvicorn re-raises the signal after its graceful shutdown, so -15 is a clean exit too
                "graceful exit (0, or -15 re-raised by uvicorn)": exit_code in ([0], [-signal.SIGTERM]),
                "application shutdown ran": "Application shutdown complete" in srv.log_text(),
                "/readyz 503 while draining": any(status == 503 for _t, status in readiness),
            }
        )
        result.detail.update(
            exit_code=exit_code,
            shutdown_s=round(t_exit - t_sig, 2),
            readiness=[(round(t - t_sig, 2), status) for t, status in readiness][:50],
        )
    finally:
        stop_watch.set()
        srv.stop()
    return result


def _fill_shutdown(result: ScenarioResult, res: Any, exports: list[Any], t_sig: float, t_exit: float) -> None:
    """Failures, data lost and checks of the SIGTERM scenario from its load and export results."""
    late = t_sig + ANSWERED_UNTIL_S
    refused = [
        e for e, sent in zip(res.error, res.sent, strict=True) if e and _is_refusal(e) and sent >= late
    ]
    failed = [
        e for e, sent in zip(res.error, res.sent, strict=True) if e and not (_is_refusal(e) and sent >= late)
    ]
    truncated = [e for e in res.error if "truncated" in e]
    before = window_stats(res, res.t0, t_sig)
    result.requests = len(res)
    result.failures = len(failed)
    result.errors = dict(Counter(failed).most_common(3))
    result.p99_before_ms = before["p99_ms"]
    result.p99_during_ms = window_stats(res, t_sig, t_exit)["p99_ms"]
    complete = [x for x in exports if not x[2] and x[0] == x[1]]
    if truncated or len(complete) != len(exports):
        result.data_lost = (
            f"{len(truncated)} truncated answers, {len(exports) - len(complete)} broken exports"
        )
    result.checks = {
        "in-flight export streams complete": len(exports) == 4 and len(complete) == 4,
        "no truncated answer": not truncated,
        "no wrong answer, none unanswered that was sent before the drain ended": not failed,
    }
    result.detail.update(
        exports=[list(x) for x in exports],
        refused_at_shutdown=len(refused),
        failed=failed[:5],
    )


def _is_refusal(err: str) -> bool:
    """Errors that mean "not accepted" (no answer was started), expected once shutdown has begun."""
    return (
        "ConnectionRefused" in err
        or "Connect call failed" in err
        or "Errno 111" in err
        or err.startswith(NOT_ANSWERED)
    )


# -------------------------------------------------------------------------------------------- export faults
def export_disconnect(h: Harness) -> ScenarioResult:
    """A client reads one row of an all-users export, then drops the connection: the rows counter stops
    (the server stopped computing the rest) and the server keeps answering."""
    bundles, _versions = h.fresh_bundles(versions=1)
    srv = h.server(bundles, {"HASHREC_EXPORT_BATCH": "32"})
    result = ScenarioResult("export_disconnect", "1 export stream of all users, C=500, dropped after 1 row")
    try:
        import socket

        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        body = json.dumps({"users": None, "candidates": 500}).encode()
        s.sendall(
            b"POST /candidates/export HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        got = b""
        while b"\n{" not in got and len(got) < 1_000_000:  # the head and the first row
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        s.close()
        rows = _settled_rows(srv.url)
        total = h.cfg.n_users
        ok, _ = http_get(srv.url + "/recommend/u1?k=5")
        result.requests = 1
        result.checks = {
            "work stopped after the disconnect": rows is not None and rows < total,
            "server still answers": ok == 200,
        }
        result.detail.update(rows_computed=rows, rows_total=total)
        result.notes = f"{rows} of {total} rows computed before the stream stopped"
    finally:
        srv.stop()
    return result


def _settled_rows(url: str, quiet_s: float = 1.5, timeout_s: float = 60.0) -> float | None:
    """``hashrec_export_rows_total`` once it has not moved for ``quiet_s`` (None if it never settles)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        _, text = http_get(url + "/metrics")
        rows = metric_sum(text.decode(), "hashrec_export_rows_total")
        if rows == last:
            return rows
        last = rows
        time.sleep(quiet_s)
    return None


_EXPORT_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[5])
from support import make_bundle
make_bundle(Path(sys.argv[1]), seed=int(sys.argv[4]), bits=64, n_users=int(sys.argv[2]), n_items=int(sys.argv[3]))
"""


def export_killed(h: Harness, trials: int = 4) -> ScenarioResult:
    """Bundle export SIGKILLed at random moments mid-write: ``current`` still loads, same version."""
    from hashrec.index.bundle import load_bundle, resolve_bundle_dir

    bundles, versions = h.fresh_bundles(versions=1)
    result = ScenarioResult("export_killed", f"{trials} bundle exports SIGKILLed mid-write")
    rng = random.Random(0)
    intact = 0
    killed_mid = 0
    for trial in range(trials):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _EXPORT_CHILD,
                str(bundles),
                str(h.cfg.n_users * 10),
                str(h.cfg.n_items * 4),
                str(100 + trial),
                str(TESTS_DIR),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # wait until the export's temporary directory exists (files are being written), then a random
        # few milliseconds more, then SIGKILL
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(".tmp-") for p in bundles.iterdir()):
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            killed_mid += 1
        proc.kill()
        proc.wait()
        cur = resolve_bundle_dir(bundles)
        b = load_bundle(cur)  # full validation: manifest, sha256 of every file, shapes
        if cur.name in versions or b.version == cur.name:
            intact += 1
        versions.append(cur.name)  # a trial that finished before the kill published a complete version
    result.requests = trials
    result.checks = {
        "current loads and validates after every kill": intact == trials,
        "killed mid-write": killed_mid > 0,
    }
    result.notes = f"{killed_mid} of {trials} exports killed before they finished"
    if intact != trials:
        result.data_lost = f"{trials - intact} broken current"
    return result


RUNNERS: dict[str, Callable[[Harness], ScenarioResult]] = {
    "control": control,
    "redis_killed": redis_killed,
    "redis_stalled": redis_stalled,
    "redis_slow": redis_slow,
    "redis_flapping": redis_flapping,
    "redis_full": redis_full,
    "reload": reload_under_load,
    "corrupt_reload": corrupt_reload,
    "bundles_deleted": bundles_deleted,
    "sigterm": sigterm,
    "export_disconnect": export_disconnect,
    "export_killed": export_killed,
}


def run_scenarios(names: list[str], cfg: FaultConfig) -> list[ScenarioResult]:
    """Run the named scenarios one after another (never in parallel: they measure latency)."""
    h = Harness(cfg)
    out = []
    try:
        for n, name in enumerate(names, 1):
            log.info("scenario %d/%d: %s", n, len(names), name)
            r = RUNNERS[name](h)
            log.info("scenario %s: %s %s", name, "passed" if r.passed else "FAILED", r.checks)
            out.append(r)
    finally:
        if cfg.workdir is None:
            shutil.rmtree(h.workdir, ignore_errors=True)
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def markdown(results: list[ScenarioResult]) -> str:
    """The faults table: one row per scenario, then the medians and p95 of the same phases."""
    rows = [
        [
            r.scenario,
            r.load,
            r.requests,
            r.failures,
            _fmt(r.p99_before_ms),
            _fmt(r.p99_during_ms),
            _fmt(r.p99_after_ms),
            r.data_lost,
            "pass" if r.passed else "FAIL: " + ", ".join(k for k, v in r.checks.items() if not v),
            r.notes,
        ]
        for r in results
    ]
    table = md_table(
        [
            "scenario",
            "load",
            "requests",
            "failures",
            "p99 before (ms)",
            "p99 during (ms)",
            "p99 after (ms)",
            "data lost",
            "checks",
            "notes",
        ],
        rows,
    )
    p50 = md_table(
        [
            "scenario",
            "p50 before (ms)",
            "p50 during (ms)",
            "p50 after (ms)",
            "p95 before",
            "p95 during",
            "p95 after",
        ],
        [
            [r.scenario]
            + [
                _fmt((r.detail.get("phases") or {}).get(ph, {}).get(q))
                for q in ("p50_ms", "p95_ms")
                for ph in ("before", "during", "after")
            ]
            for r in results
            if r.detail.get("phases")
        ],
    )
    return (
        "Each load scenario: three phases (before the fault, during it, after it is undone) of equal length; "
        "*p99 during* counts from 0.5 s after the fault began (the breaker's opening, when a few requests may "
        "still wait for Redis, is in the JSON as `during_all`). The `control` row injects nothing: its spread "
        "between phases is this machine's own noise in the same run.\n\n"
        + table
        + "\n\nMedians and p95 of the same phases:\n\n"
        + p50
    )
