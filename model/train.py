"""The training loop: ``train(config, out_dir)`` -> a run directory (layout in :mod:`hashrec.model.run`).

Run it (the same command for one process and for torchrun, which the trainer detects by itself)::

    hashrec train --data ../shared/data/gowalla --out runs/gowalla --time-budget 30
    hashrec train --data ../shared/data/gowalla --out runs/gowalla-paper --preset paper
    hashrec train --data ml-100k/u.data --out runs/ml --resume          # continue a killed run
    torchrun --standalone --nproc-per-node=2 -m hashrec train --data ... --out runs/ddp

Two phases:

1. **select**: train on the training split, validate every ``valid_every`` epochs (hierarchical
   Recall@select_k through the Retriever, the serving path), keep the best epoch (``best.pt``), stop early
   after ``patience`` validations without improvement (only once the guidance schedule is pure STE);
2. **refit** (``refit``): train again from the same initialisation on train + validation for the selected
   number of epochs, following the selection run's schedule epoch by epoch, and serve that model. A refit
   that the time budget cannot finish is dropped and the selected model is served (``selection.json`` says).

Guarantees:

- seeded and deterministic on CPU for a fixed thread count and process count (numpy Generators for the
  edge order and the negatives; torch Generators for the guidance draws and GraphSAGE's sampling; all
  checkpointed, per rank);
- a checkpoint (``last.pt``) after every epoch, written atomically; ``resume=True`` continues from it (in
  either phase), so a run killed at any moment loses at most the epoch in progress, and without a time
  budget continues exactly as if never killed; a checkpoint from another config or dataset is refused;
- the time budget covers the whole run (validation and refit included): the selection phase gets half of
  it when refitting, and no step or validation starts that the remaining budget cannot hold;
- distributed (torchrun): every epoch's edges are covered once across ranks, each rank takes an equal share
  of each global batch (same global batch and learning rate as one process; DDP averages the gradients),
  losses go through the DDP module's forward (so gradients are synchronised), only rank 0 writes, and
  stop decisions are rank 0's, broadcast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn.parallel import DistributedDataParallel

from hashrec.data import BipartiteGraph, Dataset, load_dataset
from hashrec.index.retriever import Retriever
from hashrec.model import run as rundir
from hashrec.model.config import TrainConfig
from hashrec.model.distributed import Dist, local_device, setup, threads_per_process
from hashrec.model.evaluate import score_modes
from hashrec.model.hashgnn import Batch, HashGNN
from hashrec.model.hashing import code_probability
from hashrec.model.optim import RowAdam
from hashrec.model.run import RunError
from hashrec.model.sampling import NegativeSampler, epoch_batches, shared_positive_pairs

log = logging.getLogger(__name__)

CKPT_VERSION = 2
SELECTION = "selection.json"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error naming the field."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def sample_users(truth: sp.csr_matrix, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` users (sorted) that have validation items, chosen with ``seed`` (0 = all of them)."""
    have = np.flatnonzero(np.diff(truth.indptr) > 0)
    if n == 0 or n >= len(have):
        return have
    return np.sort(np.random.default_rng(seed).choice(have, n, replace=False))


def make_optimizers(model: torch.nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    """Adam for dense parameters, RowAdam for embeddings with sparse gradients (GraphSAGE's ID tables).

    RowAdam (:mod:`hashrec.model.optim`, SparseAdam's maths) updates only the rows a batch touched ("lazy"
    Adam); with dense tables (LightGCN propagates every embedding each step) it is plain Adam.
    """
    sparse = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
    ids = {id(p) for p in sparse}
    opts: list[torch.optim.Optimizer] = [
        torch.optim.Adam([p for p in model.parameters() if id(p) not in ids], lr=lr)
    ]
    if sparse:
        opts.append(RowAdam(sparse, lr=lr))
    return opts


def _prepare_dir(cfg: TrainConfig, out: Path, resume: bool, force: bool) -> bool:
    """Create or check the run directory (rank 0 only); returns True when resuming from a checkpoint."""
    exists = out.exists() and any(out.iterdir())
    if resume and (out / rundir.LAST).exists():
        old = rundir.read_config(out)
        if old.fingerprint() != cfg.fingerprint():
            diff = [
                k
                for k, v in cfg.to_json().items()
                if k not in ("device", "threads", "time_budget_min", "progress") and old.to_json().get(k) != v
            ]
            raise RunError(
                f"{out / rundir.LAST}: checkpoint was made with another config (differs in: "
                f"{', '.join(diff) or 'unknown'}); use the same options, or --force with a new run"
            )
        return True
    if exists and not force:
        what = (
            f"--resume given but there is no {rundir.LAST} to resume from"
            if resume
            else "run directory exists and is not empty; use --resume or --force"
        )
        raise RunError(f"{out}: {what}")
    if exists:
        log.warning("%s: removing the existing run (--force)", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return False


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of returning big blocks to the OS after every step.

    Each step allocates and frees tensors of tens of MB; with glibc's default thresholds each one is a fresh
    mmap whose pages fault in again, which showed up as ~50% system CPU time and made steps up to ~2x slower
    in development on 2 cores. No-op where glibc's mallopt is not available.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks < 1 GiB from the heap
        libc.mallopt(-1, 1 << 32)  # M_TRIM_THRESHOLD: trim the heap only beyond 4 GiB free
    except (OSError, AttributeError):
        pass


@dataclass
class Budget:
    """The run's wall-time budget (seconds; ``inf`` = none), counted from ``start`` minus time spent before
    a resume. Rank 0's clock decides."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


@dataclass
class Outcome:
    """What a phase ended with: epochs run, the best epoch and value, why it stopped, the schedule's
    progress at each epoch's end (a refit replays it)."""

    epochs: int = 0
    best_epoch: int = 0
    best: float = -1.0
    bad: int = 0
    stopped: str = ""
    progress: list[float] = field(default_factory=list)


class Phase:
    """One training phase on one graph: the model, its optimizers and RNGs, the epoch loop, checkpoints."""

    def __init__(
        self,
        name: str,
        cfg: TrainConfig,
        ds: Dataset,
        graph: BipartiteGraph,
        device: torch.device,
        dist: Dist,
        out: Path,
    ) -> None:
        self.name, self.cfg, self.ds, self.graph, self.device, self.dist, self.out = (
            name,
            cfg,
            ds,
            graph,
            device,
            dist,
            out,
        )
        torch.manual_seed(cfg.seed)
        self.model = HashGNN(cfg, graph).to(device)
        self.step_module: torch.nn.Module = self.model
        if dist.enabled:
            # losses must go through the DDP module's forward: calling model.loss directly trains unsynced
            # replicas silently. GraphSAGE's heads see every parameter, but its sampled trees may not touch
            # both sides' hop layers in a step: find_unused_parameters covers that.
            self.step_module = DistributedDataParallel(
                self.model,
                find_unused_parameters=cfg.encoder == "sage",
                device_ids=[device.index] if device.type == "cuda" else None,
            )
        self.opts = make_optimizers(self.model, cfg.lr)
        self.order_rng = np.random.default_rng(cfg.seed)  # the edge order: the same on every rank
        self.rng = np.random.default_rng([cfg.seed, dist.rank])  # negatives: each rank its own
        self.gen = torch.Generator().manual_seed(cfg.seed + 7919 * dist.rank)
        self.sample_gen = torch.Generator(device=device).manual_seed(cfg.seed + 7919 * dist.rank)
        self.sampler = NegativeSampler(graph)
        self.edges = graph.edges()
        self.outcome = Outcome()

    # -- checkpoints ---------------------------------------------------------------------------------------
    def rng_state(self) -> dict[str, Any]:
        return {
            "order": dict(self.order_rng.bit_generator.state),
            "numpy": dict(self.rng.bit_generator.state),
            "torch": self.gen.get_state(),
            "sample": self.sample_gen.get_state(),
        }

    def save(self, elapsed: float) -> None:
        """Write ``last.pt`` (rank 0 writes every rank's RNG states, gathered)."""
        states = self.dist.gather(self.rng_state())
        if not self.dist.is_main:
            return
        body = {
            "version": CKPT_VERSION,
            "phase": self.name,
            "config_fingerprint": self.cfg.fingerprint(),
            "dataset_fingerprint": self.ds.fingerprint(),
            "world": self.dist.world,
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.opts],
            "rng": states,
            "outcome": self.outcome.__dict__,
            "elapsed": elapsed,
        }
        rundir.atomic_write(self.out / rundir.LAST, lambda tmp: torch.save(body, tmp))

    def load(self, st: dict[str, Any]) -> None:
        """Restore a ``last.pt`` body of this phase (see :func:`_read_checkpoint`)."""
        self.model.load_state_dict(st["model"])
        for o, sd in zip(self.opts, st["optimizers"], strict=True):
            o.load_state_dict(sd)
        mine = st["rng"][self.dist.rank]
        self.order_rng.bit_generator.state = mine["order"]
        self.rng.bit_generator.state = mine["numpy"]
        self.gen.set_state(
            mine["torch"].cpu()
        )  # RNG states are CPU byte tensors wherever torch.load put them
        self.sample_gen.set_state(mine["sample"].cpu())
        self.outcome = Outcome(**st["outcome"])

    # -- one step ------------------------------------------------------------------------------------------
    def _batch(self, idx: np.ndarray) -> Batch:
        cfg = self.cfg
        users, pos = self.edges[0][idx], self.edges[1][idx]
        neg = self.sampler.sample(users, cfg.negatives, self.rng)
        shared = np.empty(0, np.int64)
        mask = None
        if cfg.softmax_weight > 0:
            shared = self.rng.integers(0, self.graph.n_items, cfg.shared_negatives, dtype=np.int64)
            mask = shared_positive_pairs(self.graph, users, shared)
        return Batch(users, pos, neg, shared, mask)

    def _set_lr(self, progress: float) -> None:
        if self.cfg.lr_schedule == "cosine":
            lr = self.cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))
            for o in self.opts:
                for group in o.param_groups:
                    group["lr"] = lr

    def step(self, idx: np.ndarray, progress: float) -> dict[str, torch.Tensor]:
        """One optimisation step on the edges ``idx`` at schedule ``progress``; returns the losses."""
        self._set_lr(progress)
        losses = self.step_module(self._batch(idx), progress, self.sample_gen, self.gen)
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        losses["loss"].backward()
        for o in self.opts:
            o.step()
        return {k: v.detach() for k, v in losses.items()}

    def check_replicas(self) -> None:
        """Raise RunError unless every rank holds the same parameters (a hash of them, gathered).

        DDP synchronises gradients only through its module's forward: a loss computed any other way trains
        diverging replicas without an error. This check makes that loud, after every epoch.
        """
        if not self.dist.enabled:
            return
        h = hashlib.sha256()
        for t in self.model.state_dict().values():
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        hashes = self.dist.gather(h.hexdigest())
        if len(set(hashes)) > 1:
            raise RunError(
                f"{self.name} phase: the replicas' parameters differ after epoch {self.outcome.epochs} ({hashes})"
            )

    def epoch_batches(self) -> list[np.ndarray]:
        return epoch_batches(
            len(self.edges[0]), self.cfg.batch_size, self.order_rng, self.dist.rank, self.dist.world
        )

    # -- validation (rank 0) ---------------------------------------------------------------------------------
    def validate(self, users: np.ndarray, truth: sp.csr_matrix) -> dict[str, float]:
        """Hamming-only and hierarchical Recall/NDCG of the validation ``users`` through the Retriever."""
        arrays = self.model.embed_all()
        retriever = Retriever.from_arrays(
            arrays["user_z"],
            arrays["item_z"],
            self.graph.user_items,
            user_vectors=arrays.get("user_vectors"),
            item_vectors=arrays.get("item_vectors"),
            threads=torch.get_num_threads(),
        )
        modes = ("continuous",) if self.cfg.continuous else ("hamming", "hierarchical")
        return score_modes(retriever, truth, users, self.cfg.select_k, [self.cfg.select_candidates], modes)


@dataclass
class Context:
    """What both phases share: config, data, device, process group, run directory, budget, progress bar."""

    cfg: TrainConfig
    ds: Dataset
    device: torch.device
    dist: Dist
    out: Path
    budget: Budget


def _schedule(ctx: Context, phase: Phase, selection: Outcome | None, share: float) -> Any:
    """progress(epoch, fraction of the epoch, elapsed seconds) of a phase.

    Selection: the larger of the epoch fraction and the fraction of its share of the budget spent, so pure
    STE and the low learning rate are reached before the budget ends. Refit: the selection run's progress
    at each epoch's end, interpolated within the epoch, so it replays the same schedule.
    """
    cfg = ctx.cfg
    if selection is None:
        phase_seconds = ctx.budget.seconds * share

        def select_progress(epoch: int, frac: float, elapsed: float) -> float:
            return min(1.0, max((epoch + frac) / cfg.epochs, elapsed / phase_seconds))

        return select_progress
    ends = [0.0, *selection.progress]

    def refit_progress(epoch: int, frac: float, elapsed: float) -> float:
        del elapsed
        e = min(epoch, len(ends) - 2)
        return ends[e] + frac * (ends[e + 1] - ends[e])

    return refit_progress


def _clock(ctx: Context, reserve: float) -> tuple[bool, float]:
    """(stop now, seconds spent): rank 0's clock, on every rank. Everything the schedule derives from time
    (learning rate, guidance) must be equal on all ranks, or the replicas drift apart. Without a budget the
    schedule follows epochs only and nothing needs to be shared."""
    if not math.isfinite(ctx.budget.seconds):
        return False, 0.0
    left, elapsed = ctx.budget.left(), ctx.budget.elapsed()
    stop, seconds = ctx.dist.decide((left < reserve, elapsed))
    return bool(stop), float(seconds)


def _record(losses: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    return {k: float(v) / max(steps, 1) for k, v in losses.items()}


def run_phase(
    ctx: Context,
    phase: Phase,
    epochs: int,
    selection: Outcome | None = None,
    valid: tuple[np.ndarray, sp.csr_matrix] | None = None,
    share: float = 1.0,
) -> Outcome:
    """Train ``phase`` up to ``epochs`` epochs (validating when ``valid`` is given); returns its outcome."""
    from tqdm import tqdm

    cfg, dist, out = ctx.cfg, ctx.dist, phase.outcome
    progress_of = _schedule(ctx, phase, selection, share)
    n_steps = math.ceil(len(phase.edges[0]) / cfg.batch_size)
    bar = tqdm(
        total=epochs * n_steps,
        initial=out.epochs * n_steps,
        disable=not (cfg.progress and dist.is_main),
        unit="step",
        leave=False,
        desc=phase.name,
    )
    step_s, valid_s = 0.0, 0.0
    while out.epochs < epochs and not out.stopped:
        t_epoch = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        batches = phase.epoch_batches()
        steps, progress = 0, 0.0
        for i, idx in enumerate(batches):
            stop, elapsed = _clock(ctx, step_s + (valid_s if valid is not None else 0.0))
            if stop:
                out.stopped = "time budget spent"
                break
            progress = progress_of(out.epochs, i / len(batches), elapsed)
            t0 = time.perf_counter()
            losses = phase.step(idx, progress)
            step_s = time.perf_counter() - t0
            for k, v in losses.items():
                sums[k] = sums[k] + v if k in sums else v
            steps += 1
            bar.update(1)
            if i % 5 == 0:
                bar.set_postfix(
                    epoch=out.epochs + 1, loss=f"{float(sums['loss']) / steps:.4f}", p=f"{progress:.2f}"
                )
        if steps < len(batches):
            break  # a partial epoch is never counted, checkpointed or selected
        out.epochs += 1
        phase.check_replicas()
        if selection is None:  # the schedule's position at this epoch's end, for a refit to replay
            out.progress.append(progress_of(out.epochs, 0.0, _clock(ctx, 0.0)[1]))
        record: dict[str, Any] = {
            "phase": phase.name,
            "epoch": out.epochs,
            "steps": steps,
            "losses": _record(sums, steps),
        }
        record["code_prob"] = (
            code_probability(progress, cfg.code_prob_start, cfg.pure_ste_at) if not cfg.continuous else 0.0
        )
        if valid is not None and (out.epochs % cfg.valid_every == 0 or out.epochs == epochs):
            t0 = time.perf_counter()
            record["valid"] = _validate_and_select(ctx, phase, valid, record["code_prob"])
            valid_s = time.perf_counter() - t0
        record.update(
            best_epoch=out.best_epoch,
            elapsed_s=round(ctx.budget.elapsed(), 2),
            epoch_s=round(time.perf_counter() - t_epoch, 2),
        )
        if dist.is_main:
            rundir.append_metrics(ctx.out, record)
        phase.save(ctx.budget.elapsed())
        _log_epoch(cfg, record, epochs)
    bar.close()
    return out


def _validate_and_select(
    ctx: Context, phase: Phase, valid: tuple[np.ndarray, sp.csr_matrix], code_prob: float
) -> dict[str, float] | None:
    """Validate on rank 0, keep ``best.pt`` when the selection metric improves, count patience (only on
    pure codes, so a run never stops before its pure-STE phase); the outcome is broadcast to every rank."""
    cfg, out = ctx.cfg, phase.outcome
    metrics: dict[str, float] | None = None
    if ctx.dist.is_main:
        t0 = time.perf_counter()
        metrics = phase.validate(*valid)
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        key = "continuous_recall" if cfg.continuous else "hierarchical_recall"
        score = metrics.get(key, float(out.epochs))
        if score > out.best:
            out.best, out.best_epoch, out.bad = score, out.epochs, 0
            rundir.atomic_write(
                ctx.out / rundir.BEST,
                lambda tmp: torch.save(
                    {"model": phase.model.state_dict(), "epoch": out.epochs, key: score}, tmp
                ),
            )
        elif code_prob >= 1.0 or cfg.continuous:
            out.bad += 1
            if cfg.patience and out.bad >= cfg.patience:
                out.stopped = f"early stop: no improvement of {key} in {out.bad} validations"
    shared = ctx.dist.decide((out.best, out.best_epoch, out.bad, out.stopped))
    out.best, out.best_epoch, out.bad, out.stopped = shared
    return metrics


def _log_epoch(cfg: TrainConfig, record: dict[str, Any], epochs: int) -> None:
    valid = record.get("valid") or {}
    msg = " ".join(f"{k}={v:.4f}" for k, v in valid.items() if k.endswith("recall"))
    log.info(
        "%s epoch %d/%d loss %.4f %s(%.0fs)",
        record["phase"],
        record["epoch"],
        epochs,
        record["losses"].get("loss", float("nan")),
        msg + " " if msg else "",
        record["elapsed_s"],
    )


def _read_checkpoint(
    path: Path, cfg: TrainConfig, ds: Dataset, device: torch.device, dist: Dist
) -> dict[str, Any]:
    try:
        st = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # torch raises many types for a torn or foreign file
        raise RunError(f"{path}: cannot read checkpoint: {err}") from err
    if st.get("version") != CKPT_VERSION:
        raise RunError(
            f"{path}: checkpoint format {st.get('version')!r} is not this trainer's ({CKPT_VERSION})"
        )
    if st.get("config_fingerprint") != cfg.fingerprint():
        raise RunError(f"{path}: checkpoint was made with another config; refusing to resume")
    if st.get("dataset_fingerprint") != ds.fingerprint():
        raise RunError(f"{path}: checkpoint was made on another dataset (fingerprint differs); refusing")
    if st.get("world") != dist.world:
        raise RunError(f"{path}: checkpoint was made by {st.get('world')} process(es); resume with as many")
    return st


def _write_selection(out: Path, sel: Outcome, refit: dict[str, Any]) -> None:
    body = {
        "best_epoch": sel.best_epoch,
        "best_value": sel.best,
        "epochs_run": sel.epochs,
        "stopped": sel.stopped or None,
        "progress_at_epoch": sel.progress,
        "refit": refit,
    }
    rundir.write_text(out / SELECTION, json.dumps(body, indent=2) + "\n")


def read_selection(run_dir: Path) -> dict[str, Any] | None:
    """``selection.json`` of a run (the selected epoch, the refit's outcome), or None before selection ends."""
    path = Path(run_dir) / SELECTION
    return json.loads(path.read_text()) if path.exists() else None


def _select(ctx: Context, st: dict[str, Any] | None) -> Outcome:
    """Phase 1 (or its resumption): returns the selection outcome."""
    cfg, ds = ctx.cfg, ctx.ds
    phase = Phase("select", cfg, ds, ds.graph("train"), ctx.device, ctx.dist, ctx.out)
    if st is not None:
        phase.load(st)
    truth = ds.graph("valid").user_items
    users = sample_users(truth, cfg.valid_users, cfg.seed)
    valid = (users, truth) if len(users) else None
    share = 0.5 if cfg.refit and valid is not None else 1.0
    out = run_phase(ctx, phase, cfg.epochs, valid=valid, share=share)
    if out.best_epoch == 0:  # nothing validated (no validation split, or a budget too short): the last model
        if ctx.dist.is_main:
            log.warning(
                "no validated epoch: serving the model as the run left it (%d full epochs)", out.epochs
            )
            body = {"model": phase.model.state_dict(), "epoch": out.epochs}
            rundir.atomic_write(ctx.out / rundir.BEST, lambda tmp: torch.save(body, tmp))
        out.best_epoch = out.epochs
    return out


def _refit(ctx: Context, sel: Outcome, st: dict[str, Any] | None) -> dict[str, Any]:
    """Phase 2: train on train + validation for the selected epochs; ``refit.pt`` when it finishes."""
    phase = Phase("refit", ctx.cfg, ctx.ds, ctx.ds.graph("known"), ctx.device, ctx.dist, ctx.out)
    if st is not None:
        phase.load(st)
    out = run_phase(ctx, phase, sel.best_epoch, selection=sel)
    done = out.epochs >= sel.best_epoch
    if done and ctx.dist.is_main:
        rundir.atomic_write(
            ctx.out / rundir.REFIT,
            lambda tmp: torch.save({"model": phase.model.state_dict(), "epoch": out.epochs}, tmp),
        )
    return {"epochs": out.epochs, "finished": done, "stopped": out.stopped or None}


def export_embeddings(
    run_dir: Path, cfg: TrainConfig, ds: Dataset, device: torch.device | None = None
) -> dict[str, Any]:
    """Write the run's embeddings from its checkpoints; returns what was served.

    - ``embeddings.npz``: the refit model (``refit.pt``) when there is one, else the selected one
      (``best.pt``), encoded over the known graph (train + validation: observed history at serving time,
      masked at test time, the service's seen items), with its fold-in arrays;
    - ``valid_embeddings.npz``: the selected model over the training graph only, so that
      ``hashrec evaluate --split valid`` scores embeddings that never saw the validation edges.
    """
    device = device or torch.device("cpu")
    run_dir = Path(run_dir)
    served = rundir.REFIT if (run_dir / rundir.REFIT).exists() else rundir.BEST
    for name, ckpt, graph in (
        (rundir.EMBEDDINGS, served, ds.graph("known")),
        (rundir.VALID_EMBEDDINGS, rundir.BEST, ds.graph("train")),
    ):
        st = torch.load(run_dir / ckpt, map_location=device, weights_only=False)
        model = HashGNN(cfg.replace(svd_init=False), graph).to(device)  # weights are loaded at once: no init
        model.load_state_dict(st["model"])
        arrays = model.embed_all()
        if name == rundir.EMBEDDINGS:
            arrays.update(model.foldin(graph.user_items))
        rundir.save_embeddings(run_dir, arrays, name)
    return {
        "served": served,
        "epoch": int(torch.load(run_dir / served, map_location="cpu", weights_only=False)["epoch"]),
    }


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, force: bool = False) -> Path:
    """Train HashGNN as ``config`` says into ``out_dir``; returns the run directory.

    Raises RunError (a UserError) for a run directory that exists without ``force``, a checkpoint from
    another config, dataset or process count, or a missing device; DataError for unreadable data.
    """
    cfg, out = config, Path(out_dir)
    device = resolve_device(cfg.device)
    dist = setup(device)
    device = local_device(device)
    try:
        return _train(cfg, out, device, dist, resume, force)
    finally:
        dist.close()


def _train(cfg: TrainConfig, out: Path, device: torch.device, dist: Dist, resume: bool, force: bool) -> Path:
    threads = threads_per_process(cfg.threads, dist.local_world)
    torch.set_num_threads(threads)
    if device.type == "cpu":
        _keep_freed_memory()
    if not dist.is_main:  # one voice: the other ranks log warnings and errors only
        logging.getLogger("hashrec").setLevel(logging.WARNING)

    def prepare() -> bool:
        resuming = _prepare_dir(cfg, out, resume, force)
        if not resuming:
            ds = load_dataset(cfg.data)
            ds.save(out / rundir.DATASET)
            rundir.save_config(out, cfg)
        return resuming

    # rank 0 prepares the directory and saves the dataset; every rank then reads that same dataset
    resuming = dist.on_main(prepare)
    ds = Dataset.load(out / rundir.DATASET)
    if ds.n_users < 2 or ds.n_items < 2 or len(ds.train) == 0:
        raise RunError(
            f"{cfg.data.path}: too little data to train on ({ds.n_users} users, {ds.n_items} items)"
        )
    log.info(
        "training %s (%s, %d bits, %s) on %s: %d users, %d items, %d training edges; %s, %d thread(s) x %d process(es)",
        cfg.preset,
        cfg.encoder,
        cfg.bits,
        "two heads" if cfg.rerank_head else "one head",
        ds.name,
        ds.n_users,
        ds.n_items,
        len(ds.train),
        device,
        threads,
        dist.world,
    )
    st = _read_checkpoint(out / rundir.LAST, cfg, ds, device, dist) if resuming else None
    budget = Budget(60.0 * cfg.time_budget_min if cfg.time_budget_min else math.inf)
    if st is not None:
        budget.start -= float(st["elapsed"])
        log.info(
            "resumed the %s phase after epoch %d (%.0f s spent)",
            st["phase"],
            st["outcome"]["epochs"],
            st["elapsed"],
        )
        if dist.is_main:
            rundir.truncate_metrics(out, st["phase"], st["outcome"]["epochs"])
    ctx = Context(cfg, ds, device, dist, out, budget)
    sel_file = read_selection(out) if resuming else None
    if st is not None and st["phase"] == "refit" and sel_file is not None:
        sel = Outcome(
            epochs=sel_file["epochs_run"],
            best_epoch=sel_file["best_epoch"],
            best=sel_file["best_value"],
            progress=sel_file["progress_at_epoch"],
        )
    else:
        sel = _select(ctx, st if st is not None and st["phase"] == "select" else None)
        if dist.is_main:
            _write_selection(out, sel, {"done": False})
    refit: dict[str, Any] = {"done": False, "reason": "refit is off"}
    if cfg.refit and len(ds.valid) and sel.best_epoch > 0:
        refit = _refit(ctx, sel, st if st is not None and st["phase"] == "refit" else None)
        refit["done"] = refit["finished"]
    if dist.is_main:
        _write_selection(out, sel, refit)
        served = export_embeddings(out, cfg, ds, device)
        rundir.plot_curves(out)
        log.info(
            "selected epoch %d (validation %.4f); serving %s; embeddings in %s",
            sel.best_epoch,
            sel.best,
            served["served"],
            out,
        )
    dist.barrier()
    return out
