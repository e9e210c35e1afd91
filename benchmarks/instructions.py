"""How many instructions (and simulated cache misses) does one answer cost? This checkout against another one.

    .venv/bin/python benchmarks/instructions.py --before-python ../before/.venv/bin/python \\
        --before-bundles ../before/bundles-gowalla [--users 200] [--batches 4] --out /tmp/instructions.json

Timings on a shared VM move by more than the differences they are asked to settle; instruction counts do
not (``valgrind --tool=callgrind`` counts the instructions a process executes, whatever else the machine
is doing). Each side's interpreter loads the same model (the bundles as in ``before_after.py``), warms up,
then answers ``recommend`` for ``--users`` single users, or ``--batches`` batches of 256, with k = 20,
C = ``--candidates``, one thread. Each count is run twice, with and without the measured answers, so that
start-up, imports and warm-up cancel: per answer = (with - without) / answers. Callgrind's cache
simulation (``--cache-sim=yes``: a model of the host's first- and last-level caches, not the hardware's
own counters) adds the data reads that miss them, the part of an answer's time that instructions do not
show (the model has no second level: a first-level miss may still hit in L2 or L3, where the last-level
one pays a trip to memory; with a catalogue that fits in the simulated last level, that count is noise).

Valgrind does not run AVX-512, so both sides run their baseline scan build (one popcnt per 64-bit word)
here: the scan's share is that of a CPU without a vector popcount.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
import numpy as np
from before_after import after_bundle

log = logging.getLogger("benchmarks.instructions")

# Runs inside each side's interpreter: load, warm up, then the measured answers (none when count is 0).
_ANSWERS = r"""
import json, sys
from hashrec.index.bundle import load_bundle
from hashrec.index.retriever import Retriever
path, candidates, mode, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
users = [str(u) for u in json.loads(sys.argv[5])]
r = Retriever(load_bundle(path), threads=1)
r.recommend(users[:256], 20, candidates)  # warm-up (page faults, lazy set-up) on users not measured
for u in users[:50]:
    r.recommend([u], 20, candidates)
measured = users[256:]
for i in range(count):
    if mode == "single":
        r.recommend([measured[i]], 20, candidates)
    else:
        r.recommend(measured[256 * i : 256 * (i + 1)], 20, candidates)
"""

# callgrind's "events:" and "summary:" lines of its output file, named as in its manual
_EVENTS = {
    "Ir": "instructions",
    "D1mr": "first-level data read misses",
    "DLmr": "last-level data read misses",
}


def callgrind(
    python: str, bundle: Path, candidates: int, mode: str, count: int, users: list[str]
) -> dict[str, int]:
    """Totals of one run under callgrind with its cache simulation: {event: count}."""
    with tempfile.TemporaryDirectory(prefix="hashrec-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind", "--tool=callgrind", "--cache-sim=yes", f"--callgrind-out-file={out}",
            python, "-c", _ANSWERS, str(bundle), str(candidates), mode, str(count), json.dumps(users),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"{python} under callgrind exited {run.returncode}: {run.stderr[-2000:]}")
        names: list[str] = []
        totals: list[int] = []
        for line in out.read_text().splitlines():
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith("summary:"):
                totals = [int(x) for x in line.split()[1:]]
        return dict(zip(names, totals, strict=True))


def measure(
    sides: dict[str, tuple[str, Path]], candidates: int, users: list[str], counts: dict[str, int]
) -> dict[str, Any]:
    """Per answer (single) and per user (batches), for each side: {mode: {event: {side: value}}}."""
    jobs = {}
    workers = max(1, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # each job is one valgrind process
        for side, (python, bundle) in sides.items():
            jobs[side, "none"] = pool.submit(callgrind, python, bundle, candidates, "single", 0, users)
            for mode, count in counts.items():
                jobs[side, mode] = pool.submit(callgrind, python, bundle, candidates, mode, count, users)
        done = {key: f.result() for key, f in jobs.items()}
    res: dict[str, Any] = {}
    for mode, count in counts.items():
        answers = count if mode == "single" else 256 * count
        res[mode] = {
            event: {side: (done[side, mode][event] - done[side, "none"][event]) / answers for side in sides}
            for event in _EVENTS
        }
        for v in res[mode].values():
            v["ratio"] = v["after"] / v["before"] if v["before"] else float("nan")
    return res


def table(res: dict[str, Any]) -> str:
    rows = []
    for mode, label in (("single", "one user"), ("batch", "batches of 256, per user")):
        for event, name in _EVENTS.items():
            v = res[mode][event]
            rows.append(
                [f"{label}: {name}", f"{v['before']:,.0f}", f"{v['after']:,.0f}", f"{v['ratio']:.2f}x"]
            )
    return common.md_table(["per answer", "before", "after", "after / before"], rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before-python", required=True, help="the other revision's venv python")
    p.add_argument("--before-bundles", type=Path, required=True, help="a bundles dir that revision wrote")
    p.add_argument("--users", type=int, default=200, help="single-user answers counted")
    p.add_argument("--batches", type=int, default=4, help="batches of 256 users counted")
    p.add_argument("--candidates", type=int, default=500)
    common.add_out(p)
    args = p.parse_args()
    common.setup_logging()
    with tempfile.TemporaryDirectory(prefix="hashrec-instructions-") as tmp:
        bundles = {"before": args.before_bundles, "after": after_bundle(args.before_bundles, Path(tmp))}
        ids = np.load((args.before_bundles / "current" / "user_ids.npy").resolve(), allow_pickle=False)
        rng = np.random.default_rng(0)
        n = 256 + max(args.users, 256 * args.batches)  # the first 256: warm-up only
        users = [str(x) for x in rng.choice(ids, size=min(len(ids), n), replace=False)]
        sides = {
            "before": (args.before_python, bundles["before"] / "current"),
            "after": (sys.executable, bundles["after"] / "current"),
        }
        log.info("counting under callgrind: 6 runs of about a minute each, %d at a time", os.cpu_count() or 1)
        res = measure(sides, args.candidates, users, {"single": args.users, "batch": args.batches})
    command = "python benchmarks/instructions.py " + " ".join(sys.argv[1:])
    common.report("Instructions per answer, side by side", table(res), res, args.out, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
