"""Does keeping freed memory (``hashrec.model.train._keep_freed_memory``) make training steps faster?

    python benchmarks/train_memory.py --data ../shared/data/gowalla [--steps 6] [--rounds 2] --out docs/results/train_memory.json

Full default-preset training steps (forward, backward, Adam) on the dataset, in fresh processes that take
turns: glibc's default allocator settings (``default``) and the trainer's (``kept``: no block mapped apart,
the heap never trimmed). Each process reports wall seconds per step, its CPU seconds per step split into
user and system time, and minor page faults per step (the kernel handing out fresh zeroed pages); the first
step of each process is a warm-up and is not counted. Medians over the rounds; the ratio default / kept is
the speed-up of a step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from common import DATA, add_out, md_table, report, setup_logging

MODES = ("default", "kept")


def _worker(data: str, steps: int, mode: str) -> dict[str, float]:
    """In a fresh process: ``steps`` timed default-preset steps (after one warm-up step) under ``mode``."""
    import numpy as np
    import torch

    from hashrec.data import DataConfig, load_dataset
    from hashrec.model.config import TrainConfig
    from hashrec.model.hashgnn import Batch, HashGNN
    from hashrec.model.sampling import NegativeSampler, epoch_batches, shared_positive_pairs
    from hashrec.model.train import _keep_freed_memory

    if mode == "kept":
        _keep_freed_memory()
    ds = load_dataset(DataConfig(path=data))
    cfg = TrainConfig.preset_config("default", ds.config, progress=False)
    g = ds.graph("train")
    torch.manual_seed(0)
    model = HashGNN(cfg, g)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    users, items = g.edges()
    rng, sampler = np.random.default_rng(0), NegativeSampler(g)
    batches = epoch_batches(len(users), cfg.batch_size, np.random.default_rng(0), 0, 1)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for s in range(steps + 1):
        if s == 1:  # after the warm-up step
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        idx = batches[s % len(batches)]
        u = users[idx]
        shared = rng.integers(0, g.n_items, cfg.shared_negatives)
        batch = Batch(
            u, items[idx], sampler.sample(u, cfg.negatives, rng), shared, shared_positive_pairs(g, u, shared)
        )
        opt.zero_grad(set_to_none=True)
        model(batch, 0.35, None, torch.Generator().manual_seed(s))["loss"].backward()
        opt.step()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return {
        "wall_s": (t1 - t0) / steps,
        "user_s": (r1.ru_utime - r0.ru_utime) / steps,
        "sys_s": (r1.ru_stime - r0.ru_stime) / steps,
        "minor_faults": (r1.ru_minflt - r0.ru_minflt) / steps,
        "threads": torch.get_num_threads(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both modes in fresh processes, taking turns for ``args.rounds`` rounds; medians per mode."""
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            cmd = [
                sys.executable,
                __file__,
                "_worker",
                mode,
                "--data",
                str(args.data),
                "--steps",
                str(args.steps),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {mode}: {runs[mode][-1]}", file=sys.stderr, flush=True)
    med = {m: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for m, rs in runs.items()}
    return {"runs": runs, "median": med, "speedup": med["default"]["wall_s"] / med["kept"]["wall_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what")
    worker = sub.add_parser("_worker")  # one timed process (internal)
    worker.add_argument("mode", choices=MODES)
    for p in (parser, worker):
        p.add_argument("--data", default=str(DATA / "gowalla"))
        p.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    add_out(parser)
    args = parser.parse_args()
    if args.what == "_worker":
        print(json.dumps(_worker(args.data, args.steps, args.mode)))
        return 0
    setup_logging()
    res = run(args)
    rows = [
        [
            m,
            f"{r['wall_s']:.2f}",
            f"{r['user_s'] + r['sys_s']:.2f}",
            f"{r['sys_s']:.2f}",
            f"{r['minor_faults']:,.0f}",
        ]
        for m, r in res["median"].items()
    ]
    table = md_table(
        ["allocator", "wall s / step", "CPU s / step", "of it system", "page faults / step"], rows
    )
    table += f"\n\nstep speed-up, default / kept: {res['speedup']:.2f}x\n"
    command = (
        f"python benchmarks/train_memory.py --data {args.data} --steps {args.steps} --rounds {args.rounds}"
    )
    report(
        "Training steps: glibc's default allocator vs the trainer's kept memory",
        table,
        res,
        args.out,
        command,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
