"""Where does scaling out pay? Distributed training (torchrun/DDP) and the Ray Data candidate export.

    python benchmarks/distributed.py steps  --data ../shared/data/gowalla [--steps 6] --out docs/results/ddp_steps.json
    python benchmarks/distributed.py train  --data ../shared/data/gowalla --work runs/ddp --out docs/results/ddp_train.json
    python benchmarks/distributed.py export --data ../shared/data/gowalla [--candidates 200] --out docs/results/ray_export.json

- ``steps``: one training step of the default preset split into propagation (the encoder's forward), the
  losses, and the backward pass with and without DDP's gradient all-reduce (``no_sync``), with 1 process
  (all cores) and with 2 processes (torchrun, gloo, one core each); medians over ``--steps``.
- ``train``: the default preset trained with 1 process and with 2 (torchrun), then ``hashrec evaluate`` on
  the test split: wall time and hierarchical Recall@20 side by side.
- ``export``: users per second of ``hashrec export-candidates`` with one process and with Ray (2 workers) on
  a bundle of the dataset's shape, and the projected CPU-hours for 100M users at C = 200 and 500.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, add_out, md_table, report, setup_logging

HASHREC = str(Path(sys.executable).with_name("hashrec"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


# -- steps --------------------------------------------------------------------------------------------------


def _step_worker(data: str, steps: int, out: Path) -> None:
    """Inside torchrun (or alone): time the parts of a default-preset step; rank 0 writes the medians."""
    import numpy as np
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from hashrec.data import DataConfig, load_dataset
    from hashrec.model.config import TrainConfig
    from hashrec.model.distributed import setup, threads_per_process
    from hashrec.model.hashgnn import Batch, HashGNN
    from hashrec.model.sampling import NegativeSampler, epoch_batches, shared_positive_pairs

    dist = setup(torch.device("cpu"))
    torch.set_num_threads(threads_per_process(0, dist.local_world))
    ds = load_dataset(DataConfig(path=data))
    cfg = TrainConfig.preset_config("default", ds.config, progress=False)
    g = ds.graph("train")
    torch.manual_seed(0)
    model = HashGNN(cfg, g)
    ddp = DistributedDataParallel(model) if dist.enabled else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    users, items = g.edges()
    rng, sampler = np.random.default_rng([0, dist.rank]), NegativeSampler(g)
    batches = epoch_batches(len(users), cfg.batch_size, np.random.default_rng(0), dist.rank, dist.world)
    times: dict[str, list[float]] = {
        "propagation": [],
        "losses": [],
        "backward_no_allreduce": [],
        "backward": [],
    }
    for s in range(steps + 1):  # the first step warms up (allocations, SVD caches)
        idx = batches[s]
        u = users[idx]
        shared = rng.integers(0, g.n_items, cfg.shared_negatives)
        batch = Batch(
            u, items[idx], sampler.sample(u, cfg.negatives, rng), shared, shared_positive_pairs(g, u, shared)
        )
        t0 = time.perf_counter()
        with torch.no_grad():
            model.encoder.propagate()
        t1 = time.perf_counter()
        for sync in (False, True):
            opt.zero_grad()
            t2 = time.perf_counter()
            module = ddp if ddp is not None else model
            ctx = ddp.no_sync() if ddp is not None and not sync else torch.enable_grad()
            with ctx:
                loss = module(batch, 0.35, None, torch.Generator().manual_seed(s))["loss"]
                t3 = time.perf_counter()
                loss.backward()
            t4 = time.perf_counter()
            if s:
                if sync:
                    times["backward"].append(t4 - t3)
                    times["losses"].append(t3 - t2 - (t1 - t0))  # the forward minus its propagation
                else:
                    times["backward_no_allreduce"].append(t4 - t3)
        if s:
            times["propagation"].append(t1 - t0)
        opt.step()
    medians = {k: statistics.median(v) for k, v in times.items()}
    if dist.is_main:
        out.write_text(
            json.dumps({"world": dist.world, "threads": torch.get_num_threads(), "seconds": medians})
        )
    dist.close()


def bench_steps(args: argparse.Namespace) -> dict[str, Any]:
    """One process with all cores, then two with one core each, on the same data."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            out = Path(tmp) / f"w{world}.json"
            worker = [
                __file__,
                "_step",
                "--data",
                args.data,
                "--steps",
                str(args.steps),
                "--step-out",
                str(out),
            ]
            cmd = (
                [sys.executable, *worker]
                if world == 1
                else [TORCHRUN, "--standalone", f"--nproc-per-node={world}", *worker]
            )
            subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
            results.append(json.loads(out.read_text()))
    rows = []
    for r in results:
        s = r["seconds"]
        # one process has nothing to all-reduce: both backward passes are the same code there
        allreduce = max(0.0, s["backward"] - s["backward_no_allreduce"]) if r["world"] > 1 else "-"
        rows.append(
            [r["world"], r["threads"], s["propagation"], s["losses"], s["backward_no_allreduce"], allreduce]
        )
    table = md_table(
        [
            "processes",
            "threads each",
            "propagation s",
            "losses s (half the batch each with 2)",
            "backward s",
            "all-reduce s",
        ],
        rows,
    )
    return {"table": table, "results": results}


# -- train --------------------------------------------------------------------------------------------------


def _evaluate(run: Path) -> dict[str, Any]:
    r = subprocess.run(
        [HASHREC, "evaluate", str(run), "--json", "--no-progress", "--candidates", "200,1000"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(r.stdout)


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """The default preset with 1 process and with 2 (torchrun): wall time and test figures. A run that
    finished before (its ``wall.json`` written) is reused, so a killed benchmark continues where it was."""
    out = []
    args.work.mkdir(parents=True, exist_ok=True)
    for world in (1, 2):
        run = args.work / f"p{world}"
        done = run / "wall.json"
        if not done.exists():
            train = ["train", "--data", args.data, "--out", str(run), "--force", "--no-progress", *args.extra]
            cmd = (
                [HASHREC, *train]
                if world == 1
                else [TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "hashrec", *train]
            )
            t0 = time.perf_counter()
            with open(args.work / f"p{world}.log", "w") as log_file:
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=log_file)
            done.write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
        wall = json.loads(done.read_text())["wall_s"]
        ev = _evaluate(run)
        rows = {(r["mode"], r["candidates"]): r for r in ev["rows"]}
        out.append(
            {
                "processes": world,
                "wall_s": round(wall, 1),
                "hamming": rows[("hamming", None)]["recall"],
                "hier_1000": rows[("hierarchical", 1000)]["recall"],
                "ndcg_1000": rows[("hierarchical", 1000)]["ndcg"],
            }
        )
    table = md_table(
        ["processes", "wall time (min)", "Hamming Recall@20", "hierarchical Recall@20 (C=1000)", "NDCG@20"],
        [
            [o["processes"], round(o["wall_s"] / 60, 1), o["hamming"], o["hier_1000"], o["ndcg_1000"]]
            for o in out
        ],
    )
    return {
        "table": table,
        "results": out,
        "difference_hier": round(out[1]["hier_1000"] - out[0]["hier_1000"], 4),
    }


# -- export -------------------------------------------------------------------------------------------------


def bench_export(args: argparse.Namespace) -> dict[str, Any]:
    """One process vs Ray with 2 workers, on a bundle of the dataset's shape (seeded random vectors), at
    C = 200 and 500. Rates exclude start-up (process, bundle load, Ray's local cluster), timed apart."""
    import ray

    sys.path.insert(0, str(REPO / "tests"))
    from support import make_bundle

    from hashrec.data import DataConfig, load_dataset
    from hashrec.index.bundle import load_bundle
    from hashrec.index.candidates import write_candidates
    from hashrec.index.ray_export import export_with_ray
    from hashrec.index.retriever import Retriever

    ds = load_dataset(DataConfig(path=args.data))
    rows, out = [], []
    with tempfile.TemporaryDirectory() as tmp:
        vdir = make_bundle(Path(tmp) / "b", dataset=ds, bits=64, foldin=False)
        retriever = Retriever(load_bundle(vdir), threads=1)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, object_store_memory=512 << 20, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        try:
            for c in (200, 500):
                t0 = time.perf_counter()
                write_candidates(
                    retriever, Path(tmp) / f"one-{c}.parquet", None, c, batch=2048, progress=False
                )
                one = time.perf_counter() - t0
                t0 = time.perf_counter()
                summary = export_with_ray(vdir, Path(tmp) / f"ray-{c}", ds.n_users, c, workers=2, batch=2048)
                two = time.perf_counter() - t0
                for engine, wall, cores in (("1 process", one, 1), ("Ray, 2 workers", two, 2)):
                    rate = ds.n_users / wall
                    hours = 1e8 / (rate / cores) / 3600
                    out.append(
                        {
                            "engine": engine,
                            "candidates": c,
                            "wall_s": round(wall, 1),
                            "users_per_s": round(rate, 1),
                            "cpu_hours_100m": round(hours, 1),
                        }
                    )
                    rows.append([engine, c, round(wall, 1), round(rate), round(hours, 1)])
                out[-1]["actors"] = summary["actors"]
        finally:
            ray.shutdown()
    table = md_table(
        ["engine", "C", "wall s, every user", "users/s (marginal)", "CPU-hours for 100M users"], rows
    )
    note = f"Start-up not included: Ray's local cluster took {ray_start:.1f} s to start; actors load the bundle memory-mapped."
    return {
        "table": table + "\n\n" + note,
        "results": out,
        "users": ds.n_users,
        "ray_start_s": round(ray_start, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--data", required=True)
    s.add_argument("--steps", type=int, default=6)
    add_out(s)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--work", type=Path, default=Path("runs/ddp-bench"))
    t.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `hashrec train` arguments")
    add_out(t)
    e = sub.add_parser("export")
    e.add_argument("--data", required=True)
    add_out(e)
    w = sub.add_parser("_step")  # the torchrun worker of `steps`
    w.add_argument("--data", required=True)
    w.add_argument("--steps", type=int, default=6)
    w.add_argument("--step-out", type=Path, required=True)
    args = p.parse_args()
    if args.what == "_step":
        _step_worker(args.data, args.steps, args.step_out)
        return 0
    setup_logging()
    os.environ.setdefault("PYTHONPATH", str(REPO))
    result = {"steps": bench_steps, "train": bench_train, "export": bench_export}[args.what](args)
    report(f"Scaling out: {args.what}", result.pop("table"), result, args.out, "python " + " ".join(sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
