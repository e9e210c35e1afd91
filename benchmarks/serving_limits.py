"""Does the service meet issue 15's serving targets on this machine? Overload, rolling out a new bundle,
exports beside online traffic, a cold Redis cache, and what a second worker buys.

    .venv/bin/python benchmarks/serving_limits.py                          # all scenarios: ~10 min (+ slow exports)
    .venv/bin/python benchmarks/serving_limits.py --only overload,rollout  # some of them
    .venv/bin/python benchmarks/serving_limits.py --quick                  # seconds each: a smoke run
    .venv/bin/python benchmarks/serving_limits.py --out /tmp/serving_limits.json

What runs: real ``hashrec serve`` processes (``support.ServerProcess``, access log on, as deployed) on a
Gowalla-shaped bundle (Gowalla's ids and known interactions, random 64-bit codes: serving cost depends on
the shapes, not the values; ``service.gowalla_bundle``), loaded by ``wrk`` (closed loop: capacity, floors)
or by the end-to-end load generator (``tests/e2e/loadgen.py``: open loop, every answer checked, latency
measured from the time a request was *scheduled*, so a stall counts against every request it delays).
Servers are uncached (``HASHREC_CACHE=none``) unless a scenario is about the cache, with 2 workers (the
default on a 2-core machine), ``GET /recommend/<user>?k=20&candidates=500`` over every user at random.

Capacity is measured once (closed-loop wrk, 30 s, on a 2-worker uncached server) and the open-loop rates
are fractions of it. Each scenario returns its figures and rows (target, measured, met):

- ``overload``: 2x capacity open loop for 60 s (256 connections, more than the 2 x 64 requests the workers
  admit, so the shedding, not the client, decides); responses by status, non-503 errors (target 0), p99 of
  the accepted answers (<= 50 ms), p99 of the 503s (fast: <= 10 ms), server RSS before/after (flat:
  <= 10% growth); then at once 10 s at 50% of capacity: p99 (<= 50 ms), no error but 503, and no 503
  after the first 0.5 s (the requests still queued behind the overload may be refused; later ones not);
  and the server's CPU per request at 50% (open loop) against that of the closed loop that measured
  capacity: how busy "half load" keeps the server.
  The offered rate the client achieved and its lag are reported: the client shares the cores with the
  server.
- ``overload_lb``: the same offered load (2x the direct capacity, then 50%) behind HAProxy running
  ``docker/haproxy.cfg`` as shipped (``support.HAProxyProcess`` rewrites only its addresses, and the
  replica's ``maxconn`` and the queue bound to ``--lb-maxconn`` / ``--lb-queue``: 4 per worker and 12 per
  worker of the one 2-worker server here, as the shipped file has for compose's replicas), so that waiting
  and refusals happen in front of the workers; HAProxy's CPU is counted with the server's. The capacity
  through HAProxy (closed-loop wrk) is reported against the direct one.
- ``refusals``: what a refusal costs the server against an answer, 1 worker each, in turns: wrk (16
  connections) on an uncached server (server CPU per answer) and wrk (64 connections) on one admitting
  a single request at a time (``HASHREC_MAX_INFLIGHT=1``: nearly every request refused with 503), the same
  with the access log off. At 2x capacity, refusals alone take 2 x (refusal / answer) of the CPU: past
  half, a worker cannot even refuse what it is offered, whatever its admission rule.
- ``rollout``: two replicas (separate ``hashrec serve`` processes, 1 worker each by default) following
  one bundles directory, each loaded at 25% of capacity; a new version is published (moved into the
  directory, then ``current`` repointed by ``hashrec.index.publish``) in the middle. Every answer must be
  exactly its version's answer (items compared with the Retriever's, old or new version: a mixed-version
  answer fails) and none may fail; target: the last old-version answer arrives within the poll interval
  + 1 s of the publish.
- ``export``: p99 of ``GET /recommend`` at 30% of capacity for 20 s, then at the same rate while two full
  exports (``POST /candidates/export``, every user, C = 500) stream concurrently (the window is export
  start to last end), then 20 s idle again, all three sent by one load process: the ratio of
  the p99 during the exports to that of both idle windows' answers together (target <= 2x; each idle
  window's own p99 is reported: the VM's speed can drift in a minute); the export throughput; both streams
  complete (end line counting the rows received, one row per user).
- ``cold_cache``: Redis configured (a private ``redis-server``, default near cache): wrk walks the users in
  order, each run from its own offset and with its own C (500 + 100 x run, + 1 at every wrap of the
  user list), so no cache key repeats: every
  request is a miss (Redis's own hit counter stays at 0; its miss counter counts only the look-ups that
  asked: the cold-cache read bypass answers most misses unasked). Throughput against the same server's
  ``GET /livez`` (the floor), floor and target alternating, medians of pairs; target >= 0.5 on the
  setting the issue gives for it (a 6,000-user, 3,700-item bundle of random codes), reported on the
  Gowalla-shaped bundle too; an uncached server on each bundle, measured in the same turns, is the
  reference (what the model alone costs against the floor), and a Redis-cached server with the read
  bypass off (``HASHREC_CACHE_BYPASS_BELOW=0``) shows what the bypass buys.
- ``workers``: ``service.compare_workers`` (1 and 2 worker uncached servers up together, measured in
  turns): 2 vs 1 throughput, target >= 1.4x, and server CPU per request; before it, what the machine
  itself gives a second busy process (``cpu_scaling``: a Python loop, 2 at once against 1 alone), the
  ceiling of that ratio here.

Fairness: load generators run in their own processes on the same cores as the servers; wrk (C) for
throughput, the Python load generator only where answers must be checked or the loop must be open.
``--server-cpus 0`` splits the machine instead: every server (workers, export children) confined to CPU 0,
this script, wrk and the load generators to the other CPUs, so that a client that cannot keep up (the
overload's 2x) is not what is measured; capacity is then that of a server on those CPUs. The
log of every server this script starts (not those of ``compare_workers``) is searched for 5xx answers
other than 503, unhandled errors and ERROR lines. ``--quick`` shortens every
run to a few seconds and exports 1,500 users: it proves the script works, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
from e2e.loadgen import LoadResult, LoadSpec, Target, recommend_targets, start_load
from support import HAProxyProcess, ServerProcess, expected_answers, make_bundle

import service as bench  # benchmarks/service.py (this folder is sys.path[0]), not the product's package

log = logging.getLogger("benchmarks.serving_limits")

SCENARIOS = ("overload", "overload_lb", "refusals", "rollout", "export", "cold_cache", "workers")
LEAD_S = 3.0  # a load process is spawned this long before its start (spawn and imports take ~1 s)
EXPORT_LOAD_MAX_S = 3600.0  # the export scenario's load runs until stopped, at most this long
P99_TARGET_MS = 50.0
FAST_503_MS = 10.0
RSS_GROWTH_MAX = 0.10
RECOVERY_503_S = 0.5  # "recovers at once": the requests still queued behind the overload may be refused

Row = tuple[str, str, bool | None]  # (target, measured, met); met None: reported, no target


@dataclass(frozen=True)
class Durations:
    """Seconds of every run (the full run; ``QUICK`` for a smoke run)."""

    capacity_s: float = 30.0
    overload_s: float = 60.0
    recovery_s: float = 10.0
    rollout_before_s: float = 10.0
    rollout_after_s: float = 20.0
    export_idle_s: float = 20.0
    wrk_s: float = 10.0
    repeats: int = 3
    export_users: int | None = None  # None: every user


QUICK = Durations(
    capacity_s=3.0,
    overload_s=5.0,
    recovery_s=3.0,
    rollout_before_s=3.0,
    rollout_after_s=8.0,
    export_idle_s=3.0,
    wrk_s=2.0,
    repeats=1,
    export_users=1500,
)


@dataclass
class Bench:
    """What the scenarios share: settings, the bundle, the users and the capacity once measured."""

    args: argparse.Namespace
    d: Durations
    work: Path
    bundles: Path
    users: list[str]
    users_file: Path
    capacity_run: dict[str, Any] | None = None
    logs: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def query(self) -> str:
        return f"?k={self.args.k}&candidates={self.args.candidates}"

    def targets(self, seed: int = 0) -> list[Target]:
        """``GET /recommend/<user>`` over every user, shuffled."""
        return recommend_targets(self.users, self.args.k, self.args.candidates, seed=seed)

    def capacity(self, srv: ServerProcess | None = None) -> float:
        """Closed-loop uncached req/s of a 2-worker server (``srv``, or one started for it), measured once."""
        if self.capacity_run is None:
            with contextlib.ExitStack() as stack:
                if srv is None:
                    srv = stack.enter_context(self.server("capacity", 2, HASHREC_CACHE="none"))
                lua = bench.recommend_script(
                    self.work, "capacity", self.users_file, self.query, in_turn=False
                )
                log.info(
                    "capacity: closed-loop wrk, %d connections, %.0f s",
                    self.args.connections,
                    self.d.capacity_s,
                )
                self.capacity_run = bench.wrk(srv, lua, self.d.capacity_s, self.args.connections)
                log.info("capacity: %.0f req/s", self.capacity_run["rps"])
        return float(self.capacity_run["rps"])

    @contextlib.contextmanager
    def server(
        self, name: str, workers: int, bundles: Path | None = None, **env: str
    ) -> Iterator[ServerProcess]:
        """``service.serving``, and the server's log searched for errors when it stops."""
        cpus = self.args.server_cpus
        with bench.serving(bundles or self.bundles, self.work, name, workers, cpus, **env) as srv:
            try:
                yield srv
            finally:
                self.logs[name] = log_errors(srv.log_text())


def log_errors(text: str) -> dict[str, int]:
    """Access-log 5xx answers other than 503, unhandled errors / tracebacks and ERROR lines in a server log."""
    statuses = Counter(m.group(1) for m in re.finditer(r'"status":\s*(5\d\d)', text))
    return {
        "5xx_not_503": sum(n for s, n in statuses.items() if s != "503"),
        "unhandled": text.count("unhandled error") + text.count("Traceback"),
        "error_lines": len(re.findall(r'"level":\s*"(?:ERROR|CRITICAL)"', text)),
    }


# -- open-loop load and its statistics ----------------------------------------------------------------------


@contextlib.contextmanager
def sample_rss(srv: ServerProcess, every_s: float = 1.0) -> Iterator[list[tuple[float, int]]]:
    """(time, server RSS) every ``every_s`` seconds while the block runs."""
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            samples.append((time.time(), srv.rss()))

    th = threading.Thread(target=run, daemon=True)
    th.start()
    try:
        yield samples
    finally:
        stop.set()
        th.join()


def open_loop(
    port: int,
    targets: list[Target],
    rate: float,
    seconds: float,
    connections: int,
    start_at: float,
    **kw: Any,
) -> Any:
    """Start the e2e load generator (its own process) at ``rate`` req/s from ``start_at``; a handle."""
    spec = LoadSpec(
        port=port,
        targets=targets,
        duration_s=seconds,
        rate=rate,
        connections=connections,
        start_at=start_at,
        **kw,
    )
    return start_load(spec)


def _outside(res: LoadResult, t_from: float, t_to: float) -> LoadResult:
    """The requests of ``res`` scheduled before ``t_from`` or from ``t_to`` on."""
    out = LoadResult(t0=res.t0)
    keep = [not t_from <= t < t_to for t in res.t]
    for name in ("t", "sent", "latency", "status", "error", "version", "source"):
        getattr(out, name).extend(v for v, k in zip(getattr(res, name), keep, strict=True) if k)
    return out


def sleep_until(t: float) -> None:
    """Sleep until wall-clock time ``t`` (``time.time()``)."""
    time.sleep(max(0.0, t - time.time()))


def pct(values: list[float], q: float = 99) -> float | None:
    """The ``q``th percentile (ms when given ms), None when empty."""
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(values, q)), 2)


def summarise(res: LoadResult, t_from: float, t_to: float) -> dict[str, Any]:
    """Requests scheduled in ``[t_from, t_to)``: counts by status, failures (any error), non-503 errors,
    p99 (ms, from the scheduled time and from the actual send) of the 200s and of the 503s, the offered
    and the achieved send rate, the client's lag."""
    sel = [i for i, t in enumerate(res.t) if t_from <= t < t_to]
    span = max(1e-9, t_to - t_from)

    def lat(status: int, from_send: bool = False) -> list[float]:
        return [
            1e3 * (res.latency[i] - ((res.sent[i] - res.t[i]) if from_send else 0.0))
            for i in sel
            if res.status[i] == status and (status != 200 or not res.error[i])
        ]

    non503 = Counter(res.error[i] for i in sel if res.error[i] and res.status[i] != 503)
    sent = sorted(res.sent[i] for i in sel)
    return {
        "requests": len(sel),
        "by_status": dict(Counter(str(res.status[i] or "no answer") for i in sel)),
        "failures": sum(1 for i in sel if res.error[i]),
        "non_503_errors": sum(non503.values()),
        "non_503_examples": dict(non503.most_common(3)),
        "p50_ms": pct(lat(200), 50),
        "p99_ms": pct(lat(200)),
        "p99_from_send_ms": pct(lat(200, from_send=True)),
        "p99_503_ms": pct(lat(503)),
        "p99_503_from_send_ms": pct(lat(503, from_send=True)),
        "offered_rps": round(len(sel) / span, 1),
        "sent_rps": round(len(sent) / max(1e-9, sent[-1] - sent[0]), 1) if len(sent) > 1 else None,
        "client_lag_p99_ms": pct([1e3 * (res.sent[i] - res.t[i]) for i in sel]),
        "last_503_after_start_ms": max(
            (round(1e3 * (res.t[i] - t_from), 1) for i in sel if res.status[i] == 503), default=None
        ),
    }


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def at_most(v: float | None, limit: float) -> bool:
    return v is not None and v <= limit


# -- scenarios --------------------------------------------------------------------------------------------


def overload(b: Bench) -> tuple[dict[str, Any], list[Row]]:
    """2x capacity open loop, then 50% at once: shedding by the workers is clean, fast and costs no memory."""
    with b.server("overload", 2, HASHREC_CACHE="none") as srv:
        cap = b.capacity(srv)
        assert b.capacity_run is not None
        return _overload(b, srv, srv.port, cap, srv, b.capacity_run["cpu_us_per_request"])


@dataclass
class Proxied:
    """A server behind HAProxy, as ``service.wrk`` measures it: HAProxy's URL, the CPU of both."""

    srv: ServerProcess
    lb: HAProxyProcess

    @property
    def url(self) -> str:
        return self.lb.url

    @property
    def pid(self) -> int:
        return self.srv.pid

    def worker_pids(self) -> list[int]:
        return [*self.srv.worker_pids(), self.lb.pid]


def overload_lb(b: Bench) -> tuple[dict[str, Any], list[Row]]:
    """The overload behind docker/haproxy.cfg, as deployed: a replica takes ``maxconn`` recommendations at
    once, the next ones wait in HAProxy's queue, and past the queue's bound HAProxy refuses before a worker
    spends CPU on the request. The offered load is the ``overload`` scenario's: 2x the direct capacity."""
    cap = b.capacity()  # measured once per run, shared with ``overload``: the same offered load
    assert b.capacity_run is not None
    cap_cpu_us = b.capacity_run["cpu_us_per_request"]
    with (
        b.server("overload_lb", 2, HASHREC_CACHE="none") as srv,
        HAProxyProcess(
            srv.port,
            b.work / "haproxy",
            recommend_maxconn=b.args.lb_maxconn,
            recommend_queue=b.args.lb_queue,
            cpus=b.args.server_cpus,
        ).start() as lb,
    ):
        try:
            lua = bench.recommend_script(b.work, "capacity_lb", b.users_file, b.query, in_turn=False)
            log.info("capacity through haproxy: closed-loop wrk, %.0f s", b.d.capacity_s)
            proxied = Proxied(srv, lb)
            cap_run = bench.wrk(proxied, lua, b.d.capacity_s, b.args.connections)  # type: ignore[arg-type]
            out, rows = _overload(b, srv, lb.port, cap, proxied, cap_cpu_us)
        finally:
            b.logs["overload_lb (haproxy)"] = haproxy_errors(lb.log_text())
    out.update(capacity_run_lb=cap_run, lb={"maxconn": b.args.lb_maxconn, "queue": b.args.lb_queue})
    row = (
        "capacity through haproxy / direct (closed loop)",
        f"{cap_run['rps']:.0f} / {cap:.0f} req/s ({cap_run['rps'] / cap:.2f}); server and haproxy CPU "
        f"{cap_run['cpu_us_per_request']:.0f} us per request",
        None,
    )
    return out, [row, *rows]


def haproxy_errors(text: str) -> dict[str, int]:
    """Lines of HAProxy's log that say something failed: alerts, and a replica marked down."""
    return {"error_lines": len(re.findall(r"\[ALERT\]|is DOWN", text))}


def _overload(
    b: Bench,
    srv: ServerProcess,
    port: int,
    cap: float,
    cpu_of: ServerProcess | Proxied,
    cap_cpu_us: float | None,
) -> tuple[dict[str, Any], list[Row]]:
    """2x ``cap`` open loop on ``port`` for the overload's seconds, then at once 50% of ``cap``; the CPU per
    request of ``cpu_of``'s processes (``pid`` and ``worker_pids()``) at 50%, against ``cap_cpu_us``, that
    of the closed loop that measured ``cap``."""
    rss0 = srv.rss()
    t0 = time.time() + LEAD_S
    t1 = t0 + b.d.overload_s
    log.info(
        "overload: %.0f req/s (2x capacity) for %.0f s, then %.0f req/s", 2 * cap, b.d.overload_s, cap / 2
    )
    over = open_loop(port, b.targets(1), 2 * cap, b.d.overload_s, b.args.overload_connections, t0)
    rec = open_loop(port, b.targets(2), cap / 2, b.d.recovery_s, 64, t1)
    marks: list[float] = []  # server CPU seconds 1 s into the recovery (its queue drained) and at its end

    def mark() -> None:
        for at in (t1 + 1.0, t1 + b.d.recovery_s):
            sleep_until(at)
            marks.append(bench.cpu_seconds(sorted({cpu_of.pid, *cpu_of.worker_pids()})))

    marker = threading.Thread(target=mark, daemon=True)
    marker.start()
    with sample_rss(srv) as samples:
        over_res, rec_res = over.result(), rec.result()
    marker.join()
    rss1 = srv.rss()
    n_rec = sum(1 for t in rec_res.t if t1 + 1.0 <= t < t1 + b.d.recovery_s)
    rec_cpu_us = 1e6 * (marks[1] - marks[0]) / n_rec if n_rec and len(marks) == 2 else None
    o, r = summarise(over_res, t0, t1), summarise(rec_res, t1, t1 + b.d.recovery_s)
    growth = (rss1 - rss0) / rss0 if rss0 else None
    # a one-time high-water mark (buffers of the first burst) or a climb? RSS a quarter in vs at the end
    quarter = [m for t, m in samples if t >= t0 + b.d.overload_s / 4]
    drift = (quarter[-1] - quarter[0]) / quarter[0] if len(quarter) > 1 and quarter[0] else None
    out = {"capacity_rps": cap, "rate": 2 * cap, "overload": o, "recovery": r}
    out.update(recovery_cpu_us_per_request=rec_cpu_us, capacity_cpu_us_per_request=cap_cpu_us)
    out.update(rss_before=rss0, rss_after=rss1, rss_growth=growth, rss_drift=drift, rss_samples=samples)
    rows: list[Row] = [
        (
            "responses by status at 2x capacity",
            ", ".join(f"{k}: {v:,}" for k, v in sorted(o["by_status"].items())),
            None,
        ),
        (
            "non-503 errors at 2x capacity: 0",
            f"{o['non_503_errors']} of {o['requests']:,}",
            o["non_503_errors"] == 0,
        ),
        (
            f"p99 of accepted (200) <= {P99_TARGET_MS:.0f} ms",
            f"{ms(o['p99_ms'])} (from send {ms(o['p99_from_send_ms'])})",
            at_most(o["p99_ms"], P99_TARGET_MS),
        ),
        (
            f"p99 of the 503s <= {FAST_503_MS:.0f} ms",
            f"{ms(o['p99_503_ms'])} (from send {ms(o['p99_503_from_send_ms'])})",
            at_most(o["p99_503_ms"], FAST_503_MS),
        ),
        (
            "load generator: offered / sent rate, its lag p99",
            f"{o['offered_rps']:.0f} / {o['sent_rps'] or 0:.0f} req/s, {ms(o['client_lag_p99_ms'])}",
            None,
        ),
        (
            f"server RSS flat (growth <= {RSS_GROWTH_MAX:.0%})",
            f"{rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB ({growth:+.1%})" if growth is not None else "-",
            growth is not None and growth <= RSS_GROWTH_MAX,
        ),
        (
            "server RSS from a quarter into the overload to its end",
            "-" if drift is None else f"{drift:+.1%}",
            None,
        ),
        (
            f"recovery at 50%: p99 <= {P99_TARGET_MS:.0f} ms",
            ms(r["p99_ms"]),
            at_most(r["p99_ms"], P99_TARGET_MS),
        ),
        (
            "recovery at 50%: no error but 503",
            f"{r['non_503_errors']} of {r['requests']:,}",
            r["non_503_errors"] == 0,
        ),
        (
            "server CPU per request: open loop at 50% (from 1 s in) / the closed loop at capacity",
            "-"
            if rec_cpu_us is None or not cap_cpu_us
            else f"{rec_cpu_us:.0f} / {cap_cpu_us:.0f} us ({rec_cpu_us / cap_cpu_us:.2f}x)",
            None,
        ),
        (
            f"recovery at once: no 503 after the first {RECOVERY_503_S:.1f} s at 50%",
            f"{r['by_status'].get('503', 0)} 503s of {r['requests']:,}"
            + (
                f", the last {r['last_503_after_start_ms']:.0f} ms into it"
                if r["last_503_after_start_ms"] is not None
                else ""
            ),
            r["last_503_after_start_ms"] is None or r["last_503_after_start_ms"] <= 1e3 * RECOVERY_503_S,
        ),
    ]
    return out, rows


def _stage_new_version(b: Bench, old_dir: Path) -> tuple[Path, Path]:
    """A rollout bundles dir serving a copy of ``old_dir``, and a new version built beside it (not yet in)."""
    from hashrec.data import load_dataset
    from hashrec.index.publish import publish

    bundles = b.work / "rollout-bundles"
    bundles.mkdir()
    shutil.copytree(old_dir, bundles / old_dir.name)
    publish(bundles, old_dir.name)
    log.info("rollout: building the new version (another random model, same Gowalla shape)")
    new_dir = make_bundle(b.work / "rollout-staging", load_dataset(b.args.gowalla), seed=1, bits=64)
    return bundles, new_dir


def _switch(res: LoadResult, old: str, new: str, t_pub: float) -> dict[str, Any]:
    """One replica's switch: its last old-version answer and first new one (s after the publish, answer
    arrival), old answers that arrived after the first new one (workers switch one by one)."""
    done = [t + lat for t, lat in zip(res.t, res.latency, strict=True)]
    olds = [d for d, v in zip(done, res.version, strict=True) if v == old]
    news = [d for d, v in zip(done, res.version, strict=True) if v == new]
    first_new = min(news) if news else None
    return {
        "last_old_s": round(max(olds) - t_pub, 3) if olds else None,
        "first_new_s": round(first_new - t_pub, 3) if first_new is not None else None,
        "old_after_first_new": sum(1 for d in olds if first_new is not None and d > first_new),
        "answers": dict(Counter(v or "none" for v in res.version)),
        "failures": sum(1 for e in res.error if e),
        "errors": dict(Counter(e for e in res.error if e).most_common(3)),
        "last_answers_new": bool(news)
        and all(v == new for d, v in sorted(zip(done, res.version, strict=True))[-20:]),
    }


def _switch_log(text: str, new: str, t_pub: float) -> list[str]:
    """The server log's lines about ``new`` (loaded in how long, now serving), seconds after the publish:
    where the switch time went (the wait for the poll, the verify child process, the load)."""
    import datetime as dt

    out = []
    for line in text.splitlines():
        if new in line and line.startswith("{"):
            with contextlib.suppress(ValueError, KeyError):
                doc = json.loads(line)
                t = dt.datetime.fromisoformat(doc["ts"]).timestamp() - t_pub
                msg = re.sub(r" from \S+| \(was \S+\)", "", doc["msg"]).replace(new, "new")
                out.append(f"+{t:.2f} s {msg}")
    return out


def rollout(b: Bench) -> tuple[dict[str, Any], list[Row]]:
    """Two replicas under open-loop load while a new version is published: nothing fails, nothing mixes,
    the old version stops within a poll interval + 1 s."""
    cap = b.capacity()
    old_dir = (b.bundles / "current").resolve()
    bundles, new_dir = _stage_new_version(b, old_dir)
    old, new = old_dir.name, new_dir.name
    sample = b.users[:: max(1, len(b.users) // b.args.rollout_users)][: b.args.rollout_users]
    expected = {
        **expected_answers(bundles, [old], sample, b.args.k, b.args.candidates),
        **expected_answers(new_dir.parent, [new], sample, b.args.k, b.args.candidates),
    }
    targets = recommend_targets(sample, b.args.k, b.args.candidates, seed=3)
    poll = b.args.poll_s
    env = {"HASHREC_CACHE": "none", "HASHREC_BUNDLE_POLL_S": str(poll)}
    n, seconds = b.args.rollout_workers, b.d.rollout_before_s + b.d.rollout_after_s
    with b.server("replica-a", n, bundles, **env) as ra, b.server("replica-b", n, bundles, **env) as rb:
        t0 = time.time() + LEAD_S
        log.info(
            "rollout: 2 replicas x %d worker(s), %.0f req/s each, publish after %.0f s",
            n,
            cap / 4,
            b.d.rollout_before_s,
        )
        handles = [open_loop(s.port, targets, cap / 4, seconds, 32, t0, expected=expected) for s in (ra, rb)]
        sleep_until(t0 + b.d.rollout_before_s)
        from hashrec.index.publish import publish

        shutil.move(str(new_dir), str(bundles / new))  # same file system: a rename
        t_pub = time.time()
        publish(bundles, new)
        log.info("rollout: published %s", new)
        results = [h.result() for h in handles]
        logs = [_switch_log(s.log_text(), new, t_pub) for s in (ra, rb)]
    per = {
        name: {**_switch(r, old, new, t_pub), "log": lines}
        for name, r, lines in zip(("a", "b"), results, logs, strict=True)
    }
    lasts = [p["last_old_s"] for p in per.values()]
    switched = all(p["first_new_s"] is not None and p["last_answers_new"] for p in per.values())
    last_old = max(v for v in lasts if v is not None) if any(v is not None for v in lasts) else None
    failures = sum(p["failures"] for p in per.values())
    versions = {v for p in per.values() for v in p["answers"] if v != "none"}
    out = {"capacity_rps": cap, "rate_per_replica": cap / 4, "poll_s": poll, "old": old, "new": new}
    out.update(replicas=per, last_old_s=last_old, failures=failures, requests=sum(len(r) for r in results))
    rows: list[Row] = [
        (
            "0 failed requests (every answer exactly its version's)",
            f"{failures} of {out['requests']:,}",
            failures == 0,
        ),
        (
            "every answer names the old or the new version",
            ", ".join(sorted(versions)) or "-",
            versions <= {old, new},
        ),
        ("both replicas switched, the last answers all new", "yes" if switched else "no", switched),
        (
            "the switch in the replicas' logs (after the publish)",
            "; ".join(f"{n}: {', '.join(p['log']) or '-'}" for n, p in per.items()),
            None,
        ),
        (
            f"publish -> last old-version answer <= poll + 1 s = {poll + 1:.1f} s",
            "-" if last_old is None else f"{last_old:.2f} s (a: {lasts[0]}, b: {lasts[1]})",
            switched and last_old is not None and last_old <= poll + 1,
        ),
    ]
    return out, rows


def read_export(url: str, users: list[str] | None, candidates: int, out: dict[str, Any]) -> None:
    """Stream one export and discard it; ``out``: rows received, the end line, seconds, error ("" = ok)."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"users": users, "candidates": candidates}).encode()
    t0, rows, tail, err, end = time.time(), 0, b"", "", None
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        conn.request("POST", "/candidates/export", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"http {resp.status}: {resp.read()[:200]!r}")
        out["total"] = int(resp.headers.get("x-total-users", -1))
        while chunk := resp.read(1 << 20):
            rows += chunk.count(b"\n")
            tail = (tail + chunk)[-4096:]
        conn.close()
        end = json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
        rows -= 1  # the end line
        if not end.get("end") or end.get("rows") != rows or rows != out["total"]:
            err = f"incomplete: {rows} rows, {out['total']} users, end line {end}"
    except Exception as exc:  # recorded, reported as a failed export
        err = f"{type(exc).__name__}: {exc}"
    out.update(rows=rows, end=end, seconds=time.time() - t0, error=err)


def export(b: Bench) -> tuple[dict[str, Any], list[Row]]:
    """Online p99 at 30% of capacity, idle before the exports, while two full exports stream, and idle
    again after them: the idle p99 is that of both idle windows' answers together, so that the VM's speed
    drifting during the exports does not decide the ratio alone. One load process sends all three windows
    (stopped after the last): spawning a Python process takes most of a core for half a second, which
    segments spawned during the exports would have counted against them."""
    cap = b.capacity()
    rate = b.args.export_load * cap
    users = None if b.d.export_users is None else b.users[: b.d.export_users]
    idle_s = b.d.export_idle_s
    with b.server("export", 2, HASHREC_CACHE="none") as srv:
        t0 = time.time() + LEAD_S
        log.info("export: %.0f req/s, %.0f s idle, then 2 exports of %s users, then %.0f s idle", rate, idle_s,
                 "all" if users is None else len(users), idle_s)  # fmt: skip
        load = open_loop(srv.port, b.targets(4), rate, EXPORT_LOAD_MAX_S, 32, t0)
        streams: list[dict[str, Any]] = [{}, {}]
        threads = [
            threading.Thread(
                target=read_export, args=(srv.url, users, b.args.export_candidates, s), daemon=True
            )
            for s in streams
        ]
        sleep_until(t0 + idle_s)
        start = time.time()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        t1 = time.time()
        sleep_until(t1 + idle_s)
        load.stop()
        res = load.result()
    end = max(start + s["seconds"] for s in streams)
    during = summarise(res, start, end)
    idle_before = summarise(res, t0, start)
    idle_after = summarise(res, t1, t1 + idle_s)
    # both idle windows' answers pooled; its span includes the exports, so rates are told per window only
    idle = summarise(_outside(res, start, t1), t0, t1 + idle_s)
    idle.update(offered_rps=None, sent_rps=None)
    ratio = during["p99_ms"] / idle["p99_ms"] if during["p99_ms"] and idle["p99_ms"] else None
    rows_total = sum(s.get("rows", 0) for s in streams)
    ok = all(not s["error"] for s in streams)
    out = {
        "capacity_rps": cap,
        "rate": rate,
        "idle": idle,
        "idle_before": idle_before,
        "idle_after": idle_after,
        "during": during,
        "p99_ratio": ratio,
        "exports": streams,
    }
    out["export_users_per_s"] = rows_total / (end - start)
    rows: list[Row] = [
        (
            "online p99 idle (before, after) / during 2 exports",
            f"{ms(idle['p99_ms'])} ({ms(idle_before['p99_ms'])}, {ms(idle_after['p99_ms'])})"
            f" / {ms(during['p99_ms'])}",
            None,
        ),
        (
            "online p99 during exports <= 2x idle",
            "-" if ratio is None else f"{ratio:.2f}x",
            ratio is not None and ratio <= 2.0,
        ),
        (
            "online requests failed: 0 (idle + during)",
            f"{idle['failures'] + during['failures']}",
            idle["failures"] + during["failures"] == 0,
        ),
        (
            "both exports complete (end line, one row per user)",
            "; ".join(s["error"] or f"{s['rows']:,} rows in {s['seconds']:.1f} s" for s in streams),
            ok,
        ),
        ("export throughput (both streams)", f"{out['export_users_per_s']:,.0f} users/s", None),
    ]
    return out, rows


def _cold_script(b: Bench, users_file: Path, n_users: int, run: int) -> Path:
    """wrk Lua: ``GET /recommend`` over the users in order from this run's offset, with C = 500 + 100 x run
    + the number of times the list wrapped: no key repeats within a run or across runs (1 thread)."""
    body = f"""
local users = {{}}
for line in io.lines("{users_file}") do users[#users + 1] = line end
local counter = {run * n_users // b.d.repeats}
function request()
  counter = counter + 1
  local c = {b.args.candidates + 100 * run} + math.floor((counter - 1) / #users)
  return wrk.format("GET", "/recommend/" .. users[(counter - 1) % #users + 1] .. "?k={b.args.k}&candidates=" .. c)
end
"""
    return bench.script(b.work, f"cold-{users_file.stem}-{run}", body)


def _redis_hits(url: str) -> tuple[int, int]:
    """Redis's keyspace hits and misses so far."""
    import redis as redis_client

    info = redis_client.Redis.from_url(url).info("stats")
    return int(info["keyspace_hits"]), int(info["keyspace_misses"])


def _small_bundle(b: Bench) -> tuple[Path, Path, int]:
    """The issue's cold-cache setting: a 6,000-user, 3,700-item bundle; (bundles, users file, users)."""
    n_users = 6000
    bundles = make_bundle(b.work / "small-bundles", seed=2, bits=64, n_users=n_users, n_items=3700).parent
    users_file = b.work / "small-users.txt"
    users_file.write_text("".join(f"u{i}\n" for i in range(n_users)))
    return bundles, users_file, n_users


def _cold_pairs(b: Bench, name: str, bundles: Path, users_file: Path, n_users: int) -> dict[str, Any]:
    """On one bundle: a Redis-cached server (every request a miss; its cold-cache read bypass on, the
    default), the same with the bypass off (``HASHREC_CACHE_BYPASS_BELOW=0``: every look-up asks Redis),
    and an uncached one, each against its own floor (``GET /livez``) in alternating turns; ratios are
    medians over the pairs."""
    floor = bench.script(b.work, "floor", "")
    out: dict[str, Any] = {}
    with (
        bench.redis(b.work, f"redis-{name}") as rds,
        b.server(f"cold-{name}", 2, bundles, HASHREC_REDIS_URL=rds.url) as cold,
        b.server(
            f"cold-all-{name}", 2, bundles, HASHREC_REDIS_URL=rds.url, HASHREC_CACHE_BYPASS_BELOW="0"
        ) as every,
        b.server(f"nocache-{name}", 2, bundles, HASHREC_CACHE="none") as bare,
    ):
        servers = {"redis": cold, "redis_every_read": every, "none": bare}
        runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {label: [] for label in servers}
        counts = {label: {"hits": 0, "misses": 0, "requests": 0} for label in ("redis", "redis_every_read")}
        for run in range(b.d.repeats):
            log.info("cold cache (%s): round %d/%d", name, run + 1, b.d.repeats)
            turns = list(servers.items())
            for label, srv in turns[run % 3 :] + turns[: run % 3]:  # the order rotates each round
                # keys that no earlier request wrote (the two Redis servers share one Redis): all misses
                lua = _cold_script(b, users_file, n_users, 2 * run + (label == "redis_every_read"))
                f = bench.wrk(srv, floor, b.d.wrk_s, b.args.connections, "/livez")
                h0, m0 = _redis_hits(rds.url)
                t = bench.wrk(srv, lua, b.d.wrk_s, b.args.connections)
                h1, m1 = _redis_hits(rds.url)
                runs[label].append((f, t))
                if label != "none":
                    c = counts[label]
                    c["hits"], c["misses"], c["requests"] = (
                        c["hits"] + h1 - h0,
                        c["misses"] + m1 - m0,
                        c["requests"] + t["requests"],
                    )
        for label, pairs in runs.items():
            out[label] = {
                "floor": bench.median_row([f for f, _t in pairs]),
                "recommend": bench.median_row([t for _f, t in pairs]),
                "ratio": statistics.median(t["rps"] / f["rps"] for f, t in pairs),
            }
    out["redis_counts"] = counts
    return out


def cold_cache(b: Bench) -> tuple[dict[str, Any], list[Row]]:
    """Every request a Redis miss, against the same server's floor; on the issue's 6k-user bundle (the
    target's setting) and on the Gowalla-shaped one; an uncached server beside each as the reference."""
    small, small_users, n_small = _small_bundle(b)
    out = {
        "small": _cold_pairs(b, "small", small, small_users, n_small),
        "gowalla": _cold_pairs(b, "gowalla", b.bundles, b.users_file, len(b.users)),
    }
    rows: list[Row] = []
    for name, label in (("small", "6k users x 3.7k items"), ("gowalla", "Gowalla-shaped")):
        r = out[name]
        rc, rn = r["redis"], r["none"]
        every, cold = r["redis_counts"]["redis_every_read"], r["redis_counts"]["redis"]
        rows.append(
            (
                f"{label}: no key repeats (bypass off: Redis hits 0, misses >= requests)",
                f"{every['hits']} hits, {every['misses']:,} misses, {every['requests']:,} requests",
                every["hits"] == 0 and every["misses"] >= every["requests"],
            )
        )
        rows.append(
            (
                f"{label}: bypass on: look-ups that asked Redis (probes; a hit = a probe that left after its "
                "own answer was written)",
                f"{cold['hits']} hits, {cold['misses']:,} misses, {cold['requests']:,} requests",
                None,
            )
        )
        rows.append(
            (
                f"{label}: cold /recommend req/s >= 0.5 x floor (`GET /livez`)",
                f"{rc['recommend']['rps']:.0f} / {rc['floor']['rps']:.0f} = {rc['ratio']:.2f}"
                f" (p99 {ms(rc['recommend']['p99_ms'])})",
                rc["ratio"] >= 0.5 if name == "small" else None,
            )
        )
        rp = r["redis_every_read"]
        rows.append(
            (
                f"{label}: the same with every look-up asking Redis (bypass off; reference, same run)",
                f"{rp['recommend']['rps']:.0f} / {rp['floor']['rps']:.0f} = {rp['ratio']:.2f}"
                f" (p99 {ms(rp['recommend']['p99_ms'])})",
                None,
            )
        )
        rows.append(
            (
                f"{label}: no cache at all (reference, same run)",
                f"{rn['recommend']['rps']:.0f} / {rn['floor']['rps']:.0f} = {rn['ratio']:.2f}"
                f" (p99 {ms(rn['recommend']['p99_ms'])})",
                None,
            )
        )
    return out, rows


def refusals(b: Bench) -> tuple[dict[str, Any], list[Row]]:
    """Server CPU per refused request (503 ``overloaded``) against per answer, 1 worker each, in turns."""
    lua = bench.recommend_script(b.work, "refusals", b.users_file, b.query, in_turn=False)
    cases = {
        "answer": ({}, 16),
        "refusal": ({"HASHREC_MAX_INFLIGHT": "1"}, 64),
        "refusal_no_access_log": ({"HASHREC_MAX_INFLIGHT": "1", "HASHREC_ACCESS_LOG": "false"}, 64),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(b.server(f"refusals-{name}", 1, HASHREC_CACHE="none", **env))
            for name, (env, _) in cases.items()
        }
        for rnd in range(b.d.repeats):
            for name, (_, conns) in cases.items():
                runs[name].append(bench.wrk(servers[name], lua, b.d.wrk_s, conns))
                log.info("refusals round %d, %s: %s", rnd + 1, name, runs[name][-1])

    def cpu(name: str) -> float:
        return statistics.median(r["cpu_us_per_request"] for r in runs[name])

    def refused(name: str) -> float:
        return statistics.median(r["non_2xx"] / max(r["requests"], 1) for r in runs[name])

    ratio = cpu("refusal") / cpu("answer")
    out = {"runs": runs, "cpu_us": {n: cpu(n) for n in cases}, "refused_share": refused("refusal")}
    out["refusal_vs_answer"] = ratio
    rows: list[Row] = [
        ("server CPU per answer (uncached)", f"{cpu('answer'):.0f} us", None),
        (
            "server CPU per request refused (503), access log on / off",
            f"{cpu('refusal'):.0f} us / {cpu('refusal_no_access_log'):.0f} us "
            f"({refused('refusal'):.1%} of the requests refused)",
            None,
        ),
        (
            "refusal / answer: CPU that refusals alone take at 2x capacity",
            f"{ratio:.2f}: {2 * ratio:.0%}",
            None,
        ),
    ]
    return out, rows


_SPIN = """
import sys, time
end, n = time.perf_counter() + float(sys.argv[1]), 0
while time.perf_counter() < end:
    for _ in range(1000):
        n += 1
print(n)
"""


def cpu_scaling(seconds: float, repeats: int) -> float:
    """Work that 2 CPU-bound Python processes get done together over what 1 gets done alone, in the same
    time (median of ``repeats``): 2.0 on two cores of their own; less where the machine's "cores" share
    one physical core (SMT siblings under the hypervisor) or its frequency drops with both busy. It bounds
    what a second worker can buy here."""

    def run(k: int) -> list[int]:
        cmd = [sys.executable, "-c", _SPIN, str(seconds)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        return [int(p.communicate()[0]) for p in procs]

    ratios = []
    for _ in range(repeats):
        alone = run(1)[0]
        ratios.append(sum(run(2)) / alone)
    return statistics.median(ratios)


def workers(b: Bench) -> tuple[dict[str, Any], list[Row]]:
    """``service.compare_workers`` with 1 and 2 workers (uncached, measured in turns), and the machine's own
    2-process scaling (:func:`cpu_scaling`) measured just before."""
    scaling = cpu_scaling(b.d.wrk_s / 2, b.d.repeats)
    log.info("2 busy processes do %.2fx the work of 1", scaling)
    ns = argparse.Namespace(
        compare_workers=[1, 2],
        repeats=b.d.repeats,
        seconds=b.d.wrk_s,
        connections=b.args.connections,
        k=b.args.k,
        candidates=b.args.candidates,
    )
    res = bench.compare_workers(ns, b.bundles, b.work, b.users_file)
    res["cpu_scaling"] = scaling
    ratio = res["2"]["rps_ratio_vs_first"]
    cpu = [res[n]["recommend"]["cpu_us_per_request"] for n in ("1", "2")]
    rows: list[Row] = [
        (
            "2 vs 1 workers uncached req/s >= 1.4x",
            f"{res['2']['recommend']['rps']:.0f} / {res['1']['recommend']['rps']:.0f} = {ratio:.2f}x",
            ratio >= 1.4,
        ),
        (
            "the machine: 2 busy Python processes vs 1 (work done in the same time)",
            f"{scaling:.2f}x",
            None,
        ),
        (
            "server CPU per request, 1 / 2 workers",
            " / ".join("-" if c is None else f"{c:.0f} us" for c in cpu),
            None,
        ),
    ]
    return res, rows


RUNS: dict[str, Callable[[Bench], tuple[dict[str, Any], list[Row]]]] = {
    "overload": overload,
    "overload_lb": overload_lb,
    "refusals": refusals,
    "rollout": rollout,
    "export": export,
    "cold_cache": cold_cache,
    "workers": workers,
}


def table(rows: dict[str, list[Row]], logs: dict[str, dict[str, int]]) -> str:
    """One line per target: scenario, target, measured, met; then the server logs' errors."""
    met = {True: "yes", False: "**no**", None: "-"}
    lines = [[name, t, m, met[ok]] for name, rs in rows.items() for t, m, ok in rs]
    bad = {n: e for n, e in logs.items() if any(e.values())}
    lines.append(
        [
            "all",
            "server logs: no 5xx but 503, no unhandled error, no ERROR line",
            "none" if not bad else "; ".join(f"{n}: {e}" for n, e in bad.items()),
            met[not bad],
        ]
    )
    return common.md_table(["scenario", "target", "measured", "met"], lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios (default: all of {', '.join(SCENARIOS)})",
    )
    p.add_argument(
        "--quick", action="store_true", help="a few seconds per run: a smoke run, not a measurement"
    )
    p.add_argument("--gowalla", type=Path, default=bench.GOWALLA, help="Gowalla folder for the bundle")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--connections", type=int, default=16, help="wrk connections, closed loop (default 16)")
    p.add_argument("--overload-connections", type=int, default=256, help="load generator connections at 2x")
    p.add_argument(
        "--lb-maxconn",
        type=int,
        default=8,
        help="HAProxy's maxconn of the replica in overload_lb (default 8: docker/haproxy.cfg's 4 per worker, "
        "for the 2 workers here)",
    )
    p.add_argument(
        "--lb-queue",
        type=int,
        default=24,
        help="HAProxy's queue bound of /recommend in overload_lb (default 24: docker/haproxy.cfg's 12 per "
        "worker, for the 2 workers here)",
    )
    p.add_argument("--rollout-workers", type=int, default=1, help="workers per replica (default 1)")
    p.add_argument("--rollout-users", type=int, default=2000, help="users asked (answers checked exactly)")
    p.add_argument(
        "--poll-s", type=float, default=2.0, help="HASHREC_BUNDLE_POLL_S of the replicas (default 2)"
    )
    p.add_argument("--export-load", type=float, default=0.3, help="online rate as a share of capacity")
    p.add_argument("--export-candidates", type=int, default=500, help="C of the exports (default 500)")
    p.add_argument(
        "--server-cpus",
        help="confine the servers to these CPUs (taskset -c list, e.g. 0) and the clients to the others",
    )
    common.add_out(p)
    args = p.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    if shutil.which("wrk") is None:
        p.error("wrk is not installed (apt-get install -y wrk)")
    if args.server_cpus is not None:
        if "workers" in args.only:
            p.error("--server-cpus does not go with the workers scenario (it compares what cores buy)")
        try:
            args.client_cpus = split_cpus(args.server_cpus)
        except ValueError as err:
            p.error(f"--server-cpus: {err}")
    return args


def split_cpus(server: str) -> set[int]:
    """The CPUs left to the clients when the servers get ``server`` (a taskset list: "0", "0,2", "0-1")."""
    chosen: set[int] = set()
    for part in server.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"not a CPU list: {server!r}")
        chosen.update(range(int(lo), int(hi or lo) + 1))
    mine = os.sched_getaffinity(0)
    if not chosen <= mine:
        raise ValueError(f"CPUs {sorted(chosen - mine)} are not available (available: {sorted(mine)})")
    rest = mine - chosen
    if not rest:
        raise ValueError(f"no CPU left for the clients (available: {sorted(mine)})")
    return rest


def main() -> int:
    args = parse_args()
    common.setup_logging()
    if args.server_cpus is not None:  # before any child: wrk and the load generators inherit it
        os.sched_setaffinity(0, args.client_cpus)
        log.info("servers on CPU(s) %s, clients on %s", args.server_cpus, sorted(args.client_cpus))
    work = Path(tempfile.mkdtemp(prefix="hashrec-bench-limits-"))
    results: dict[str, Any] = {}
    rows: dict[str, list[Row]] = {}
    try:
        bundles, users = bench.gowalla_bundle(args.gowalla, work)
        users_file = work / "users.txt"
        users_file.write_text("\n".join(users) + "\n")
        b = Bench(args, QUICK if args.quick else Durations(), work, bundles, users, users_file)
        for name in args.only:
            log.info("== %s", name)
            results[name], rows[name] = RUNS[name](b)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    flags = (
        (" --quick" if args.quick else "")
        + (f" --only {','.join(args.only)}" if args.only != list(SCENARIOS) else "")
        + (f" --server-cpus {args.server_cpus}" if args.server_cpus is not None else "")
        + (
            f" --lb-maxconn {args.lb_maxconn} --lb-queue {args.lb_queue}"
            if "overload_lb" in args.only
            else ""
        )
    )
    cap = b.capacity_run
    text = (
        f"Bundle: Gowalla-shaped ({len(users):,} users; ids and known interactions of {args.gowalla}, random "
        f"64-bit codes); `GET /recommend/<user>?k={args.k}&candidates={args.candidates}`, uncached unless "
        "the scenario is about the cache; 2 workers per server unless said."
        + (
            f" Servers confined to CPU(s) {args.server_cpus}, clients (wrk, load generators, this script) to"
            f" {','.join(map(str, sorted(args.client_cpus)))}."
            if args.server_cpus is not None
            else " Servers and clients share every CPU."
        )
        + (
            f" Capacity (closed-loop wrk, 2 workers, uncached): {cap['rps']:.0f} req/s, p99 {cap['p99_ms']:.1f} ms."
            if cap
            else ""
        )
        + "\n\n"
        + table(rows, b.logs)
    )
    payload = {
        "settings": {**vars(args), "durations": asdict(b.d)},
        "capacity": cap,
        "results": results,
        "server_logs": b.logs,
    }
    payload["targets"] = {
        n: [{"target": t, "measured": m, "met": ok} for t, m, ok in rs] for n, rs in rows.items()
    }
    common.report(
        "Serving limits (issue 15 targets)",
        text,
        json.loads(json.dumps(payload, default=str)),
        args.out,
        "benchmarks/serving_limits.py" + flags,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
