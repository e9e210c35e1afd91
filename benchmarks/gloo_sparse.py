"""Does this torch's gloo survive two sparse all-reduces in flight at once? The reason the trainer averages
GraphSAGE's sparse ID-table gradients outside DDP, one at a time (model/distributed.py): rerun it after a
torch upgrade to see whether that is still needed.

    .venv/bin/python benchmarks/gloo_sparse.py [--runs 4] [--steps 5000] [--out /tmp/gloo_sparse.json]

Each run is ``torchrun --standalone --nproc-per-node=2`` of this file in worker mode: every step, each rank
all-reduces two sparse gradients shaped like a small model's ID tables (random rows of [300 x 120] and
[200 x 120]) and one dense tensor, either both sparse ones in flight at once (``concurrent``: what DDP does
with one bucket per sparse table) or one after the other (``serial``: what the trainer does). A run that
does not exit 0 (in torch 2.13: "malloc(): unaligned tcache chunk detected", SIGABRT or SIGSEGV) counts as a
crash. The two modes take turns.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

MODES = ("concurrent", "serial")


def worker(mode: str, steps: int) -> None:
    """One rank's loop (inside torchrun)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(dist.get_rank())

    def sparse_grad(rows: int) -> torch.Tensor:
        n = int(torch.randint(5, 128, (1,), generator=gen))
        idx = torch.unique(torch.randint(0, rows, (n,), generator=gen))
        return torch.sparse_coo_tensor(idx[None], torch.randn(len(idx), 120, generator=gen), (rows, 120))

    for _ in range(steps):
        a, b, dense = sparse_grad(300), sparse_grad(200), torch.randn(1000)
        if mode == "concurrent":
            works = [dist.all_reduce(t, async_op=True) for t in (a, b, dense)]
        else:
            dist.all_reduce(a)
            dist.all_reduce(b)
            works = [dist.all_reduce(dense, async_op=True)]
        for w in works:
            assert w is not None
            w.wait()
    dist.destroy_process_group()


def one_run(mode: str, steps: int) -> dict[str, Any]:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc-per-node=2", __file__, "--worker", mode, "--steps", str(steps)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    signs = [w for w in ("malloc", "SIGABRT", "SIGSEGV", "corrupt") if w in r.stderr]
    return {"mode": mode, "returncode": r.returncode, "signs": signs}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=4, help="runs per mode")
    p.add_argument("--steps", type=int, default=5000, help="steps per run")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args, _ = p.parse_known_args()
    if args.worker:
        worker(args.worker, args.steps)
        return 0

    import common
    import torch

    common.add_out(p)
    args = p.parse_args()
    common.setup_logging()
    runs = []
    for i in range(args.runs):
        for mode in MODES:
            runs.append(one_run(mode, args.steps))
            common.log.info("run %d %s: exit %d %s", i + 1, mode, runs[-1]["returncode"], runs[-1]["signs"])
    rows = []
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        crashes = sum(r["returncode"] != 0 for r in mine)
        rows.append([mode, len(mine), crashes, ", ".join(sorted({s for r in mine for s in r["signs"]}))])
    table = common.md_table(["two sparse all-reduces", "runs", "crashed", "signs"], rows)
    payload = {"torch": torch.__version__, "steps": args.steps, "runs": runs}
    common.report("Sparse all-reduces through gloo", table, payload, args.out, "python " + " ".join(sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
