"""A torchrun worker for tests/model/test_distributed.py (not a test module): trains one phase with ranks
that start from different seeds, with losses through DDP (``sync``) or around it (``bypass``), or the paper
preset's GraphSAGE (``sage``: sparse ID tables reduced outside DDP) for a few hundred small steps.

    torchrun --standalone --nproc-per-node=2 tests/model/ddp_worker.py sync|bypass|sage OUT_DIR DATA_CSV
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from hashrec.data import DataConfig, load_dataset
from hashrec.model.config import TrainConfig
from hashrec.model.distributed import setup
from hashrec.model.phase import Budget, Context, Phase, run_phase
from hashrec.model.run import RunError


def main(mode: str, out: Path, csv: str) -> None:
    dist = setup(torch.device("cpu"))
    torch.set_num_threads(1)
    if mode == "sage":
        cfg = TrainConfig.preset_config(
            "paper", DataConfig(path=csv), batch_size=32, epochs=3, progress=False
        )
    else:
        cfg = TrainConfig.preset_config(
            "default", DataConfig(path=csv), batch_size=512, shared_negatives=64, epochs=2, progress=False
        )
    ds = load_dataset(cfg.data)
    # every rank starts from another initialisation: only DDP's broadcast at wrap time makes them equal
    ctx = Context(cfg, ds, torch.device("cpu"), dist, out, Budget(math.inf))
    phase = Phase(ctx, "select", ds.graph("train"), cfg.replace(seed=cfg.seed + dist.rank))
    if mode == "bypass":
        phase.step_module = phase.model  # the bug: losses computed around DDP, gradients never averaged
    try:
        outcome = run_phase(ctx, phase, cfg.epochs)
        (out / f"rank{dist.rank}.txt").write_text(f"ok {outcome.epochs}\n")
    except RunError as err:
        (out / f"rank{dist.rank}.txt").write_text(f"error {err}\n")
    finally:
        dist.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
