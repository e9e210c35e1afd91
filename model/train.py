"""The training run: ``train(config, out_dir)`` -> a run directory (layout in :mod:`hashrec.model.run`).

Run it (the same command for one process and for torchrun, which the trainer detects by itself)::

    hashrec train --data ../shared/data/gowalla --out runs/gowalla --time-budget 30
    hashrec train --data ../shared/data/gowalla --out runs/gowalla-paper --preset paper
    hashrec train --data ml-100k/u.data --out runs/ml --resume          # continue a killed run
    torchrun --standalone --nproc-per-node=2 -m hashrec train --data ... --out runs/ddp

Two phases, each a :class:`hashrec.model.phase.Phase` (one epoch loop, its guarantees there):

1. **select**: train on the training split, validate every ``valid_every`` epochs (hierarchical
   Recall@select_k through the Retriever, the serving path), keep the best epoch (``best.pt``), stop early
   after ``patience`` validations without improvement (only once the guidance schedule is pure STE). Then
   the **settings search** (``tune``): each candidate is trained and validated the same way, on the training
   split only, while the time left allows (``tune_max_min``); the best validated candidate wins;
2. **refit** (``refit``): the winner's settings again from the same initialisation, on train + validation,
   for its selected number of epochs, replaying its schedule epoch by epoch; that model is served. A refit
   that the time budget cannot finish is dropped and the selected model is served (``selection.json`` says).

Every choice (epoch, settings, refit length) is made on validation; the test split is never read here.
The time budget covers the whole run (validation, search and refit included): the selection gets half of it
when refitting, each search candidate an equal share of what is left, and no step or validation starts
that the remaining time cannot hold. ``resume=True`` continues a killed run from ``last.pt`` in any phase or
candidate, and without a time budget continues exactly as if never killed; a checkpoint from another config,
dataset or process count is refused.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from hashrec.data import BipartiteGraph, Dataset, load_dataset
from hashrec.model import ensemble
from hashrec.model import run as rundir
from hashrec.model.config import TrainConfig
from hashrec.model.distributed import Dist, local_device, setup, threads_per_process
from hashrec.model.hashgnn import HashGNN
from hashrec.model.phase import CKPT_VERSION, Budget, Context, Outcome, Phase, run_phase, sample_users
from hashrec.model.run import RunError

log = logging.getLogger(__name__)

SELECTION = "selection.json"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error naming the field."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


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
    """Ask glibc to keep freed memory for reuse instead of handing big blocks back to the OS.

    A default-preset step allocates and frees several [batch x shared items] matrices of 128 MB; by default
    glibc maps each one afresh and the kernel zeroes its pages again at every step. Served from a heap that is
    never mapped out nor trimmed, a Gowalla step on 2 cores takes 1.73 s instead of 3.20 s, 0.04 s of it
    system time instead of 2.46 s (``benchmarks/train_memory.py``). The cost: the process keeps its peak memory.
    No-op where glibc's mallopt is not available (macOS, musl).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(ctypes.c_int(-4), ctypes.c_int(0))  # M_MMAP_MAX = 0: every block from the heap
        libc.mallopt(ctypes.c_int(-1), ctypes.c_int(2**31 - 1))  # M_TRIM_THRESHOLD: never trim the heap
    except (OSError, AttributeError):
        pass


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


@dataclass
class Candidate:
    """One settings-search candidate's selection: its ``tune`` entry ("" = the run's own settings), its
    outcome (best epoch and value, the schedule a refit replays) and its wall time."""

    entry: str
    outcome: Outcome
    seconds: float

    def to_json(self) -> dict[str, Any]:
        o = self.outcome
        return {
            "tune": self.entry,
            "best_epoch": o.best_epoch,
            "best_value": o.best,
            "epochs_run": o.epochs,
            "stopped": o.stopped or None,
            "progress_at_epoch": o.progress,
            "seconds": round(self.seconds, 1),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Candidate:
        outcome = Outcome(
            epochs=d["epochs_run"],
            best_epoch=d["best_epoch"],
            best=d["best_value"],
            stopped=d["stopped"] or "",
            progress=d["progress_at_epoch"],
        )
        return cls(d["tune"], outcome, d["seconds"])


@dataclass
class Selection:
    """The selection phase's result: every candidate trained so far, and how the search ended (None while
    it goes on)."""

    candidates: list[Candidate]
    search: str | None = None

    @property
    def winner(self) -> int:
        """The candidate with the best validation value (the earliest on a tie: the run's own settings)."""
        return max(range(len(self.candidates)), key=lambda i: (self.candidates[i].outcome.best, -i))


def _write_selection(out: Path, sel: Selection, refit: dict[str, Any]) -> None:
    w = sel.candidates[sel.winner]
    body = {
        "winner": sel.winner,
        "tune": w.entry,
        "best_epoch": w.outcome.best_epoch,
        "best_value": w.outcome.best,
        "epochs_run": w.outcome.epochs,
        "stopped": w.outcome.stopped or None,
        "progress_at_epoch": w.outcome.progress,
        "search": sel.search,
        "candidates": [c.to_json() for c in sel.candidates],
        "refit": refit,
    }
    rundir.write_text(out / SELECTION, json.dumps(body, indent=2) + "\n")


def read_selection(run_dir: Path) -> dict[str, Any] | None:
    """``selection.json`` of a run (the candidates, the winner and its selected epoch, the refit's outcome),
    or None before the first candidate's selection ends."""
    path = Path(run_dir) / SELECTION
    return json.loads(path.read_text()) if path.exists() else None


def _validation(ctx: Context) -> tuple[np.ndarray, sp.csr_matrix] | None:
    truth = ctx.ds.graph("valid").user_items
    users = sample_users(truth, ctx.cfg.valid_users, ctx.cfg.seed)
    return (users, truth) if len(users) else None


def _select_one(
    ctx: Context, index: int, st: dict[str, Any] | None, floor: float, window: tuple[float, float]
) -> Candidate:
    """Train and validate candidate ``index`` (resuming from ``st`` when given) within ``window`` (start,
    deadline on the run's clock); ``best.pt`` is replaced only by an epoch above ``floor``."""
    entry, cfg = ctx.cfg.candidates()[index]
    phase = Phase(ctx, "select", ctx.ds.graph("train"), cfg, candidate=index)
    phase.floor = floor
    if st is not None:
        phase.load(st)
    else:
        phase.outcome.start, phase.outcome.deadline = window
    if entry:
        log.info("settings search: candidate %d, %s", index, entry)
    out = run_phase(ctx, phase, cfg.epochs, valid=_validation(ctx))
    if out.best_epoch == 0 and index == 0:  # nothing validated (no validation split, or a budget too short)
        if ctx.dist.is_main:
            log.warning(
                "no validated epoch: serving the model as the run left it (%d full epochs)", out.epochs
            )
            body = {"model": phase.model.state_dict(), "epoch": out.epochs, "candidate": index}
            rundir.atomic_write(ctx.out / rundir.BEST, lambda tmp: torch.save(body, tmp))
        out.best_epoch = out.epochs
    return Candidate(entry, out, float(ctx.dist.decide(ctx.budget.elapsed() - out.start)))


def _search_stop(ctx: Context, sel: Selection, select_end: float) -> str | None:
    """Why the settings search should not train the next candidate (None: train it). Rank 0 decides."""
    first, left = sel.candidates[0], len(ctx.cfg.candidates()) - len(sel.candidates)
    why = None
    if first.outcome.stopped.startswith("time budget"):
        why = "the run's own settings used the whole selection budget"
    elif first.seconds > 60.0 * ctx.cfg.tune_max_min:
        why = f"one candidate took {first.seconds / 60:.1f} min > tune_max_min ({ctx.cfg.tune_max_min:g})"
    elif (select_end - ctx.budget.elapsed()) / left < 1.1 * first.seconds:
        why = f"the selection budget left cannot hold {left} more candidate(s)"
    return ctx.dist.decide(why)


def _select(ctx: Context, st: dict[str, Any] | None, saved: dict[str, Any] | None) -> Selection:
    """Phase 1: the run's own settings, then the settings search (or their resumption from ``st``, the
    select-phase checkpoint, and ``saved``, the selection file so far)."""
    cfg = ctx.cfg
    sel = Selection([Candidate.from_json(c) for c in (saved or {}).get("candidates", [])])
    sel.search = (saved or {}).get("search")
    share = 0.5 if cfg.refit and _validation(ctx) is not None else 1.0
    select_end = ctx.budget.seconds * share
    n = len(cfg.candidates())
    if _validation(ctx) is None and n > 1:
        sel.search = "no validation split: nothing to search on"
    while sel.search is None and len(sel.candidates) < n:
        i = len(sel.candidates)
        resumed = st if st is not None and st.get("candidate") == i else None
        if i > 0 and resumed is None:
            sel.search = _search_stop(ctx, sel, select_end)
            if sel.search is not None:
                log.info("settings search stopped: %s", sel.search)
                break
        start = float(ctx.dist.decide(ctx.budget.elapsed()))  # rank 0's clock: one window on every rank
        deadline = select_end if i == 0 else start + (select_end - start) / (n - i)
        floor = max((c.outcome.best for c in sel.candidates), default=-math.inf)
        sel.candidates.append(_select_one(ctx, i, resumed, floor, (start, deadline)))
        if len(sel.candidates) == n:
            sel.search = f"all {n} candidate(s) trained"
        if ctx.dist.is_main:
            _write_selection(ctx.out, sel, {"done": False})
    return sel


def _refit(ctx: Context, sel: Selection, st: dict[str, Any] | None) -> dict[str, Any]:
    """Phase 2: the winner's settings on train + validation for its selected epochs, replaying its
    schedule; ``refit.pt`` when it finishes."""
    win = sel.candidates[sel.winner]
    cfg = ctx.cfg.candidates()[sel.winner][1]
    phase = Phase(ctx, "refit", ctx.ds.graph("known"), cfg, candidate=sel.winner)
    if st is not None:
        phase.load(st)
    else:
        phase.outcome.start = float(ctx.dist.decide(ctx.budget.elapsed()))
    out = run_phase(ctx, phase, win.outcome.best_epoch, selection=win.outcome)
    done = out.epochs >= win.outcome.best_epoch
    if done and ctx.dist.is_main:
        body = {"model": phase.model.state_dict(), "epoch": out.epochs, "candidate": sel.winner}
        rundir.atomic_write(ctx.out / rundir.REFIT, lambda tmp: torch.save(body, tmp))
    return {"epochs": out.epochs, "finished": done, "stopped": out.stopped or None}


def export_embeddings(
    run_dir: Path, cfg: TrainConfig, ds: Dataset, device: torch.device | None = None
) -> dict[str, Any]:
    """Write the run's embeddings from its checkpoints; returns what was served.

    - ``embeddings.npz``: the refit model (``refit.pt``) when there is one, else the selected one
      (``best.pt``), encoded over the known graph (train + validation: observed history at serving time,
      masked at test time, the service's seen items), with its fold-in arrays; with a refit and
      ``serve_both``, the refit's codes and both models' re-rank vectors side by side
      (:func:`hashrec.model.ensemble.join`: the served score is the sum of the two models' scores);
    - ``valid_embeddings.npz``: the selected model over the training graph only, so that
      ``hashrec evaluate --split valid`` scores embeddings that never saw the validation edges.

    Each checkpoint names its settings-search candidate; the model is built with that candidate's settings.
    """
    device = device or torch.device("cpu")
    run_dir = Path(run_dir)
    refit = (run_dir / rundir.REFIT).exists()
    served = rundir.REFIT if refit else rundir.BEST
    served_st = torch.load(run_dir / served, map_location=device, weights_only=False)
    best_st = (
        torch.load(run_dir / rundir.BEST, map_location=device, weights_only=False) if refit else served_st
    )
    known = ds.graph("known")
    arrays = _embed(served_st, cfg, known, device, foldin=True)
    both = refit and cfg.serve_both
    if both:
        arrays = ensemble.join(arrays, _embed(best_st, cfg, known, device, foldin=True))
    rundir.save_embeddings(run_dir, arrays, rundir.EMBEDDINGS)
    valid = _embed(best_st, cfg, ds.graph("train"), device, foldin=False)
    rundir.save_embeddings(run_dir, valid, rundir.VALID_EMBEDDINGS)
    return {"served": f"{rundir.REFIT} + {rundir.BEST}" if both else served, "epoch": int(served_st["epoch"])}


def _embed(
    st: dict[str, Any], cfg: TrainConfig, graph: BipartiteGraph, device: torch.device, foldin: bool
) -> dict[str, np.ndarray]:
    """A checkpoint's model (``st``: its loaded dict) encoded over ``graph`` (``HashGNN.embed_all``, and
    its fold-in arrays)."""
    settings = cfg.candidates()[st.get("candidate", 0)][1]
    model = HashGNN(settings.replace(svd_init=False), graph).to(device)  # weights loaded at once: no init
    model.load_state_dict(st["model"])
    arrays = model.embed_all()
    if foldin:
        arrays.update(model.foldin(graph.user_items))
    return arrays


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
        run_dir = _train(cfg, out, device, dist, resume, force)
    except BaseException:
        dist.close(clean=False)
        raise
    dist.close()
    return run_dir


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
            rundir.truncate_metrics(out, st["phase"], st["candidate"], st["outcome"]["epochs"])
    refit_edges = (
        (len(ds.train) + len(ds.valid)) / max(len(ds.train), 1) if cfg.refit and len(ds.valid) else 0.0
    )
    ctx = Context(cfg, ds, device, dist, out, budget, refit_edges)
    saved = read_selection(out) if resuming else None
    if st is not None and st["phase"] == "refit" and saved is not None:
        sel = _select(ctx, None, saved)  # finished: rebuilt from the file, nothing trained
    else:
        sel = _select(ctx, st if st is not None and st["phase"] == "select" else None, saved)
    win = sel.candidates[sel.winner]
    refit: dict[str, Any] = {"done": False, "reason": "refit is off"}
    if cfg.refit and len(ds.valid) and win.outcome.best_epoch > 0:
        refit = _refit(ctx, sel, st if st is not None and st["phase"] == "refit" else None)
        refit["done"] = refit["finished"]
    if dist.is_main:
        _write_selection(out, sel, refit)
        served = export_embeddings(out, cfg, ds, device)
        rundir.plot_curves(out)
        log.info(
            "selected %s, epoch %d (validation %.4f); serving %s; embeddings in %s",
            win.entry or "the run's own settings",
            win.outcome.best_epoch,
            win.outcome.best,
            served["served"],
            out,
        )
    dist.barrier()
    return out
