"""What does a batch of cache writes cost the service's Python process: a redis-py pipeline of SETs, or the
one-command Lua script ``service/cache.py`` sends? Client CPU per batch, side by side.

    .venv/bin/python benchmarks/redis_writes.py [--calls 2000] [--rounds 5] [--out /tmp/redis_writes.json]

A private ``redis-server`` (``support.RedisProcess``); ``redis.asyncio`` with the cache's own settings (no
retries); answers of 1,300 bytes (a k = 20 answer), each with its own TTL. Per batch size, the two ways take
turns every round (order rotated); each figure is the median over rounds of the process's CPU time
(``time.process_time``: this process only, not Redis) per call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from support import RedisProcess

import service as bench  # benchmarks/service.py (this folder is sys.path[0]), not the product's package

VALUE = b"x" * 1300
TTL_MS = 300_000


async def _measure(url: str, sizes: list[int], calls: int, rounds: int) -> dict[str, dict[str, float]]:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from hashrec.service.cache import _SET_MANY_LUA

    r = Redis.from_url(url, retry=Retry(NoBackoff(), 0))
    script = r.register_script(_SET_MANY_LUA)

    async def pipeline(keys: list[str]) -> None:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, VALUE, px=TTL_MS)
        await pipe.execute()

    async def lua(keys: list[str]) -> None:
        args: list[bytes | int] = []
        for _key in keys:
            args += [VALUE, TTL_MS]
        await script(keys=keys, args=args)

    ways = {"pipeline of SETs": pipeline, "one Lua command": lua}
    out: dict[str, dict[str, float]] = {}
    for size in sizes:
        keys = [f"bench:{i}" for i in range(size)]
        for fn in ways.values():
            await fn(keys)  # warm-up (and the script's first load)
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        names = list(ways)
        for rnd in range(rounds):
            for name in names[rnd % 2 :] + names[: rnd % 2]:
                t0 = time.process_time()
                for _ in range(calls):
                    await ways[name](keys)
                cpu[name].append((time.process_time() - t0) / calls * 1e6)
        out[str(size)] = {name: statistics.median(v) for name, v in cpu.items()}
    await r.aclose()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,8,32", help="answers per batch (comma-separated)")
    p.add_argument("--calls", type=int, default=2000, help="calls per round and way")
    p.add_argument("--rounds", type=int, default=5)
    common.add_out(p)
    args = p.parse_args()
    common.setup_logging()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="hashrec-bench-redis-") as work:
        rds: RedisProcess
        with bench.redis(Path(work), "redis") as rds:
            res = asyncio.run(_measure(rds.url, sizes, args.calls, args.rounds))
    rows: list[list[Any]] = []
    for size, r in res.items():
        pipe, lua = r["pipeline of SETs"], r["one Lua command"]
        rows.append([size, f"{pipe:.0f}", f"{lua:.0f}", f"{pipe / lua:.2f}x"])
    table = common.md_table(
        ["answers per batch", "pipeline of SETs (us CPU)", "one Lua command (us CPU)", "pipeline / Lua"], rows
    )
    common.report(
        "Cache writes: client CPU per batch",
        table,
        {"settings": {k: str(v) for k, v in vars(args).items()}, "results": res},
        args.out,
        "benchmarks/redis_writes.py",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
