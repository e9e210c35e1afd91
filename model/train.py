"""The training loop: ``train(config, out_dir)`` -> a run directory (layout in :mod:`hashrec.model.run`).

Run it::

    hashrec train --data ../shared/data/gowalla --out runs/gowalla-default --time-budget 30
    hashrec train --data ../shared/data/gowalla --out runs/gowalla-paper --preset paper
    hashrec train --data ml-100k/u.data --out runs/ml --resume          # continue a killed run

What it guarantees:

- seeded and deterministic on CPU (numpy Generator for batches and negatives; a torch Generator for the
  guidance draws; a torch Generator on the model's device for GraphSAGE's neighbour sampling; all
  checkpointed), for a fixed thread count;
- a checkpoint (``last.pt``: model, optimizer, the RNG states, epoch, counters, elapsed time, best result)
  after every epoch, written atomically; ``resume=True`` continues from it, so a run killed at any moment
  loses at most the epoch in progress, and without a time budget it continues exactly as if never killed;
- a checkpoint whose config or dataset fingerprint differs from the run's is refused; an existing run
  directory is never overwritten unless ``force=True``;
- early stopping on validation Recall@k of the hierarchical search (Hamming top-C + continuous re-rank),
  the continuous ranking for the continuous baseline; ``best.pt`` holds the best model and
  ``embeddings.npz`` is written from it at the end;
- the guidance schedule follows training *progress*: the larger of the epoch fraction and, with a time
  budget, the fraction of the budget spent, so pure STE is reached before training ends either way.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hashrec.data import Dataset, load_dataset
from hashrec.index.retriever import Retriever
from hashrec.model import run as rundir
from hashrec.model.config import TrainConfig
from hashrec.model.evaluate import score_modes
from hashrec.model.hashgnn import HashGNN
from hashrec.model.hashing import code_probability
from hashrec.model.optim import RowAdam
from hashrec.model.run import RunError
from hashrec.model.sampling import NegativeSampler, edge_batches

log = logging.getLogger(__name__)

CKPT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error naming the field."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def _prepare_dir(cfg: TrainConfig, out: Path, resume: bool, force: bool) -> bool:
    """Create or check the run directory; returns True when resuming from a checkpoint."""
    exists = out.exists() and any(out.iterdir())
    if resume:
        if not (out / rundir.LAST).exists():
            if exists and not force:
                raise RunError(f"{out}: --resume given but there is no {rundir.LAST} to resume from")
            log.info("%s: nothing to resume, starting a new run", out)
            if exists:
                shutil.rmtree(out)
            return False
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
    if exists:
        if not force:
            raise RunError(f"{out}: run directory exists and is not empty; use --resume or --force")
        log.warning("%s: --force: removing the existing run", out)
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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    rundir.atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return dict(rng.bit_generator.state)


def sample_users(truth: Any, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` users (sorted) that have validation items, chosen with ``seed`` (0 = all of them)."""
    have = np.flatnonzero(np.diff(truth.indptr) > 0)
    if n == 0 or n >= len(have):
        return have
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(have, n, replace=False))


def make_optimizers(model: torch.nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    """Adam for dense parameters, RowAdam for embeddings with sparse gradients (GraphSAGE's ID tables).

    RowAdam (:mod:`hashrec.model.optim`, SparseAdam's maths) updates only the rows a batch touched ("lazy"
    Adam); with dense tables (LightGCN propagates every embedding each step) it is plain Adam.
    """
    sparse = [
        m.weight
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding) and m.sparse and m.weight.requires_grad
    ]
    ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in ids]
    opts: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=lr)]
    if sparse:
        opts.append(RowAdam(sparse, lr=lr))
    return opts


class Trainer:
    """One training run (built by :func:`train`); separate so tests can poke at a step."""

    def __init__(self, cfg: TrainConfig, out: Path, ds: Dataset, device: torch.device) -> None:
        self.cfg, self.out, self.ds, self.device = cfg, out, ds, device
        self.graph = ds.graph("train")
        torch.manual_seed(cfg.seed)
        self.model = HashGNN(cfg, self.graph).to(device)
        self.opts = make_optimizers(self.model, cfg.lr)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        # GraphSAGE's neighbour sampling draws on the model's device (no host round trip on a GPU).
        self.sample_gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.sampler = NegativeSampler(self.graph)
        self.edges = self.graph.edges()
        self.steps_per_epoch = math.ceil(self.graph.n_edges / cfg.batch_size)
        # Validation: the users are fixed once (seeded), training items masked.
        self.valid_truth = ds.graph("valid").user_items
        self.valid_users = sample_users(self.valid_truth, cfg.valid_users, cfg.seed)
        self.epoch = 0  # epochs finished
        self.elapsed = 0.0  # training seconds spent before this process (resume)
        self.best: float = -1.0
        self.best_epoch = 0
        self.bad = 0  # validations without improvement
        self.stopped = ""

    # -- checkpoints --------------------------------------------------------------------------------------
    def state(self, elapsed: float) -> dict[str, Any]:
        return {
            "version": CKPT_VERSION,
            "config_fingerprint": self.cfg.fingerprint(),
            "dataset_fingerprint": self.ds.fingerprint(),
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.opts],
            "numpy_rng": _rng_state(self.rng),
            "torch_rng": self.gen.get_state(),
            "sample_rng": self.sample_gen.get_state(),
            "epoch": self.epoch,
            "elapsed": elapsed,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad": self.bad,
            "stopped": self.stopped,
        }

    def load(self, path: Path) -> None:
        """Restore a ``last.pt`` (refusing one from another config or dataset)."""
        try:
            st = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as err:  # torch raises many types for a torn or foreign file
            raise RunError(f"{path}: cannot read checkpoint: {err}") from err
        if st.get("config_fingerprint") != self.cfg.fingerprint():
            raise RunError(f"{path}: checkpoint was made with another config; refusing to resume")
        if st.get("dataset_fingerprint") != self.ds.fingerprint():
            raise RunError(f"{path}: checkpoint was made on another dataset (fingerprint differs); refusing")
        self.model.load_state_dict(st["model"])
        for o, sd in zip(self.opts, st["optimizers"], strict=True):
            o.load_state_dict(sd)
        self.rng.bit_generator.state = st["numpy_rng"]
        # RNG states are CPU byte tensors whatever map_location moved them to.
        self.gen.set_state(st["torch_rng"].cpu())
        if "sample_rng" in st:
            self.sample_gen.set_state(st["sample_rng"].cpu())
        else:  # a checkpoint from before device-side sampling: same config, a fresh sampling stream
            log.warning("%s: no neighbour-sampling RNG state; resuming with a freshly seeded one", path)
        self.epoch, self.elapsed = int(st["epoch"]), float(st["elapsed"])
        self.best, self.best_epoch, self.bad = float(st["best"]), int(st["best_epoch"]), int(st["bad"])
        self.stopped = str(st.get("stopped", ""))

    # -- validation ---------------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validation metrics of the current model (empty when there is no validation split)."""
        if len(self.valid_users) == 0:
            return {}
        uz, iz = self.model.embed_all()
        modes = ("continuous",) if self.cfg.continuous else ("continuous", "hamming", "hierarchical")
        retriever = Retriever.from_arrays(uz, iz, self.graph.user_items, threads=torch.get_num_threads())
        return score_modes(
            retriever,
            self.valid_truth,
            self.valid_users,
            self.cfg.select_k,
            [self.cfg.select_candidates],
            modes,
        )

    def selection_key(self) -> str:
        return "continuous_recall" if self.cfg.continuous else "hierarchical_recall"

    # -- the loop -----------------------------------------------------------------------------------------
    def progress(self, epoch_float: float, elapsed: float) -> float:
        p = epoch_float / self.cfg.epochs
        if self.cfg.time_budget_min:
            p = max(p, elapsed / (60.0 * self.cfg.time_budget_min))
        return min(p, 1.0)

    def run(self) -> None:
        cfg = self.cfg
        t0 = time.perf_counter() - self.elapsed
        budget = 60.0 * cfg.time_budget_min if cfg.time_budget_min else math.inf
        from tqdm import tqdm

        total = cfg.epochs * self.steps_per_epoch
        bar = tqdm(
            total=total,
            initial=self.epoch * self.steps_per_epoch,
            disable=not cfg.progress,
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )
        users_all, items_all = self.edges
        while self.epoch < cfg.epochs and not self.stopped:
            ep_t0 = time.perf_counter()
            # Summed as tensors: reading a loss value waits for the device, so it is done every few steps.
            sums: dict[str, torch.Tensor] = {}
            n_batches = 0
            prob = 0.0
            out_of_time = False
            for bi, idx in enumerate(edge_batches(len(users_all), cfg.batch_size, self.rng)):
                now = time.perf_counter() - t0
                if now >= budget:
                    out_of_time = True
                    break
                progress = self.progress(self.epoch + bi / self.steps_per_epoch, now)
                # The continuous baseline never uses codes (the logged probability says so).
                prob = (
                    0.0
                    if cfg.continuous
                    else code_probability(progress, cfg.code_prob_start, cfg.pure_ste_at)
                )
                if cfg.lr_schedule == "cosine":
                    lr = cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))
                    for o in self.opts:
                        for group in o.param_groups:
                            group["lr"] = lr
                u, p = users_all[idx], items_all[idx]
                neg = self.sampler.sample(u, cfg.negatives, self.rng)
                shared = (
                    self.rng.integers(0, self.graph.n_items, cfg.shared_negatives, dtype=np.int64)
                    if (cfg.softmax_weight > 0 or cfg.cont_weight > 0) and cfg.shared_negatives
                    else np.empty(0, np.int64)
                )
                losses = self.model.loss(u, p, neg, shared, prob, self.sample_gen, self.gen)
                for o in self.opts:
                    o.zero_grad(set_to_none=True)
                losses["loss"].backward()
                for o in self.opts:
                    o.step()
                for k, v in losses.items():
                    sums[k] = sums[k] + v.detach() if k in sums else v.detach()
                n_batches += 1
                bar.update(1)
                if bi % 5 == 0:
                    rate = (bi + 1) * cfg.batch_size / max(time.perf_counter() - ep_t0, 1e-9)
                    bar.set_postfix(
                        epoch=self.epoch + 1,
                        loss=f"{float(sums['loss']) / n_batches:.4f}",
                        edges_s=f"{rate:,.0f}",
                        p=f"{prob:.2f}",
                    )
            if n_batches == 0:
                self.stopped = "time budget spent"
                break
            partial = out_of_time
            self.epoch += 1
            elapsed = time.perf_counter() - t0
            last = self.epoch >= cfg.epochs or elapsed >= budget
            if out_of_time or elapsed >= budget:
                self.stopped = "time budget spent"
            valid: dict[str, float] = {}
            if self.epoch % cfg.valid_every == 0 or last or self.stopped:
                tv = time.perf_counter()
                valid = self.validate()
                valid["seconds"] = round(time.perf_counter() - tv, 2)
                self._select(valid, prob)
            record = {
                "epoch": self.epoch,
                "partial_epoch": partial,
                "steps": n_batches,
                "losses": {k: float(v) / n_batches for k, v in sums.items()},
                "code_prob": prob,
                "valid": valid or None,
                "best_epoch": self.best_epoch,
                "elapsed_s": round(time.perf_counter() - t0, 2),
                "epoch_s": round(time.perf_counter() - ep_t0, 2),
                "edges_per_s": round(n_batches * cfg.batch_size / max(time.perf_counter() - ep_t0, 1e-9)),
            }
            rundir.append_metrics(self.out, record)
            _atomic_torch_save(self.state(time.perf_counter() - t0), self.out / rundir.LAST)
            msg = " ".join(f"{k}={v:.4f}" for k, v in valid.items() if k.endswith("recall"))
            log.info(
                "epoch %d/%d loss %.4f p=%.2f %s(%.0fs)",
                self.epoch,
                cfg.epochs,
                record["losses"]["loss"],
                prob,
                msg + " " if msg else "",
                record["elapsed_s"],
            )
        bar.close()
        if self.stopped:
            log.info("stopped after epoch %d: %s", self.epoch, self.stopped)

    def _select(self, valid: dict[str, float], prob: float = 1.0) -> None:
        """Keep ``best.pt`` when the selection metric improves; count patience only on pure codes.

        Early stopping waits until the guidance schedule has reached pure STE (``prob == 1``): otherwise a
        run could stop while still partly continuous, and the schedule would never reach pure codes.
        """
        key = self.selection_key()
        score = valid.get(key)
        if score is None:  # no validation split: the latest model is the best we know
            score = float(self.epoch)
        if score > self.best:
            self.best, self.best_epoch, self.bad = score, self.epoch, 0
            _atomic_torch_save(
                {"model": self.model.state_dict(), "epoch": self.epoch, key: score}, self.out / rundir.BEST
            )
        elif prob >= 1.0 or self.cfg.continuous:
            self.bad += 1
            if self.cfg.patience and self.bad >= self.cfg.patience:
                self.stopped = f"early stop: no improvement of {key} in {self.bad} validations"

    def finish(self) -> None:
        """Write ``embeddings.npz`` from ``best.pt`` (see :func:`export_embeddings`) and ``curves.png``."""
        if not (self.out / rundir.BEST).exists():  # stopped before any validation: select the current model
            self._select(self.validate())
        epoch = export_embeddings(self.out, self.cfg, self.ds, self.device)
        rundir.plot_curves(self.out)
        log.info(
            "best epoch %d (%s %.4f); embeddings written to %s",
            epoch,
            self.selection_key(),
            self.best,
            self.out,
        )


def export_embeddings(
    run_dir: Path, cfg: TrainConfig, ds: Dataset, device: torch.device | None = None
) -> int:
    """Write ``embeddings.npz`` from ``best.pt``; returns the best epoch.

    The encoder is applied to the *known* graph (train + validation interactions): the weights were fitted
    and selected with the validation interactions held out, but once selection is done those interactions
    are observed history like any other (they are masked at test time and are the service's "seen" items),
    so the users' and items' representations include them. The model's parameters do not depend on the
    graph (ID embeddings and dense layers), so the same weights apply; fold-in uses the same graph.
    """
    device = device or torch.device("cpu")
    best = torch.load(Path(run_dir) / rundir.BEST, map_location=device, weights_only=False)
    graph = ds.graph("known")
    # No SVD or rotation init: the weights are overwritten at once.
    model = HashGNN(cfg.replace(svd_init=False), graph).to(device)
    model.load_state_dict(best["model"])
    uz, iz = model.embed_all()
    arrays = {"user_z": uz, "item_z": iz, **model.foldin(graph.user_items)}
    rundir.save_embeddings(Path(run_dir), arrays)
    return int(best["epoch"])


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, force: bool = False) -> Path:
    """Train HashGNN as ``config`` says into ``out_dir``; returns the run directory.

    Raises RunError (a DataError) for a run directory that exists without ``force``, a checkpoint from another
    config or dataset, or a missing device; DataError for unreadable data. See the module docstring.
    """
    out = Path(out_dir)
    cfg = config
    device = resolve_device(cfg.device)
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if device.type == "cpu":
        _keep_freed_memory()
    resuming = _prepare_dir(cfg, out, resume, force)
    if resuming:
        ds = Dataset.load(out / rundir.DATASET)
    else:
        ds = load_dataset(cfg.data)
        ds.save(out / rundir.DATASET)
        rundir.save_config(out, cfg)
    if ds.n_users < 2 or ds.n_items < 2 or len(ds.train) == 0:
        raise RunError(
            f"{cfg.data.path}: too little data to train on ({ds.n_users} users, {ds.n_items} items)"
        )
    log.info(
        "training %s (%s, %d bits%s) on %s: %d users, %d items, %d training edges; device %s, %d threads",
        cfg.preset,
        cfg.encoder,
        cfg.bits,
        ", continuous" if cfg.continuous else "",
        ds.name,
        ds.n_users,
        ds.n_items,
        len(ds.train),
        device,
        threads,
    )
    trainer = Trainer(cfg, out, ds, device)
    if resuming:
        trainer.load(out / rundir.LAST)
        rundir.truncate_metrics(out, trainer.epoch)
        log.info("resumed after epoch %d (%.0f s spent)", trainer.epoch, trainer.elapsed)
    trainer.run()
    trainer.finish()
    return out
