"""How much of its own framework floor does the HTTP service deliver, uncached and cached, and what do more
worker processes buy?

    .venv/bin/python benchmarks/service.py                           # a few minutes
    .venv/bin/python benchmarks/service.py --quick                   # seconds per run: a smoke run
    .venv/bin/python benchmarks/service.py --workers 2 --out /tmp/service.json
    .venv/bin/python benchmarks/service.py --compare-workers 1,2     # both worker counts, alternating

What runs: real ``hashrec serve`` processes (``support.ServerProcess``) on loopback and ``wrk`` (Debian
package ``wrk``) as the load generator in another process. Each server is measured on its own trivial
endpoint (``GET /livez``: the floor, same middleware, logging and metrics as every route) and on
``GET /recommend/{user}``, floor and target alternating so that machine noise hits both; figures are
medians over the repeats, ratios medians of the pairs. Server CPU per request (user + system time of the
server's processes over a run / the requests it served) hardly moves when other work shares the cores,
unlike req/s.

Default run, one server per case:

- **uncached** (``HASHREC_CACHE=none``): wrk picks users at random from all of them; plus a paced run at
  80% of the uncached throughput (p99 at a load the server sustains) and one long run counting errors;
- **cached, memory** (the in-process LRU) and **cached, Redis** (a private ``redis-server``, with the
  default near cache and without it): a set of 2,000 users is warmed first, so every answer is a hit.

``--compare-workers 1,2``: one uncached server per worker count, started together and measured in turns
(floor and target on each, round after round); reports each count's throughput against the first's and
the server CPU per request.

The bundle: Gowalla-shaped, the ids and known interactions of ``--gowalla`` (29,858 users x 40,981 items)
with random 64-bit codes and vectors (``support.make_bundle``): serving cost depends on the shapes, not the
values. ``--bundles DIR`` serves a given bundles directory instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common
from support import RedisProcess, ServerProcess, make_bundle

log = logging.getLogger("benchmarks.service")

GOWALLA = common.DATA / "gowalla"
PACED_CONNECTIONS = 64

_SUMMARY = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "mean_us": %f, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean, latency.max))
end
"""

# users from a file, at random per thread or in turn (a warm set); exponential think times when paced
_RECOMMEND = r"""
local users = {}
for line in io.lines("%(users)s") do users[#users + 1] = line end
local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(tid * 7919)
end
function request()
  local u
  if %(in_turn)s then
    counter = counter + 1
    u = users[(counter + tid * 9973) %% #users + 1]
  else
    u = users[math.random(#users)]
  end
  return wrk.format("GET", "/recommend/" .. u .. "%(query)s")
end
"""

_PACED = r"""
function delay()
  return -math.log(1 - math.random()) * %(delay_ms).3f
end
"""


def script(work: Path, name: str, *parts: str) -> Path:
    """Write a wrk Lua script of ``parts`` (always ending with the JSON summary); returns its path."""
    path = work / f"{name}.lua"
    path.write_text("\n".join([*parts, _SUMMARY]))
    return path


def recommend_script(
    work: Path, name: str, users: Path, query: str, in_turn: bool, delay_ms: float = 0.0
) -> Path:
    """``GET /recommend/<user><query>`` over the users of ``users``; paced when ``delay_ms`` > 0."""
    body = _RECOMMEND % {"users": users, "query": query, "in_turn": "true" if in_turn else "false"}
    return script(work, name, body, _PACED % {"delay_ms": delay_ms} if delay_ms > 0 else "")


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system, all threads) the processes have used so far (``/proc/<pid>/stat``)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def wrk(srv: ServerProcess, lua: Path, seconds: float, connections: int, path: str = "/") -> dict[str, Any]:
    """One wrk run (1 thread) against ``srv``: req/s, latencies (ms), errors, server CPU us per request."""
    pids = sorted({srv.pid, *srv.worker_pids()})
    cpu0 = cpu_seconds(pids)
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(lua),
    ]
    proc = subprocess.run([*cmd, srv.url + path], capture_output=True, text=True, timeout=seconds + 60)
    cpu = cpu_seconds(pids) - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()}")
    raw = json.loads(next(ln for ln in reversed(proc.stderr.splitlines()) if ln.startswith("{")))
    n, secs = raw["requests"], raw["duration_us"] / 1e6
    return {
        "requests": n,
        "seconds": secs,
        "rps": n / secs,
        **{f"{q}_ms": raw[f"{q}_us"] / 1000 for q in ("p50", "p95", "p99", "max")},
        "errors": sum(raw[k] for k in ("connect", "read", "write", "status", "timeout")),
        "non_2xx": raw["status"],
        "cpu_us_per_request": cpu / n * 1e6 if n else None,
    }


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of req/s, latencies and CPU per request over runs; errors and requests summed."""
    out: dict[str, Any] = {
        k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p95_ms", "p99_ms")
    }
    cpu = [r["cpu_us_per_request"] for r in runs if r["cpu_us_per_request"] is not None]
    out["cpu_us_per_request"] = statistics.median(cpu) if cpu else None
    out["errors"] = sum(r["errors"] for r in runs)
    out["requests"] = sum(r["requests"] for r in runs)
    return out


def floor_vs_target(
    srv: ServerProcess, floor: Path, target: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Floor and target in turns, ``args.repeats`` times: medians, the req/s ratio and the CPU ratio."""
    floors, targets = [], []
    for _ in range(args.repeats):
        floors.append(wrk(srv, floor, args.seconds, args.connections, "/livez"))
        targets.append(wrk(srv, target, args.seconds, args.connections))
    pairs = list(zip(floors, targets, strict=True))
    cpu = [
        t["cpu_us_per_request"] / f["cpu_us_per_request"]
        for f, t in pairs
        if f["cpu_us_per_request"] and t["cpu_us_per_request"]
    ]
    return {
        "floor": median_row(floors),
        "recommend": median_row(targets),
        "ratio": statistics.median(t["rps"] / f["rps"] for f, t in pairs),
        "cpu_ratio": statistics.median(cpu) if cpu else None,
    }


def hit_fraction(srv: ServerProcess, users: list[str], query: str) -> float:
    """Fraction of ``users`` answered from the cache now (proves a cached case was cached)."""
    import httpx

    with httpx.Client(base_url=srv.url, timeout=30) as c:
        return sum(c.get(f"/recommend/{u}{query}").json()["source"] == "cache" for u in users) / len(users)


@contextlib.contextmanager
def serving(
    bundles: Path, work: Path, name: str, workers: int, cpus: str | None = None, **env: str
) -> Iterator[ServerProcess]:
    """A ``hashrec serve`` of ``workers`` processes, access log on (as deployed), stopped on exit; ``cpus``
    confines it to those CPUs (``taskset -c`` list)."""
    env = {"HASHREC_MAX_CANDIDATES": "5000", **env}
    server = ServerProcess(bundles, work / f"{name}.log", env=env, workers=workers, cpus=cpus)
    with server.start(timeout=180) as srv:
        yield srv


@contextlib.contextmanager
def redis(work: Path, name: str) -> Iterator[RedisProcess]:
    """A private redis-server, killed on exit."""
    rds = RedisProcess(work / name).start()
    try:
        yield rds
    finally:
        rds.stop()


def default_run(
    args: argparse.Namespace, bundles: Path, work: Path, users: Path, warm: list[str]
) -> dict[str, Any]:
    """Uncached (with a paced and a long run), cached in memory, cached in Redis with and without the near
    cache."""
    query = f"?k={args.k}&candidates={args.candidates}"
    floor = script(work, "floor", "")
    uncached = recommend_script(work, "uncached", users, query, in_turn=False)
    warm_file = work / "warm.txt"
    warm_file.write_text("\n".join(warm) + "\n")
    cached = recommend_script(work, "cached", warm_file, query, in_turn=True)
    out: dict[str, Any] = {}
    with serving(bundles, work, "uncached", args.workers, HASHREC_CACHE="none") as srv:
        log.info("uncached: floor vs /recommend, %d x %.0f s", args.repeats, args.seconds)
        out["uncached"] = floor_vs_target(srv, floor, uncached, args)
        rate = 0.8 * out["uncached"]["recommend"]["rps"]
        paced = recommend_script(work, "paced", users, query, False, delay_ms=PACED_CONNECTIONS / rate * 1000)
        log.info("paced at %.0f req/s (80%% of uncached)", rate)
        out["paced_80"] = {"target_rps": rate, **wrk(srv, paced, args.seconds, PACED_CONNECTIONS)}
        log.info("long uncached run: %.0f s", args.long_seconds)
        out["long"] = wrk(srv, uncached, args.long_seconds, args.connections)
    cases: list[tuple[str, dict[str, str], bool]] = [
        ("cached_memory", {"HASHREC_CACHE": "memory"}, False),
        ("cached_redis", {}, True),
        ("cached_redis_only", {"HASHREC_NEAR_CACHE_BYTES": "0"}, True),
    ]
    for key, env, with_redis in cases:
        with contextlib.ExitStack() as stack:
            if with_redis:
                env = {**env, "HASHREC_REDIS_URL": stack.enter_context(redis(work, key)).url}
            srv = stack.enter_context(serving(bundles, work, key, args.workers, **env))
            log.info("%s: warm-up, then floor vs /recommend", key)
            wrk(srv, cached, 2, args.connections)  # every warm user answered once: cached from now on
            out[key] = {
                **floor_vs_target(srv, floor, cached, args),
                "hits": hit_fraction(srv, warm[:50], query),
            }
    return out


def compare_workers(args: argparse.Namespace, bundles: Path, work: Path, users: Path) -> dict[str, Any]:
    """One uncached server per worker count, all up at once, measured in turns (floor and target each)."""
    query = f"?k={args.k}&candidates={args.candidates}"
    floor = script(work, "floor", "")
    target = recommend_script(work, "uncached", users, query, in_turn=False)
    counts = args.compare_workers
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {n: {"floor": [], "recommend": []} for n in counts}
    with contextlib.ExitStack() as stack:
        servers = {
            n: stack.enter_context(serving(bundles, work, f"workers{n}", n, HASHREC_CACHE="none"))
            for n in counts
        }
        for rep in range(args.repeats):
            order = counts[rep % len(counts) :] + counts[: rep % len(counts)]  # rotated each round
            for n in order:
                log.info("round %d/%d: %d worker(s)", rep + 1, args.repeats, n)
                runs[n]["floor"].append(wrk(servers[n], floor, args.seconds, args.connections, "/livez"))
                runs[n]["recommend"].append(wrk(servers[n], target, args.seconds, args.connections))
    base = counts[0]
    out: dict[str, Any] = {}
    for n in counts:
        ratios = [
            t["rps"] / b["rps"] for t, b in zip(runs[n]["recommend"], runs[base]["recommend"], strict=True)
        ]
        out[str(n)] = {
            "floor": median_row(runs[n]["floor"]),
            "recommend": median_row(runs[n]["recommend"]),
            "rps_ratio_vs_first": statistics.median(ratios),
        }
    return out


def _row(label: str, r: dict[str, Any]) -> list[Any]:
    cpu = r.get("cpu_us_per_request")
    return [
        label,
        f"{r['rps']:.0f}",
        f"{r['p50_ms']:.2f}",
        f"{r['p99_ms']:.2f}",
        "-" if cpu is None else f"{cpu:.0f}",
        r["errors"],
        f"{r['requests']:,}",
    ]


HEADERS = ["run", "req/s", "p50 ms", "p99 ms", "server CPU us/req", "errors", "requests"]


def default_table(res: dict[str, Any]) -> str:
    """Floor and target per case, the paced and long runs, then the ratios."""
    rows = []
    labels = {
        "uncached": "uncached",
        "cached_memory": "cached, in-process LRU",
        "cached_redis": "cached, Redis + near cache (default)",
        "cached_redis_only": "cached, Redis only",
    }
    for key, label in labels.items():
        rows.append(_row(f"floor `GET /livez` ({label} server)", res[key]["floor"]))
        rows.append(_row(f"`GET /recommend` ({label})", res[key]["recommend"]))
    p = res["paced_80"]
    rows.append(_row(f"`GET /recommend` uncached, paced at {p['target_rps']:.0f} req/s (80%)", p))
    rows.append(_row(f"`GET /recommend` uncached, one {res['long']['seconds']:.0f} s run", res["long"]))
    ratios = [
        [
            labels[k],
            f"{res[k]['ratio']:.0%}",
            "-" if res[k]["cpu_ratio"] is None else f"{res[k]['cpu_ratio']:.2f}",
            f"{res[k].get('hits', 0):.0%}" if "hits" in res[k] else "-",
        ]
        for k in labels
    ]
    return (
        common.md_table(HEADERS, rows)
        + "\n\n"
        + common.md_table(["case", "req/s of the floor", "CPU/req vs floor", "cache hits"], ratios)
    )


def compare_table(res: dict[str, Any]) -> str:
    """Per worker count: floor and target, the throughput against the first count."""
    rows = []
    for n, r in res.items():
        rows.append([*_row(f"{n} worker(s): floor `GET /livez`", r["floor"]), ""])
        rows.append(
            [
                *_row(f"{n} worker(s): `GET /recommend` uncached", r["recommend"]),
                f"{r['rps_ratio_vs_first']:.2f}x",
            ]
        )
    return common.md_table([*HEADERS, "req/s vs first"], rows)


def gowalla_bundle(folder: Path, work: Path) -> tuple[Path, list[str]]:
    """Gowalla's ids and known interactions, random 64-bit codes and vectors; (bundles, user ids)."""
    from hashrec.data import load_dataset

    ds = load_dataset(folder)
    bundles = work / "bundles"
    make_bundle(bundles, ds, seed=0, bits=64)
    return bundles, [str(u) for u in ds.users.raw]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--bundles", type=Path, default=None, help="serve this bundles directory (default: Gowalla-shaped)"
    )
    p.add_argument("--gowalla", type=Path, default=GOWALLA, help="Gowalla folder for the default bundle")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes per server (default 1)")
    p.add_argument(
        "--compare-workers", default=None, help="comma-separated worker counts to measure in turns, e.g. 1,2"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per wrk run (default 10)")
    p.add_argument(
        "--long-seconds", type=float, default=60.0, help="the error-counting uncached run (default 60)"
    )
    p.add_argument("--repeats", type=int, default=3, help="alternating floor/target pairs (default 3)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections, closed loop (default 16)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--quick", action="store_true", help="2 s runs, 1 repeat: a smoke run, not a measurement")
    common.add_out(p)
    args = p.parse_args()
    common.setup_logging()
    if shutil.which("wrk") is None:
        p.error("wrk is not installed (apt-get install -y wrk)")
    if args.quick:
        args.seconds, args.long_seconds, args.repeats = 2.0, 3.0, 1
    if args.compare_workers:
        args.compare_workers = [int(x) for x in args.compare_workers.split(",") if x.strip()]
        if len(args.compare_workers) < 2 or min(args.compare_workers) < 1:
            p.error("--compare-workers needs two or more worker counts >= 1, e.g. 1,2")
    work = Path(tempfile.mkdtemp(prefix="hashrec-bench-service-"))
    try:
        if args.bundles is None:
            bundles, user_ids = gowalla_bundle(args.gowalla, work)
            provenance = f"Gowalla-shaped: ids and known interactions of {args.gowalla}, random 64-bit codes"
        else:
            from hashrec.index.bundle import load_bundle

            bundles, provenance = args.bundles, str(args.bundles)
            user_ids = [str(u) for u in load_bundle(bundles).users.raw]
        users = work / "users.txt"
        users.write_text("\n".join(user_ids) + "\n")
        settings = {
            k: getattr(args, k)
            for k in (
                "workers",
                "seconds",
                "long_seconds",
                "repeats",
                "connections",
                "k",
                "candidates",
                "quick",
            )
        }
        payload: dict[str, Any] = {"bundle": provenance, "users": len(user_ids), "settings": settings}
        if args.compare_workers:
            payload["compare_workers"] = compare_workers(args, bundles, work, users)
            table, title = compare_table(payload["compare_workers"]), "Service: worker processes compared"
        else:
            payload["results"] = default_run(args, bundles, work, users, user_ids[:2000])
            table, title = (
                default_table(payload["results"]),
                f"Service against its floor ({args.workers} worker(s))",
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    flags = " --quick" if args.quick else ""
    flags += (
        f" --compare-workers {','.join(map(str, args.compare_workers))}"
        if args.compare_workers
        else f" --workers {args.workers}"
    )
    common.report(
        title, f"Bundle: {provenance}.\n\n" + table, payload, args.out, "benchmarks/service.py" + flags
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
