"""Did a change move the retrieval or service figures? This checkout against another one, side by side.

    .venv/bin/python benchmarks/before_after.py --before-python ../before/.venv/bin/python \\
        --before-bundles ../before/bundles-gowalla [--rounds 5] [--seconds 10] --out /tmp/before_after.json

``--before-python`` is the interpreter of a virtual environment where the other revision is installed
(``git worktree add ../before REV`` and ``pip install -e ../before`` into its own venv); ``--before-bundles``
a bundles directory that revision wrote. The same model is served by both sides: this checkout's bundle is
built from the arrays of the other side's bundle (its ``user_z``/``item_z``, ids, seen items and
popularity; codes = sign(z), re-rank vectors = z), so only the code differs; a bundle already in this
checkout's format (no ``user_z``: a recent revision) is served by both sides as it is.

Both sides are measured in the same run, in turns, the order rotated every round, so that machine noise
hits them alike; each figure is a median over the rounds, and each ratio (after / before) the median of
the per-round ratios:

- **retrieval**: one process per side loads the bundle (``Retriever(load_bundle(path), threads=1)``) and
  answers ``recommend(users, k=20, candidates=C)`` for single users and for batches of 256 (the same users
  on both sides): ms per user;
- **service**: one ``hashrec serve`` per side (1 worker, no cache, access log on), closed-loop ``wrk`` on
  ``GET /livez`` (the floor) and ``GET /recommend/{user}`` over random users: req/s, p99, server CPU per
  request, and the recommend/floor ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
import numpy as np
from support import ServerProcess

from service import recommend_script, script, wrk

log = logging.getLogger("benchmarks.before_after")

# Runs inside each side's interpreter: load the bundle, then one timing round per "go" line on stdin.
_TIMER = r"""
import json, sys, time
import numpy as np
from hashrec.index.bundle import load_bundle
from hashrec.index.retriever import Retriever
path, candidates = sys.argv[1], int(sys.argv[2])
r = Retriever(load_bundle(path), threads=1)
users = [str(u) for u in json.loads(sys.argv[3])]
r.recommend(users[:256], 20, candidates)  # warm-up: page faults, lazy set-up
print("ready", flush=True)
for line in sys.stdin:
    single = []
    for u in users[:200]:
        t0 = time.perf_counter(); r.recommend([u], 20, candidates); single.append(time.perf_counter() - t0)
    batch = []
    for i in range(0, 2048, 256):
        t0 = time.perf_counter(); r.recommend(users[i:i + 256], 20, candidates)
        batch.append((time.perf_counter() - t0) / 256)
    print(json.dumps({"single_ms": 1e3 * float(np.median(single)), "batch_ms": 1e3 * float(np.median(batch))}),
          flush=True)
"""


def after_bundle(before_bundles: Path, work: Path) -> Path:
    """This checkout's bundle of the same arrays as the other side's ``current`` version."""
    import scipy.sparse as sp

    from hashrec.index.publish import build_bundle

    src = (before_bundles / "current").resolve()
    if not (src / "user_z.npy").exists():  # the other revision writes this checkout's format: serve it as is
        return before_bundles

    def arr(name: str) -> np.ndarray:
        return np.load(src / f"{name}.npy", allow_pickle=False)

    user_z, item_z = arr("user_z"), arr("item_z")
    seen = sp.csr_matrix(
        (np.ones(len(arr("seen_indices")), np.float32), arr("seen_indices"), arr("seen_indptr")),
        shape=(len(user_z), len(item_z)),
    )
    build_bundle(
        work / "after-bundles",
        user_z=user_z,
        item_z=item_z,
        seen=seen,
        user_ids=[str(x) for x in arr("user_ids")],
        item_ids=[str(x) for x in arr("item_ids")],
        popularity=arr("popularity"),
        model_version="before-after",
    )
    return work / "after-bundles"


class Timer:
    """One side's retrieval timing process; :meth:`round` runs one round and returns its medians."""

    def __init__(self, python: str, bundle: Path, candidates: int, users: list[str]) -> None:
        self.proc = subprocess.Popen(
            [python, "-c", _TIMER, str(bundle), str(candidates), json.dumps(users)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{python}: the timing process did not start")

    def round(self) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _rotated(sides: list[str], r: int) -> list[str]:
    return sides[r % 2 :] + sides[: r % 2]


def _summary(rounds: list[dict[str, dict[str, float]]], keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        out[key] = {side: statistics.median(r[side][key] for r in rounds) for side in ("before", "after")}
        out[key]["ratio"] = statistics.median(r["after"][key] / r["before"][key] for r in rounds)
    return out


def bench_retrieval(args: argparse.Namespace, bundles: dict[str, Path], users: list[str]) -> dict[str, Any]:
    pythons = {"before": args.before_python, "after": sys.executable}
    timers = {s: Timer(pythons[s], bundles[s] / "current", args.candidates, users) for s in bundles}
    rounds = []
    try:
        for r in range(args.rounds):
            rounds.append({s: timers[s].round() for s in _rotated(["before", "after"], r)})
            log.info("retrieval round %d: %s", r + 1, rounds[-1])
    finally:
        for t in timers.values():
            t.close()
    return _summary(rounds, ["single_ms", "batch_ms"])


def bench_service(
    args: argparse.Namespace, bundles: dict[str, Path], users: list[str], work: Path
) -> dict[str, Any]:
    users_file = work / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    floor = script(work, "floor", 'wrk.path = "/livez"')
    target = recommend_script(work, "recommend", users_file, f"?k=20&candidates={args.candidates}", False)
    before_cmd = [str(Path(args.before_python).with_name("hashrec")), "serve"]
    servers = {
        side: ServerProcess(
            bundles[side],
            work / f"{side}.log",
            env={"HASHREC_CACHE": "none"},
            command=before_cmd if side == "before" else None,
        ).start()
        for side in ("before", "after")
    }
    rounds = []
    try:
        for r in range(args.rounds):
            row: dict[str, dict[str, float]] = {}
            for side in _rotated(["before", "after"], r):
                f = wrk(servers[side], floor, args.seconds, args.connections, "/livez")
                t = wrk(servers[side], target, args.seconds, args.connections)
                row[side] = {
                    "floor_rps": f["rps"],
                    "recommend_rps": t["rps"],
                    "recommend_p99_ms": t["p99_ms"],
                    "recommend_cpu_us": t["cpu_us_per_request"],
                    "recommend_vs_floor": t["rps"] / f["rps"],
                    "errors": t["errors"] + f["errors"],
                }
            rounds.append(row)
            log.info("service round %d: %s", r + 1, row)
    finally:
        for srv in servers.values():
            srv.stop()
    keys = ["floor_rps", "recommend_rps", "recommend_p99_ms", "recommend_cpu_us", "recommend_vs_floor"]
    out = _summary(rounds, keys)
    out["errors"] = sum(r[s]["errors"] for r in rounds for s in r)
    return out


def table(res: dict[str, Any]) -> str:
    rows = []
    labels = {
        "single_ms": "retrieval, one user (ms per user)",
        "batch_ms": "retrieval, batches of 256 (ms per user)",
        "floor_rps": "service floor GET /livez (req/s)",
        "recommend_rps": "service GET /recommend uncached (req/s)",
        "recommend_p99_ms": "service GET /recommend p99 (ms, closed loop)",
        "recommend_cpu_us": "service CPU per recommend request (us)",
        "recommend_vs_floor": "service recommend / floor",
    }
    for part in ("retrieval", "service"):
        for key, v in res[part].items():
            if isinstance(v, dict):
                rows.append([labels[key], round(v["before"], 3), round(v["after"], 3), f"{v['ratio']:.2f}x"])
    return common.md_table(["figure", "before", "after", "after / before (median of rounds)"], rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before-python", required=True, help="the other revision's venv python")
    p.add_argument("--before-bundles", type=Path, required=True, help="a bundles dir that revision wrote")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--candidates", type=int, default=500)
    common.add_out(p)
    args = p.parse_args()
    common.setup_logging()
    with tempfile.TemporaryDirectory(prefix="hashrec-before-after-") as tmp:
        work = Path(tmp)
        bundles = {"before": args.before_bundles, "after": after_bundle(args.before_bundles, work)}
        ids = np.load((args.before_bundles / "current" / "user_ids.npy").resolve(), allow_pickle=False)
        rng = np.random.default_rng(0)
        users = [str(x) for x in rng.choice(ids, size=min(len(ids), 4096), replace=False)]
        res = {
            "retrieval": bench_retrieval(args, bundles, users),
            "service": bench_service(args, bundles, users, work),
        }
    command = "python benchmarks/before_after.py " + " ".join(sys.argv[1:])
    common.report("Before / after, side by side", table(res), res, args.out, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
