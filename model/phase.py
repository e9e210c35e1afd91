"""One training phase: the model, its optimizers and RNGs, the epoch loop, validation and checkpoints.

:func:`run_phase` trains a :class:`Phase` for up to N epochs; :mod:`hashrec.model.train` strings phases
together (select, the settings search, refit). What a phase guarantees:

- seeded and deterministic on CPU for a fixed thread count and process count (numpy Generators for the
  edge order and the negatives; torch Generators for the guidance draws and GraphSAGE's sampling; all
  checkpointed, per rank);
- a checkpoint (``last.pt``) after every epoch, written atomically, from which :meth:`Phase.load` resumes;
- no step or validation starts that the phase's deadline or the run's budget cannot hold, and a partial
  epoch is never counted, checkpointed or selected;
- distributed (torchrun): every epoch's edges are covered once across ranks, each rank takes an equal share
  of each global batch, losses go through the DDP module's forward (so gradients are synchronised), only
  rank 0 validates and writes, and every decision (stop, best epoch) is rank 0's, broadcast.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn.parallel import DistributedDataParallel

from hashrec.data import BipartiteGraph, Dataset
from hashrec.index.retriever import Retriever
from hashrec.model import run as rundir
from hashrec.model.config import TrainConfig
from hashrec.model.distributed import Dist, broadcast_from_main, sparse_param_ids, sync_sparse_grads
from hashrec.model.evaluate import score_modes
from hashrec.model.hashgnn import Batch, HashGNN
from hashrec.model.hashing import code_probability
from hashrec.model.optim import RowAdam
from hashrec.model.run import RunError
from hashrec.model.sampling import NegativeSampler, epoch_batches, shared_positive_pairs

log = logging.getLogger(__name__)

CKPT_VERSION = 3


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
    ids = sparse_param_ids(model)
    sparse = [p for p in model.parameters() if id(p) in ids]
    opts: list[torch.optim.Optimizer] = [
        torch.optim.Adam([p for p in model.parameters() if id(p) not in ids], lr=lr)
    ]
    if sparse:
        opts.append(RowAdam(sparse, lr=lr))
    return opts


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
    progress at each epoch's end (a refit replays it), its window on the run's clock (it started at
    ``start`` seconds and must end by ``deadline``; ``inf``: only the run's budget bounds it), the
    epochs its schedule is planned over (0: all it was asked for) and each epoch's seconds of training
    steps (validation excluded: what a refit of it will cost, per edge)."""

    epochs: int = 0
    best_epoch: int = 0
    best: float = -1.0
    bad: int = 0
    stopped: str = ""
    progress: list[float] = field(default_factory=list)
    start: float = 0.0
    deadline: float = math.inf
    planned: int = 0
    train_s: list[float] = field(default_factory=list)


@dataclass
class Context:
    """What every phase of a run shares: the run's config, data, device, process group, directory, budget,
    and ``refit_edges``: the edges a refit trains on per selection edge (0: no refit follows the selection)."""

    cfg: TrainConfig
    ds: Dataset
    device: torch.device
    dist: Dist
    out: Path
    budget: Budget
    refit_edges: float = 0.0


class Phase:
    """One training phase on one graph: the model, its optimizers and RNGs, the epoch loop, checkpoints."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        graph: BipartiteGraph,
        cfg: TrainConfig | None = None,
        candidate: int = 0,
    ) -> None:
        """``cfg``: the settings this phase trains with (default: the run's); ``candidate``: which of the
        settings search's candidates it is (recorded in its checkpoints)."""
        cfg = cfg or ctx.cfg
        device, dist = ctx.device, ctx.dist
        self.ctx, self.name, self.graph, self.cfg, self.candidate = ctx, name, graph, cfg, candidate
        self.floor = -math.inf  # best.pt is written only above this (an earlier candidate's best)
        torch.manual_seed(cfg.seed)
        self.model = HashGNN(cfg, graph).to(device)
        self.step_module: torch.nn.Module = self.model
        self.sparse_params: list[torch.nn.Parameter] = []  # reduced outside DDP (see below)
        if dist.enabled:
            # losses must go through the DDP module's forward: calling model.loss directly trains unsynced
            # replicas silently. GraphSAGE's heads see every parameter, but its sampled trees may not touch
            # both sides' hop layers in a step: find_unused_parameters covers that. Its sparse ID tables are
            # left out of DDP and reduced one at a time after the backward (sync_sparse_grads): DDP reduces
            # each in its own bucket, concurrently, and two sparse all-reduces at once through gloo corrupt
            # the heap in torch 2.13 ("malloc(): unaligned tcache chunk detected"; seen in CI). Its buffers
            # are the graph, the same on every rank: nothing to broadcast each step.
            sparse = sparse_param_ids(self.model)
            named = [(name, p) for name, p in self.model.named_parameters() if id(p) in sparse]
            self.sparse_params = [p for _, p in named]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self.model, [n for n, _ in named]
            )
            broadcast_from_main(self.sparse_params)  # what DDP does for the parameters it holds
            self.step_module = DistributedDataParallel(
                self.model,
                find_unused_parameters=cfg.encoder == "sage",
                broadcast_buffers=False,
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
        dist = self.ctx.dist
        states = dist.gather(self.rng_state())
        if not dist.is_main:
            return
        body = {
            "version": CKPT_VERSION,
            "phase": self.name,
            "candidate": self.candidate,
            "config_fingerprint": self.ctx.cfg.fingerprint(),
            "dataset_fingerprint": self.ctx.ds.fingerprint(),
            "world": dist.world,
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.opts],
            "rng": states,
            "outcome": self.outcome.__dict__,
            "elapsed": elapsed,
        }
        rundir.atomic_write(self.ctx.out / rundir.LAST, lambda tmp: torch.save(body, tmp))

    def load(self, st: dict[str, Any]) -> None:
        """Restore a ``last.pt`` body of this phase (checked by :func:`hashrec.model.train.read_checkpoint`)."""
        self.model.load_state_dict(st["model"])
        for o, sd in zip(self.opts, st["optimizers"], strict=True):
            o.load_state_dict(sd)
        mine = st["rng"][self.ctx.dist.rank]
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
        if self.sparse_params:  # only under DDP (see __init__)
            sync_sparse_grads(self.sparse_params)
        for o in self.opts:
            o.step()
        return {k: v.detach() for k, v in losses.items()}

    def check_replicas(self) -> None:
        """Raise RunError unless every rank holds the same parameters (a hash of them, gathered).

        DDP synchronises gradients only through its module's forward: a loss computed any other way trains
        diverging replicas without an error. This check makes that loud, after every epoch.
        """
        if not self.ctx.dist.enabled:
            return
        h = hashlib.sha256()
        for t in self.model.state_dict().values():
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        hashes = self.ctx.dist.gather(h.hexdigest())
        if len(set(hashes)) > 1:
            raise RunError(
                f"{self.name} phase: the replicas' parameters differ after epoch {self.outcome.epochs} ({hashes})"
            )

    def epoch_batches(self) -> list[np.ndarray]:
        return epoch_batches(
            len(self.edges[0]), self.cfg.batch_size, self.order_rng, self.ctx.dist.rank, self.ctx.dist.world
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


def _schedule(phase: Phase, epochs: int, selection: Outcome | None) -> Any:
    """progress(epoch, fraction of the epoch) of a phase, in [0, 1]: it drives the learning rate and the
    guidance schedules.

    Selection: the fraction of the planned epochs done (:func:`_plan` lowers the plan when the time left
    cannot hold them all, so pure STE and the low learning rate come before the deadline, and raises it
    again, before pure STE, when the epochs got cheaper). It depends on
    no clock reading, so a run whose budget holds all its epochs is as deterministic as one without a
    budget. Refit: the selection run's progress at each epoch's end, interpolated within the epoch, so it
    replays the same schedule.
    """
    out = phase.outcome
    if selection is None:

        def select_progress(epoch: int, frac: float) -> float:
            return min(1.0, (epoch + frac) / (out.planned or epochs))

        return select_progress
    ends = [0.0, *selection.progress]

    def refit_progress(epoch: int, frac: float) -> float:
        e = min(epoch, len(ends) - 2)
        return ends[e] + frac * (ends[e + 1] - ends[e])

    return refit_progress


def _plan(ctx: Context, out: Outcome, epochs: int, epoch_s: float, valid_s: float, grow: bool) -> None:
    """After a selection epoch that took ``epoch_s`` seconds (``valid_s`` of them validating): set
    ``out.planned`` to the most epochs that the time left can hold, never below those done, never above
    ``epochs``; rank 0's figure.

    The price of an epoch to come is the latest one's: epochs only get cheaper as the heads reach pure STE
    (a guided step computes a code and a continuous product), so the plan set after the first, slowest
    epoch is pessimistic. The plan must hold (1) the rest of the selection before its deadline (or the
    run's budget) and (2) with a refit, the selection's rest plus the refit's replay of every planned epoch
    (each done epoch at its own training seconds, the rest at the latest's, times ``ctx.refit_edges``)
    plus the export (about two validations) before the run's budget ends. ``grow``: the plan may rise
    again (only before pure STE: later, a longer plan would move the learning rate and guidance back).
    """
    elapsed = ctx.budget.elapsed()
    end = min(ctx.budget.seconds, out.deadline)
    if not math.isfinite(end):
        return
    fits = out.epochs + int(max(end - elapsed, 0.0) // max(epoch_s, 1e-9))
    if ctx.refit_edges > 0 and math.isfinite(ctx.budget.seconds):
        refit_done = ctx.refit_edges * sum(out.train_s)
        left = ctx.budget.seconds - elapsed - refit_done - 2.0 * valid_s
        price = epoch_s + ctx.refit_edges * out.train_s[-1]
        fits = min(fits, out.epochs + int(max(left, 0.0) // max(price, 1e-9)))
    planned = max(out.epochs, min(epochs if grow else (out.planned or epochs), fits))
    out.planned = int(ctx.dist.decide(planned))


def clock(ctx: Context, reserve: float = 0.0, deadline: float = math.inf) -> bool:
    """Stop now? True when ``reserve`` more seconds would pass the run's budget or ``deadline``. Rank 0's
    clock decides for every rank (a rank that stops alone would hang the others in the next all-reduce);
    without a budget or deadline nothing is read or shared."""
    end = min(ctx.budget.seconds, deadline)
    if not math.isfinite(end):
        return False
    return bool(ctx.dist.decide(ctx.budget.elapsed() + reserve > end))


def _record(losses: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    return {k: float(v) / max(steps, 1) for k, v in losses.items()}


def run_phase(
    ctx: Context,
    phase: Phase,
    epochs: int,
    selection: Outcome | None = None,
    valid: tuple[np.ndarray, sp.csr_matrix] | None = None,
) -> Outcome:
    """Train ``phase`` up to ``epochs`` epochs (validating when ``valid`` is given) within its window
    (``phase.outcome.start``/``deadline``); returns its outcome. ``selection``: the selection outcome whose
    schedule a refit replays."""
    from tqdm import tqdm

    cfg, dist, out = phase.cfg, ctx.dist, phase.outcome
    progress_of = _schedule(phase, epochs, selection)
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
    while out.epochs < (out.planned or epochs) and not out.stopped:
        t_epoch = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        batches = phase.epoch_batches()
        steps, progress = 0, 0.0
        for i, idx in enumerate(batches):
            if clock(ctx, step_s + (valid_s if valid is not None else 0.0), out.deadline):
                out.stopped = "time budget spent"
                break
            progress = progress_of(out.epochs, i / len(batches))
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
            out.progress.append(progress_of(out.epochs, 0.0))
            out.train_s.append(float(dist.decide(time.perf_counter() - t_epoch)))
        record: dict[str, Any] = {
            "phase": phase.name,
            "candidate": phase.candidate,
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
        if selection is None:
            before_pure = out.progress[-1] < max(cfg.pure_ste_at, cfg.code_pure_ste_at)
            _plan(ctx, out, epochs, time.perf_counter() - t_epoch, valid_s, grow=before_pure)
            if out.planned and out.planned < epochs and out.epochs >= out.planned:
                out.stopped = f"time budget: planned {out.planned} of {epochs} epochs"
        record["planned_epochs"] = out.planned or epochs
        if dist.is_main:
            rundir.append_metrics(ctx.out, record)
        phase.save(ctx.budget.elapsed())
        _log_epoch(cfg, record, epochs)
    bar.close()
    return out


def _validate_and_select(
    ctx: Context, phase: Phase, valid: tuple[np.ndarray, sp.csr_matrix], code_prob: float
) -> dict[str, float] | None:
    """Validate on rank 0, track the phase's best epoch, write ``best.pt`` when it also beats
    ``phase.floor`` (the earlier candidates' best), count patience (only on pure codes, so a run never stops
    before its pure-STE phase); the outcome is broadcast to every rank."""
    cfg, out = phase.cfg, phase.outcome
    metrics: dict[str, float] | None = None
    if ctx.dist.is_main:
        t0 = time.perf_counter()
        metrics = phase.validate(*valid)
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        key = "continuous_recall" if cfg.continuous else "hierarchical_recall"
        score = metrics.get(key, float(out.epochs))
        if score > out.best:
            out.best, out.best_epoch, out.bad = score, out.epochs, 0
            if score > phase.floor:
                body = {"model": phase.model.state_dict(), "epoch": out.epochs, "candidate": phase.candidate}
                rundir.atomic_write(ctx.out / rundir.BEST, lambda tmp: torch.save(body | {key: score}, tmp))
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
