"""SCRATCH: what each "bypass of the framework" in the service is worth, measured side by side.

    .venv/bin/python bypass_bench.py [--groups shadow,http,json,batcher,gc,near,refresh] [--rounds 3]
                                     [--seconds 10] [--out /work/main-results]

Per group: one server per variant (all started up front, all on the same bundle), then
  - throughput: `rounds` rounds of closed-loop wrk (16 connections, 1 thread), one run per variant per round,
    the order rotated each round (A B, B A, A B, ...);
  - p99 at a fixed paced load: the same offered rate for every variant (70% of the slowest variant's median
    closed-loop req/s), 64 connections with exponential think times (bench/service.py's pacing, its delay
    calibrated per server by a 2 s run), again `rounds` rotated rounds;
  - server CPU us/request from /proc/<pid>/stat over every run.
Ratios are per round (variant vs the group's base = the code as committed), medians over the rounds.
Uncached groups: HASHREC_CACHE=none, random users over all users. Cached groups: a private redis-server per
server, the 2000-user warm set cycled sequentially (as bench/service.py), cache hit/miss counters from
/metrics per run.

Scratch toggles (in this worktree only): HASHREC_X_NO_SHADOW, HASHREC_X_HTTP, HASHREC_X_PLAIN_JSON,
HASHREC_X_NO_BATCHER; the rest are real settings.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from hashrec.bench.server_process import RedisProcess
from hashrec.bench.service import _script, _Server, _wrk

HERE = Path(__file__).resolve().parent
BUNDLES = HERE / "bundles-gowalla"
K, C = 20, 500
QUERY = f"?k={K}&candidates={C}"
CONNS = 16
PACED_CONNS = 64
PACED_FRACTION = 0.7
GAIN = 1.10

COMMON = {"HASHREC_COMPUTE_THREADS": "2", "HASHREC_MAX_CANDIDATES": "5000", "HASHREC_ACCESS_LOG": "true"}

# group -> (description, kind, [(variant name, env)]): the first variant is the committed code ("with")
GROUPS: dict[str, tuple[str, str, list[tuple[str, dict[str, str]]]]] = {
    "shadow": (
        "1. shadow Starlette route for GET /recommend/{user_id}",
        "uncached",
        [("with", {}), ("without (FastAPI APIRoute)", {"HASHREC_X_NO_SHADOW": "1"})],
    ),
    "http": (
        "2. HardenedHttpToolsProtocol",
        "uncached",
        [
            ("with (hardened httptools)", {"HASHREC_X_HTTP": "hardened"}),
            ('without: http="httptools"', {"HASHREC_X_HTTP": "httptools"}),
            ('without: http="h11" + h11_max_incomplete_event_size', {"HASHREC_X_HTTP": "h11"}),
        ],
    ),
    "json": (
        "3. hand-built JSON bytes",
        "uncached",
        [("with", {}), ("without (dict + json.dumps)", {"HASHREC_X_PLAIN_JSON": "1"})],
    ),
    "batcher": (
        "4. inline micro-batcher",
        "uncached",
        [
            ("with (batcher, inline_users=16)", {}),
            ("without: batcher, HASHREC_INLINE_USERS=0", {"HASHREC_INLINE_USERS": "0"}),
            ("without: no batcher (run_in_executor per request)", {"HASHREC_X_NO_BATCHER": "1"}),
        ],
    ),
    "gc": (
        "5. gc.freeze at start-up",
        "uncached",
        [("with", {}), ("without (HASHREC_GC_FREEZE=false)", {"HASHREC_GC_FREEZE": "false"})],
    ),
    "near": (
        "6. near cache in front of Redis",
        "redis",
        [("with (10,000 entries)", {}), ("without (HASHREC_NEAR_CACHE_SIZE=0)", {"HASHREC_NEAR_CACHE_SIZE": "0"})],
    ),
    "refresh": (
        "7. refresh-ahead (Redis, TTL 5 s)",
        "redis-ttl5",
        [("with (0.1)", {}), ("without (HASHREC_CACHE_REFRESH_AHEAD=0)", {"HASHREC_CACHE_REFRESH_AHEAD": "0"})],
    ),
}

_METRIC_RE = re.compile(
    r"^(hashrec_cache_requests_total|hashrec_cache_refreshes_total|hashrec_model_batch_users_(?:count|sum)"
    r")(\{[^}]*\})? ([0-9.e+-]+)$"
)


def scrape(url: str) -> dict[str, float]:
    """The counters this bench reads from /metrics (cache results, refreshes, batch sizes, statuses)."""
    try:
        text = httpx.get(url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC_RE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def answers(url: str, users: list[str]) -> list[dict[str, Any]]:
    """The answers for ``users`` (``source`` dropped: cache vs model is not content)."""
    out = []
    with httpx.Client(base_url=url, timeout=10) as c:
        for u in users:
            r = c.get(f"/recommend/{u}{QUERY}")
            body = r.json()
            if r.status_code == 200:
                body.pop("source", None)
            out.append({"status": r.status_code, "body": body})
    return out


def cache_counts(m: dict[str, float]) -> str:
    hit = sum(v for k, v in m.items() if 'op="get"' in k and 'result="hit"' in k)
    miss = sum(v for k, v in m.items() if 'op="get"' in k and 'result="miss"' in k)
    ref = sum(v for k, v in m.items() if k.startswith("hashrec_cache_refreshes_total"))
    return f"  cache hit {hit:.0f} miss {miss:.0f} refresh {ref:.0f}" if hit or miss else ""


def measured_run(srv: _Server, script: Path, seconds: float, conns: int, prewarm: Path | None) -> dict[str, Any]:
    if prewarm is not None:  # cached groups: bring this server's cache to steady state first (unmeasured)
        _wrk(srv.url, 2, CONNS, prewarm)
    before = scrape(srv.url)
    la = loadavg()
    res = _wrk(srv.url, seconds, conns, script, pid=srv.pid)
    res["metrics"] = delta(scrape(srv.url), before)
    res["loadavg_before"] = la
    return res


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def run_group(name: str, work: Path, users_file: Path, warm_file: Path, check_users: list[str],
              rounds: int, seconds: float) -> dict[str, Any]:
    desc, kind, variants = GROUPS[name]
    print(f"\n=== {desc}: {[v for v, _ in variants]}", flush=True)
    t_start = time.time()
    cached = kind != "uncached"
    users = warm_file if cached else users_file
    closed = _script(work, f"{name}-closed", users, QUERY, sequential=cached)
    prewarm = closed if kind == "redis-ttl5" else None
    result: dict[str, Any] = {"description": desc, "kind": kind, "variants": [v for v, _ in variants], "errors": []}
    with contextlib.ExitStack() as stack:
        servers: list[_Server] = []
        for i, (vname, venv) in enumerate(variants):
            env = dict(COMMON)
            if cached:
                rds = RedisProcess(work / f"redis-{name}-{i}").start()
                stack.callback(rds.stop)
                env.update({"HASHREC_CACHE": "redis", "HASHREC_REDIS_URL": rds.url})
                if kind == "redis-ttl5":
                    env["HASHREC_CACHE_TTL_S"] = "5"
            else:
                env["HASHREC_CACHE"] = "none"
            env.update(venv)
            try:
                srv = stack.enter_context(_Server(BUNDLES, work, f"{name}-{i}", **env))
            except Exception as err:  # a variant that does not start is reported, not hidden
                result["errors"].append(f"{vname}: server did not start: {err}")
                print(f"!! {vname}: {err}", flush=True)
                log_path = work / f"server-{name}-{i}.log"
                if log_path.exists():
                    result["errors"].append(log_path.read_text(errors="replace")[-3000:])
                return result
            servers.append(srv)
        result["env"] = [dict(v) for _, v in variants]
        # same answers from every variant (content, not bytes)
        ref = answers(servers[0].url, check_users)
        result["same_answers"] = []
        for (vname, _), srv in zip(variants, servers, strict=True):
            got = answers(srv.url, check_users)
            same = got == ref
            result["same_answers"].append(same)
            if not same:
                result["errors"].append(f"{vname}: answers differ from {variants[0][0]}")
        # warm-up (JIT-free Python, but caches, allocator, connections): 3 s each
        for srv in servers:
            _wrk(srv.url, 3, CONNS, closed)
        n = len(variants)
        thr: list[list[dict[str, Any]]] = [[] for _ in variants]
        for r in range(rounds):
            for j in range(n):
                i = (j + r) % n
                res = measured_run(servers[i], closed, seconds, CONNS, prewarm)
                thr[i].append(res)
                print(f"  thr r{r} {variants[i][0][:40]:40s} {res['rps']:7.0f} req/s  p99 {res['p99_ms']:6.2f} ms"
                      f"  cpu {res['cpu_us_per_request'] or 0:6.0f} us/req  err {res['errors']}"
                      + cache_counts(res["metrics"]), flush=True)
        max_rps = [med([x["rps"] for x in runs]) for runs in thr]
        rate = PACED_FRACTION * min(max_rps)
        delay0 = PACED_CONNS / rate * 1000
        paced_scripts = []
        for i, srv in enumerate(servers):
            # per-connection rate = 1 / (delay + time per request): the time per request is read from the
            # rate a calibration run achieved at delay0 (after the same pre-warm as the measured runs)
            if prewarm is not None:
                _wrk(srv.url, 2, CONNS, prewarm)
            cal = _wrk(srv.url, 3, PACED_CONNS, _script(work, f"{name}-{i}-cal", users, QUERY,
                                                        sequential=cached, delay_ms=delay0))
            per_req_ms = max(0.0, PACED_CONNS / cal["rps"] * 1000 - delay0)
            d = max(0.0, delay0 - per_req_ms)
            paced_scripts.append(_script(work, f"{name}-{i}-paced", users, QUERY, sequential=cached, delay_ms=d))
        paced: list[list[dict[str, Any]]] = [[] for _ in variants]
        for r in range(rounds):
            for j in range(n):
                i = (j + r) % n
                res = measured_run(servers[i], paced_scripts[i], seconds, PACED_CONNS, prewarm)
                paced[i].append(res)
                print(f"  p99 r{r} {variants[i][0][:40]:40s} {res['rps']:7.0f}/{rate:.0f} req/s  p99 {res['p99_ms']:6.2f} ms"
                      f"  cpu {res['cpu_us_per_request'] or 0:6.0f} us/req  err {res['errors']}"
                      + cache_counts(res["metrics"]), flush=True)
    base = 0
    summary = []
    for i, (vname, _) in enumerate(variants):
        rps_ratio = [b["rps"] / v["rps"] for b, v in zip(thr[base], thr[i], strict=True)]
        p99_ratio = [v["p99_ms"] / b["p99_ms"] for b, v in zip(paced[base], paced[i], strict=True)]
        cpu_ratio = [v["cpu_us_per_request"] / b["cpu_us_per_request"]
                     for b, v in zip(thr[base], thr[i], strict=True)
                     if b["cpu_us_per_request"] and v["cpu_us_per_request"]]
        summary.append({
            "variant": vname,
            "rps": med([x["rps"] for x in thr[i]]),
            "closed_p99_ms": med([x["p99_ms"] for x in thr[i]]),
            "cpu_us_per_request": med([x["cpu_us_per_request"] for x in thr[i]]),
            "paced_target_rps": rate,
            "paced_achieved_rps": med([x["rps"] for x in paced[i]]),
            "paced_p50_ms": med([x["p50_ms"] for x in paced[i]]),
            "paced_p99_ms": med([x["p99_ms"] for x in paced[i]]),
            "paced_cpu_us_per_request": med([x["cpu_us_per_request"] for x in paced[i]]),
            # with / without: > 1 means the bypass (the base) is better
            "rps_ratio_with_over_without": med(rps_ratio),
            "rps_ratio_pairs": rps_ratio,
            "p99_ratio_without_over_with": med(p99_ratio),
            "p99_ratio_pairs": p99_ratio,
            "cpu_ratio_without_over_with": med(cpu_ratio),
            "cpu_ratio_pairs": cpu_ratio,
            "errors": sum(x["errors"] for x in thr[i] + paced[i]),
            "requests": sum(x["requests"] for x in thr[i] + paced[i]),
        })
    result.update({"rounds": rounds, "seconds": seconds, "summary": summary,
                   "runs": {"closed": thr, "paced": paced}, "wall_s": time.time() - t_start})
    return result


def machine() -> dict[str, Any]:
    model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((ln.split(":", 1)[1].strip() for ln in model.splitlines() if ln.startswith("Model name")), "?")
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"cpu": name, "nproc": os.cpu_count(), "python": sys.version.split()[0], "commit": commit,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def verdict(s: dict[str, Any]) -> str:
    r, p = s["rps_ratio_with_over_without"], s["p99_ratio_without_over_with"]
    if (r or 0) >= GAIN or (p or 0) >= GAIN:
        why = [f"req/s x{r:.2f}" if r >= GAIN else None, f"p99 x{p:.2f}" if p >= GAIN else None]
        return "keep (" + ", ".join(w for w in why if w) + ")"
    return f"remove (req/s x{r:.2f}, p99 x{p:.2f}: < 10% gain)"


def rng(xs: list[float]) -> str:
    return f"[{min(xs):.2f}-{max(xs):.2f}]" if xs else ""


def render(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    lines = [
        "# Bypass benchmark (before)",
        "",
        f"{m['date']}, commit {m['commit'][:10]}, {m['cpu']} (nproc {m['nproc']}, shared, noisy), Python {m['python']}.",
        f"Bundle: Gowalla ({payload['shape']}), SVD-64 embeddings, 64 bits, flat index; k = {K}, C = {C}.",
        f"One uvicorn worker, HASHREC_COMPUTE_THREADS=2, access log on. wrk 1 thread: closed loop {CONNS}"
        f" connections for req/s; p99 at a fixed paced load ({PACED_CONNS} connections, exponential think"
        f" times) = {PACED_FRACTION:.0%} of the slowest variant's req/s, the same offered rate for with and"
        f" without. {payload['rounds']} rotated rounds of {payload['seconds']:.0f} s per variant and phase;"
        " medians. Ratios are medians of per-round ratios; req/s ratio = with/without, p99 and CPU ratios ="
        " without/with (> 1: the bypass helps); [min-max] over the pairs. Verdict: keep if req/s or p99 ratio"
        " >= 1.10. Closed-loop p99 (16 connections, saturated) is shown for information.",
        "Uncached (HASHREC_CACHE=none, random users over all 29,858) for 1-5; Redis (private redis-server per"
        " server, 2,000-user warm set cycled) for 6-7; 7 with HASHREC_CACHE_TTL_S=5 and a 2 s unmeasured warm-up"
        " before every run.",
        "",
        "| bypass | without = | req/s with | req/s without | req/s ratio | paced rate (achieved with / without) |"
        " p99 ms with | p99 ms without | p99 ratio | CPU us/req with / without | CPU ratio |"
        " closed-loop p99 ms with / without | pairs | errors | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in payload["groups"].values():
        if "summary" not in g:
            lines.append(f"| {g['description']} | - | failed: {'; '.join(g['errors'])[:300]} |" + " |" * 12)
            continue
        b = g["summary"][0]
        for s in g["summary"][1:]:
            errs = f"{b['errors']} / {s['errors']}"
            same = "" if all(g["same_answers"]) else " (ANSWERS DIFFER)"
            lines.append(
                f"| {g['description']} | {s['variant']} | {b['rps']:.0f} | {s['rps']:.0f} |"
                f" {s['rps_ratio_with_over_without']:.2f} {rng(s['rps_ratio_pairs'])} |"
                f" {b['paced_target_rps']:.0f} ({b['paced_achieved_rps']:.0f} / {s['paced_achieved_rps']:.0f}) |"
                f" {b['paced_p99_ms']:.2f} | {s['paced_p99_ms']:.2f} | {s['p99_ratio_without_over_with']:.2f} {rng(s['p99_ratio_pairs'])} |"
                f" {b['cpu_us_per_request']:.0f} / {s['cpu_us_per_request']:.0f} |"
                f" {s['cpu_ratio_without_over_with']:.2f} {rng(s['cpu_ratio_pairs'])} |"
                f" {b['closed_p99_ms']:.1f} / {s['closed_p99_ms']:.1f} | {len(s['rps_ratio_pairs'])} | {errs}{same} |"
                f" {verdict(s)} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", default=",".join(GROUPS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", default="/work/main-results")
    ap.add_argument("--name", default="bypass_before")
    ap.add_argument("--render", default=None, help="only re-render this results JSON to markdown")
    args = ap.parse_args()
    if args.render:
        src = Path(args.render)
        src.with_suffix(".md").write_text(render(json.loads(src.read_text())))
        return 0
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        raise SystemExit("needs wrk and redis-server")
    from hashrec.index.bundle import load_bundle

    b = load_bundle(BUNDLES)
    shape = f"{b.n_users:,} users, {b.n_items:,} items, {b.bits} bits, {b.index_type}"
    work = Path(tempfile.mkdtemp(prefix="bypass-bench-"))
    users_file = work / "users.txt"
    users_file.write_text("\n".join(str(u) for u in b.users.raw) + "\n")
    warm_file = work / "warm.txt"
    warm_file.write_text("\n".join(str(u) for u in b.users.raw[:2000]) + "\n")
    check_users = [str(u) for u in b.users.raw[:: max(1, b.n_users // 25)]][:25]
    del b
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"machine": machine(), "shape": shape, "rounds": args.rounds,
                               "seconds": args.seconds, "k": K, "candidates": C, "groups": {}}
    try:
        for name in args.groups.split(","):
            try:
                payload["groups"][name] = run_group(name, work, users_file, warm_file, check_users,
                                                    args.rounds, args.seconds)
            except Exception as err:  # report, go on with the next group
                payload["groups"][name] = {"description": GROUPS[name][0], "errors": [repr(err)]}
                print(f"!! group {name} failed: {err!r}", flush=True)
            # written after every group: a partial run still leaves its results
            (out / f"{args.name}.json").write_text(json.dumps(payload, indent=1))
            (out / f"{args.name}.md").write_text(render(payload))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
