"""The soak: minutes of steady load at 70% of the capacity measured just before, every answer checked;
reports errors, p99 per window and the server's resident memory over time. Opt-in (``--run-soak``):

    .venv/bin/python -m pytest tests/e2e/test_soak.py --run-soak --soak-minutes 10 --e2e-out /tmp/soak

Steps (:func:`run_soak`): build a bundle of random embeddings (Gowalla-sized by default: 29,858 users x
40,981 items, 64 bits; the work per request depends on the sizes, not on the embeddings' quality) or take
``bundles``; start ``hashrec serve`` (:class:`support.ServerProcess`; Redis cache when ``redis-server`` is
installed, else the in-process cache); warm up with one pass over the sampled users (every answer cached);
measure capacity with a closed loop (32 connections, same request mix; counted over ``capacity_s`` after
one cache TTL, when answers expire and go to the model as they will during the soak); then
an open loop at ``load`` x capacity (or ``rate``) for ``minutes``, sampling every 5 s the server's RSS,
from its ``/metrics`` its own latency histogram of ``GET /recommend``, its garbage-collector pauses and
event loop lag, the machine's CPU time split (``/proc/stat``: busy, iowait, steal) and the CPU time of
the server, Redis and the client. The server inherits the environment, so ``HASHREC_*`` variables apply.

The cache TTL is ``cache_ttl_s`` (20 s; the service's default is 300 s): a stability check needs the same
regime in every window. With the default TTL every answer cached in the warm-up expires together 4-5
minutes in, so the first windows are all cache hits and later ones hold waves of model calls (measured:
0% model answers for three minutes, then 2%); with 20 s each 60 s window holds three expiry cycles (about
15% of the answers from the model, all along), and the model path is soaked too, not only the cache.

The client measures latency from each request's *scheduled* send time, so a stall anywhere (server,
client, kernel, hypervisor) shows as latency. The per-window server-side figures tell them apart: when the
client's p99 jumps but the server's own histogram does not, the time was lost outside the server's request
handling (the client process, the machine's scheduler, or a stolen CPU: see the steal column).

Pass criteria: zero failed or wrong answers; p99 stable (the last minute's p99 within 2x of the
first minute's); RSS growth under 5% from the end of the first minute (caches filling during the first
minute are the intended use of memory, not a leak) to the end.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def run_soak(
    minutes: float,
    load: float = 0.7,
    n_users: int = 29858,
    n_items: int = 40981,
    bits: int = 64,
    sample_users: int = 10000,
    capacity_s: float = 15.0,
    redis: bool = True,
    bundles: Path | None = None,
    workdir: Path | None = None,
    rate: float | None = None,
    workers: int = 2,
    cache_ttl_s: float = 20.0,
) -> dict[str, Any]:
    """Run the soak and return its result (see the module docstring); never raises on a failed criterion.

    ``workers``: uvicorn workers of the server (2, the service's default on this 2-core machine). With more
    than one, a ``/metrics`` scrape reaches one worker at random, so the server-side window figures (which
    need two scrapes of the same counters) are left out.

    ``rate``: offered load in requests/s instead of ``load`` x the measured capacity (capacity is still
    measured and reported), so that runs on a machine whose spare capacity varies compare at equal load.

    ``cache_ttl_s``: the server's ``HASHREC_CACHE_TTL_S`` (see the module docstring).
    """
    from loadgen import LoadSpec, recommend_targets, sources, start_load, window_stats
    from support import RedisProcess, ServerProcess, expected_answers, make_bundle

    work = Path(workdir or tempfile.mkdtemp(prefix="hashrec-soak-"))
    redis_proc = None
    srv = None
    try:
        if bundles is None:
            bundles = work / "bundles"
            make_bundle(bundles, seed=0, bits=bits, n_users=n_users, n_items=n_items, seen_per_user=27)
            users = [f"u{i}" for i in range(0, n_users, max(1, n_users // sample_users))][:sample_users]
        else:
            from hashrec.index.bundle import load_bundle, resolve_bundle_dir

            b = load_bundle(resolve_bundle_dir(bundles))
            raw = [str(u) for u in b.users.raw]
            users = raw[:: max(1, len(raw) // sample_users)][:sample_users]
        version = Path(bundles, "current").resolve().name
        log.info("expected answers for %d users", len(users))
        expected = expected_answers(bundles, [version], users, 20, 500)
        env: dict[str, str] = {"HASHREC_CACHE_TTL_S": str(cache_ttl_s)}
        if redis and shutil.which("redis-server"):
            redis_proc = RedisProcess(work / "redis").start()
            env["HASHREC_REDIS_URL"] = redis_proc.url
        srv = ServerProcess(bundles, work / "server.log", env=env, workers=workers).start()
        targets = recommend_targets(users, k=20)

        log.info("warm-up (every user once) and capacity (%.0f s closed loop, 32 connections)", capacity_s)
        start_load(
            LoadSpec(port=srv.port, targets=targets, duration_s=300, connections=32, count=len(targets))
        ).result()
        # capacity in the soak's regime: past one TTL, so that expiring answers send some requests to
        # the model as they will during the soak (right after the warm-up every answer is cached)
        cap_res = start_load(
            LoadSpec(
                port=srv.port,
                targets=targets,
                duration_s=cache_ttl_s + capacity_s,
                connections=32,
                expected=expected,
            )
        ).result()
        cap_from = cap_res.t0 + cache_ttl_s
        cap_stats = window_stats(cap_res, cap_from, cap_from + capacity_s)
        capacity = (cap_stats["requests"] - cap_stats["failures"]) / capacity_s
        if rate is None:
            rate = load * capacity
        else:
            load = rate / capacity if capacity else 0.0
        duration = minutes * 60.0
        log.info("capacity %.0f answers/s; soak at %.0f req/s for %.1f min", capacity, rate, minutes)

        rss: list[tuple[float, int]] = []
        probes: list[tuple[float, dict[str, int], dict[str, Any] | None]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                now = time.time()
                rss.append((now, srv.rss()))
                cpu = machine_cpu()
                cpu.update(process_cpu(pids()))
                probes.append((now, cpu, server_probe(srv.port) if workers == 1 else None))
                stop.wait(5.0)

        def pids() -> dict[str, int | None]:
            return {
                "server": srv.proc.pid if srv.proc else None,
                "redis": redis_proc.proc.pid if redis_proc and redis_proc.proc else None,
                "client": handle.pid,
            }

        t0 = time.time() + 2.0
        handle = start_load(
            LoadSpec(
                port=srv.port,
                targets=targets,
                duration_s=duration,
                rate=rate,
                connections=64,
                expected=expected,
                start_at=t0,
            )
        )
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        while time.time() < t0 + duration:
            time.sleep(min(60.0, max(0.1, t0 + duration - time.time())))
            log.info("soak: %.0f of %.0f s", min(duration, max(0.0, time.time() - t0)), duration)
        res = handle.result(timeout=duration + 120)
        stop.set()
        sampler.join(10)
        alive = srv.proc is not None and srv.proc.poll() is None
    finally:
        if srv is not None:
            srv.stop()
        if redis_proc is not None:
            redis_proc.stop()
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    total = window_stats(res, t0, t0 + duration)
    step = 60.0 if duration >= 120 else max(5.0, duration / 4)
    windows = []
    t = t0
    while t < t0 + duration - 1e-6:
        w = window_stats(res, t, min(t + step, t0 + duration))
        w["from_s"] = round(t - t0, 1)
        src = sources(res, t, min(t + step, t0 + duration))
        w["model_share"] = round(src.get("model", 0) / max(1, sum(src.values())), 3)
        w.update(probe_window(probes, t, min(t + step, t0 + duration)))
        windows.append(w)
        t += step
    first_p99 = windows[0]["p99_ms"]
    last_p99 = windows[-1]["p99_ms"]
    base_t = t0 + min(60.0, duration / 4)
    base = next((r for ts, r in rss if ts >= base_t), rss[0][1] if rss else 0)
    end_rss = rss[-1][1] if rss else 0
    growth = (end_rss - base) / base if base else None
    checks = {
        "zero failed or wrong answers": total["failures"] == 0,
        "p99 stable (last window within 2x of the first)": bool(
            first_p99 and last_p99 and last_p99 <= 2 * first_p99
        ),
        "RSS growth under 5%": growth is not None and growth < 0.05,
        "server alive at the end": alive,
    }
    return {
        "minutes": minutes,
        "workers": workers,
        "load_fraction": load,
        "bundle": {"users": n_users, "items": n_items, "bits": bits} if bundles is None else str(bundles),
        "cache": "redis (+ near cache)" if env.get("HASHREC_REDIS_URL") else "in-process",
        "capacity_rps": round(capacity, 1),
        "capacity_window": cap_stats,
        "rate_rps": round(rate, 1),
        "total": total,
        "windows": windows,
        "rss_mb": [(round(ts - t0, 1), round(r / 2**20, 1)) for ts, r in rss],
        "rss_base_mb": round(base / 2**20, 1),
        "rss_end_mb": round(end_rss / 2**20, 1),
        "rss_growth": None if growth is None else round(growth, 4),
        "checks": checks,
        "passed": all(checks.values()),
    }


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_RECOMMEND_ROUTE = 'route="/recommend/{user_id}"'


def machine_cpu() -> dict[str, int]:
    """The machine's cumulative CPU time split in clock ticks (``/proc/stat``); empty where unavailable."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return {}
    return {k: int(v) for k, v in zip(_CPU_FIELDS, parts[1:], strict=False)}


def process_cpu(pids: dict[str, int | None]) -> dict[str, int]:
    """Cumulative CPU time (user + system clock ticks) of each named process and everything below it,
    as ``proc_<name>`` keys; a process that is gone (or not started) reads 0."""
    from support.processes import descendants

    out: dict[str, int] = {}
    for name, pid in pids.items():
        ticks = 0
        for p in [pid, *descendants(pid)] if pid else []:
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        out[f"proc_{name}"] = ticks
    return out


def server_probe(port: int) -> dict[str, Any] | None:
    """One scrape of the server's ``/metrics``: ``latency`` (cumulative ``GET /recommend/{user_id}``
    buckets by upper bound, statuses summed), ``loop_lag`` (cumulative event loop lag buckets),
    ``gc_count`` / ``gc_sum`` (collections and seconds in them, by generation); None when the scrape fails.
    """
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    latency: dict[float, float] = {}
    lag: dict[float, float] = {}
    gc_count: dict[str, float] = {}
    gc_sum: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("hashrec_http_request_duration_seconds_bucket{") and _RECOMMEND_ROUTE in line:
            _add_bucket(latency, line)
        elif line.startswith("hashrec_event_loop_lag_seconds_bucket{"):
            _add_bucket(lag, line)
        elif line.startswith(("hashrec_gc_pause_seconds_count{", "hashrec_gc_pause_seconds_sum{")):
            labels, value = line.rsplit(" ", 1)
            gen = labels.split('generation="', 1)[1].split('"', 1)[0]
            target = gc_count if "_count{" in labels else gc_sum
            target[gen] = float(value)
    return {"latency": latency, "loop_lag": lag, "gc_count": gc_count, "gc_sum": gc_sum}


def _add_bucket(out: dict[float, float], line: str) -> None:
    labels, value = line.rsplit(" ", 1)
    le = labels.split('le="', 1)[1].split('"', 1)[0]
    bound = float("inf") if le == "+Inf" else float(le)
    out[bound] = out.get(bound, 0.0) + float(value)


def probe_window(
    probes: list[tuple[float, dict[str, int], dict[str, Any] | None]], t_from: float, t_to: float
) -> dict[str, Any]:
    """Server-side and machine figures between the probes nearest ``t_from`` and ``t_to``.

    ``server_p99_le_ms``: the histogram bucket bound under which 99% of the window's answers were (an upper
    bound of the server's own p99); ``server_over_250ms``: answers the server itself took over 250 ms for;
    ``gc2_collections`` / ``gc_ms``: generation-2 collections and milliseconds spent in collections of any
    generation; ``loop_lag_over_50ms``: event loop ticks that woke more than 50 ms late; ``cpu_*_pct``:
    shares of the machine's CPU time (all cores) that were busy, waiting on I/O, or stolen by the
    hypervisor; ``cpu_<name>_pct``: the share of that same total used by each process tree the probes
    followed (server, Redis, client). Empty when fewer than two probes fall in range.
    """
    inside = [p for p in probes if t_from - 2.5 <= p[0] <= t_to + 2.5]
    if len(inside) < 2:
        return {}
    (_, cpu0, s0), (_, cpu1, s1) = inside[0], inside[-1]
    out: dict[str, Any] = {}
    if cpu0 and cpu1:
        d = {k: cpu1.get(k, 0) - cpu0.get(k, 0) for k in _CPU_FIELDS}
        total = sum(d.values()) or 1
        out["cpu_busy_pct"] = round(100.0 * (total - d["idle"] - d["iowait"]) / total, 1)
        out["cpu_iowait_pct"] = round(100.0 * d["iowait"] / total, 2)
        out["cpu_steal_pct"] = round(100.0 * d["steal"] / total, 2)
        for key in sorted(k for k in cpu1 if k.startswith("proc_")):
            # percent of the whole machine, like cpu_busy_pct: the split of the busy time among processes
            out[f"cpu_{key[5:]}_pct"] = round(100.0 * (cpu1[key] - cpu0.get(key, 0)) / total, 1)
    if s0 is None or s1 is None:
        return out
    h0, h1 = s0["latency"], s1["latency"]
    if h1:
        bounds = sorted(h1)
        diff = [h1[b] - h0.get(b, 0.0) for b in bounds]
        n = diff[-1]
        if n > 0:
            le = next(b for b, c in zip(bounds, diff, strict=True) if c >= 0.99 * n)
            out["server_p99_le_ms"] = None if le == float("inf") else round(1000.0 * le, 1)
            below = dict(zip(bounds, diff, strict=True)).get(0.25)
            out["server_over_250ms"] = None if below is None else int(n - below)
    if s1["gc_count"]:
        out["gc2_collections"] = int(s1["gc_count"].get("2", 0.0) - s0["gc_count"].get("2", 0.0))
        out["gc_ms"] = round(1000.0 * (sum(s1["gc_sum"].values()) - sum(s0["gc_sum"].values())), 1)
    l0, l1 = s0["loop_lag"], s1["loop_lag"]
    if l1 and 0.05 in l1:
        inf = float("inf")
        out["loop_lag_over_50ms"] = int((l1[inf] - l1[0.05]) - (l0.get(inf, 0.0) - l0.get(0.05, 0.0)))
    return out


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def markdown(r: dict[str, Any]) -> str:
    """The soak table, then one row per window."""
    from support.report import md_table

    t = r["total"]
    head = md_table(
        [
            "scenario",
            "load",
            "requests",
            "failures",
            "p99 first window (ms)",
            "p99 last window (ms)",
            "p99 overall (ms)",
            "RSS base -> end (MiB)",
            "RSS growth",
            "data lost",
            "checks",
        ],
        [
            [
                f"soak {r['minutes']:g} min",
                f"{r['rate_rps']:.0f} req/s open loop = {r['load_fraction']:.0%} of {r['capacity_rps']:.0f}/s measured",
                t["requests"],
                t["failures"],
                _f(r["windows"][0]["p99_ms"]),
                _f(r["windows"][-1]["p99_ms"]),
                _f(t["p99_ms"]),
                f"{r['rss_base_mb']} -> {r['rss_end_mb']}",
                f"{100 * r['rss_growth']:.2f}%" if r["rss_growth"] is not None else "n/a",
                "none" if t["failures"] == 0 else "see failures",
                "pass" if r["passed"] else "FAIL: " + ", ".join(k for k, v in r["checks"].items() if not v),
            ]
        ],
    )
    per = md_table(
        [
            "window from (s)",
            "requests",
            "failures",
            "p50 (ms)",
            "p95 (ms)",
            "p99 (ms)",
            "req/s",
            "server p99 <= (ms)",
            "server answers > 250 ms",
            "GC gen-2 runs / GC ms",
            "loop lag > 50 ms",
            "CPU busy / iowait / steal (%)",
            "CPU server / Redis / client (%)",
            "model answers",
        ],
        [
            [
                _f(w["from_s"]),
                w["requests"],
                w["failures"],
                _f(w["p50_ms"]),
                _f(w["p95_ms"]),
                _f(w["p99_ms"]),
                _f(w["rps"]),
                _f(w.get("server_p99_le_ms")),
                "n/a" if w.get("server_over_250ms") is None else w["server_over_250ms"],
                "n/a" if w.get("gc_ms") is None else f"{w['gc2_collections']} / {w['gc_ms']:.0f}",
                "n/a" if w.get("loop_lag_over_50ms") is None else w["loop_lag_over_50ms"],
                "n/a"
                if w.get("cpu_busy_pct") is None
                else f"{w['cpu_busy_pct']:.0f} / {w['cpu_iowait_pct']:.1f} / {w['cpu_steal_pct']:.1f}",
                "n/a"
                if w.get("cpu_server_pct") is None
                else f"{w['cpu_server_pct']:.0f} / {w['cpu_redis_pct']:.0f} / {w['cpu_client_pct']:.0f}",
                f"{w['model_share']:.1%}",
            ]
            for w in r["windows"]
        ],
    )
    return (
        f"Bundle: {r['bundle']}; cache: {r['cache']}; every answer checked against the Retriever.\n\n"
        + head
        + "\n\nPer window:\n\n"
        + per
    )
