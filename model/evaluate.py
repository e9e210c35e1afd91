"""``hashrec evaluate``: the LightGCN protocol on a trained run, in three retrieval modes.

Protocol (docs/evaluation.md): every user with a non-empty truth row ranks *all* items; the items the user
already knows are masked; Recall@K and NDCG@K (LightGCN definitions, :mod:`hashrec.model.metrics`) are
averaged over those users. Modes, all through the Retriever (:mod:`hashrec.index.retriever`), so what is
measured is what is served:

- ``continuous``: :meth:`Retriever.exact`, every item ranked by the re-rank vectors;
- ``hamming``: :meth:`Retriever.recall` with C = K, ranking by the Hamming distance of the codes (ties:
  smaller item id);
- ``hierarchical``: :meth:`Retriever.recall` (Hamming top-C) then :meth:`Retriever.rerank`, for each C.

The Hamming top-``Cmax`` is computed once per batch of users; the top-C for smaller C, and the
Hamming-only top-K, are its prefixes, since the (distance, id) order is total. Training validation calls
:func:`rank_modes` too, on the validation users with the training items masked.

Usage::

    hashrec evaluate runs/gowalla-default --json
    hashrec evaluate runs/gowalla-default --k 20 --candidates 50,100,200,500,1000

Outputs RUN_DIR/eval.json, RUN_DIR/eval.md and RUN_DIR/eval_recall_vs_c.png (``eval_valid.*`` for
``--split valid``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from hashrec.data import DataConfig, DataError, Dataset, load_dataset
from hashrec.index.retriever import Retriever

from .metrics import hit_matrix, recall_ndcg
from .run import EMBEDDINGS, VALID_EMBEDDINGS, Run, load_run

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES: tuple[int, ...] = (50, 100, 200, 500, 1000)
MODES: tuple[str, ...] = ("continuous", "hamming", "hierarchical")
HAMMING_TIE_RULE = "Hamming distance ascending, then item id ascending"
RERANK_TIE_RULE = "inner product of the re-rank vectors descending, then item id ascending"


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate.

    Attributes:
        k: list length (Recall@k, NDCG@k).
        candidates: the C values of the hierarchical mode (each >= k; clipped to the number of items).
        split: ``test`` (mask train + validation, score on test) or ``valid`` (mask train, score on
            validation, with the run's selection-time embeddings: never the test set).
        batch_size: users per batch.
        progress: show a tqdm bar on stderr.
        index_type: FAISS binary index of the recall stage: ``flat`` (exact, the default) or an approximate
            ``ivf`` / ``hnsw`` with its default parameters, to measure the end-to-end effect of the index.
    """

    k: int = 20
    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    split: Literal["test", "valid"] = "test"
    batch_size: int = 1024
    progress: bool = True
    index_type: str = "flat"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k: expected >= 1, got {self.k}")
        if not self.candidates:
            raise ValueError("candidates: expected at least one value")
        bad = [c for c in self.candidates if c < self.k]
        if bad:
            raise ValueError(f"candidates: every C must be >= k = {self.k}, got {bad}")
        if self.split not in ("test", "valid"):
            raise ValueError(f"split: expected test or valid, got {self.split!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")
        if self.index_type not in ("flat", "ivf", "hnsw"):
            raise ValueError(f"index_type: expected flat, ivf or hnsw, got {self.index_type!r}")


def parse_candidates(text: str) -> tuple[int, ...]:
    """Parse ``"50,100,200"`` into sorted unique ints; raises ValueError naming the bad value."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            c = int(part)
        except ValueError:
            raise ValueError(f"--candidates: {part!r} is not an integer") from None
        if c < 1:
            raise ValueError(f"--candidates: {c} must be >= 1")
        out.append(c)
    if not out:
        raise ValueError("--candidates: expected a comma-separated list of integers")
    return tuple(sorted(set(out)))


# -- ranking in every mode -------------------------------------------------------------------------------


def rank_modes(
    retriever: Retriever,
    users: np.ndarray,
    k: int,
    candidates: Sequence[int],
    modes: Sequence[str] = MODES,
    batch_size: int = 1024,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Top-``k`` lists of internal ``users`` in each mode, their seen items excluded, and the seconds spent.

    Returns:
        (tops, timing): ``tops`` maps ``"continuous"``, ``"hamming"`` and ``"hierarchical@C"`` (each C of
        ``candidates``, clipped to the number of items) to int64 [len(users), k] item ids (-1 = empty slot);
        ``timing`` has ``continuous_s``, ``hamming_stage_s`` and ``rerank_s`` (per C).
    """
    n_items = retriever.n_items
    k = min(k, n_items)
    cs = sorted({min(c, n_items) for c in candidates})
    tops: dict[str, np.ndarray] = {}
    if "continuous" in modes:
        tops["continuous"] = np.empty((len(users), k), np.int64)
    if "hamming" in modes:
        tops["hamming"] = np.empty((len(users), k), np.int64)
    if "hierarchical" in modes:
        tops.update({f"hierarchical@{c}": np.empty((len(users), k), np.int64) for c in cs})
    t_cont = t_ham = 0.0
    t_rerank = dict.fromkeys(cs, 0.0)
    starts = range(0, len(users), batch_size)
    for s in tqdm(starts, desc="evaluate", unit="batch", disable=not progress, leave=False):
        b = np.asarray(users[s : s + batch_size], dtype=np.int64)
        rows = slice(s, s + len(b))
        codes, vectors = retriever.user_rows(b)
        seen = [retriever.seen_items(int(u)) for u in b]
        if "continuous" in tops:
            t = time.perf_counter()
            tops["continuous"][rows] = retriever.exact(vectors, k, seen)[1]
            t_cont += time.perf_counter() - t
        if "hamming" not in tops and "hierarchical" not in modes:
            continue
        t = time.perf_counter()
        # one Hamming pass at the largest C: smaller C (and the Hamming-only top-k) are its prefixes
        _dist, cand = retriever.recall(codes, max(cs[-1], k), seen)
        t_ham += time.perf_counter() - t
        if "hamming" in tops:
            tops["hamming"][rows] = cand[:, :k]
        for c in cs if "hierarchical" in modes else ():
            t = time.perf_counter()
            tops[f"hierarchical@{c}"][rows] = retriever.rerank(vectors, cand[:, :c], k)[1]
            t_rerank[c] += time.perf_counter() - t
    timing = {
        "continuous_s": round(t_cont, 3),
        "hamming_stage_s": round(t_ham, 3),
        "rerank_s": {str(c): round(v, 3) for c, v in t_rerank.items()},
    }
    return tops, timing


def _overlap(a: np.ndarray, b: np.ndarray, n_items: int) -> float:
    """Mean |a_u ∩ b_u| / k over rows (both [n, k] item ids < n_items; -1 never matches)."""
    k = a.shape[1]
    ok = b >= 0
    truth = sp.csr_matrix(
        (np.ones(int(ok.sum()), np.float32), (np.nonzero(ok)[0], b[ok])), shape=(b.shape[0], n_items)
    )
    return float(hit_matrix(a, truth).sum(axis=1).mean() / k) if len(a) else 0.0


def score_modes(
    retriever: Retriever,
    truth: sp.csr_matrix,
    users: np.ndarray,
    k: int,
    candidates: Sequence[int],
    modes: Sequence[str] = MODES,
) -> dict[str, float]:
    """``{"<mode>_recall": .., "<mode>_ndcg": ..}`` of :func:`rank_modes` (validation during training).

    With several C the hierarchical figures are those of the largest.
    """
    tops, _timing = rank_modes(retriever, users, k, candidates, modes)
    t = sp.csr_matrix(truth)[users]
    out: dict[str, float] = {}
    cmax = max(min(c, retriever.n_items) for c in candidates)
    for name, top in tops.items():
        mode, _, c = name.partition("@")
        if c and int(c) != cmax:
            continue
        m = recall_ndcg(top, t, min(k, retriever.n_items))
        out[f"{mode}_recall"], out[f"{mode}_ndcg"] = float(m["recall"]), float(m["ndcg"])
    return out


def evaluate_retriever(
    retriever: Retriever, truth: sp.csr_matrix, cfg: EvalConfig | None = None
) -> dict[str, Any]:
    """Evaluate the three modes of a Retriever whose seen items are the masked ones.

    Args:
        retriever: its codes, vectors and seen items (the mask: never recommended, never counted).
        truth: CSR [n_users, n_items] of the held-out items; users with an empty row are not evaluated.
        cfg: options (:class:`EvalConfig`).

    Returns:
        A JSON-ready dict: ``rows`` (one per mode and C: mode, candidates, k, recall, ndcg, precision,
        hit_rate, overlap_at_k = mean share of the continuous top-k found), ``users``, ``items``, ``bits``,
        ``dim``, ``timing`` (seconds per stage and total) and the tie rules.
    """
    cfg = cfg or EvalConfig()
    truth = sp.csr_matrix(truth)
    n_items = retriever.n_items
    k = min(cfg.k, n_items)
    users = np.flatnonzero(np.diff(truth.indptr)).astype(np.int64)
    log.info(
        "evaluating %d users x %d items, %d bits, C in %s",
        len(users),
        n_items,
        retriever.bits,
        cfg.candidates,
    )
    t0 = time.perf_counter()
    tops, timing = rank_modes(retriever, users, k, cfg.candidates, MODES, cfg.batch_size, cfg.progress)
    t_rank = time.perf_counter() - t0
    t = truth[users]
    rows: list[dict[str, Any]] = []
    for name, top in tops.items():
        mode, _, c = name.partition("@")
        m = recall_ndcg(top, t, k)
        rows.append(
            {
                "mode": mode,
                "candidates": int(c) if c else None,
                "k": k,
                "recall": m["recall"],
                "ndcg": m["ndcg"],
                "precision": m["precision"],
                "hit_rate": m["hit_rate"],
                "overlap_at_k": _overlap(top, tops["continuous"], n_items),
            }
        )
    timing["total_s"] = round(t_rank, 3)
    return {
        "rows": rows,
        "users": len(users),
        "items": n_items,
        "bits": retriever.bits,
        "dim": retriever.bundle.dim,
        "k": k,
        "index_type": retriever.bundle.index_type,
        "protocol": "all-item ranking, known items masked, LightGCN Recall@K / NDCG@K (IDCG over min(|test|, K))",
        "hamming_tie_rule": HAMMING_TIE_RULE,
        "rerank_tie_rule": RERANK_TIE_RULE,
        "timing": timing,
    }


def evaluate_arrays(
    user_z: np.ndarray,
    item_z: np.ndarray,
    known: sp.csr_matrix,
    truth: sp.csr_matrix,
    cfg: EvalConfig | None = None,
    *,
    user_vectors: np.ndarray | None = None,
    item_vectors: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_retriever` on arrays: codes ``sign(z)``, re-rank vectors (default ``z``), mask ``known``."""
    cfg = cfg or EvalConfig()
    retriever = Retriever.from_arrays(
        user_z,
        item_z,
        known,
        user_vectors=user_vectors,
        item_vectors=item_vectors,
        index_type=cfg.index_type,
        threads=os.cpu_count() or 1,
    )
    return {**evaluate_retriever(retriever, truth, cfg), "split": cfg.split}


# -- run directories -----------------------------------------------------------------------------------


def split_matrices(ds: Dataset, split: Literal["test", "valid"]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(mask, truth) CSR matrices: test -> (train + valid, test); valid -> (train, valid)."""
    if split == "test":
        return ds.graph("known").user_items, ds.graph("test").user_items
    return ds.graph("train").user_items, ds.graph("valid").user_items


def _check_data(run: Run, data_path: str | Path) -> None:
    base = run.dataset.config.to_json() if run.dataset.config is not None else {}
    ds = load_dataset(DataConfig(**{**base, "path": str(data_path)}))
    if ds.fingerprint() != run.dataset.fingerprint():
        raise DataError(
            f"{run.path / 'dataset'}: the run was trained on different data, ids or splits than {data_path} "
            "(fingerprints differ); evaluate on the run's own dataset (omit --data)"
        )


def evaluate_run(
    run_dir: str | Path, cfg: EvalConfig | None = None, data_path: str | Path | None = None
) -> dict[str, Any]:
    """Evaluate a run directory (see :func:`evaluate_retriever`); adds ``run_dir`` and ``dataset`` keys.

    ``data_path``: reload the dataset from there with the run's loading options and refuse it unless it is
    the run's own (same fingerprint). Raises DataError (a RunError) naming the broken or missing file.
    """
    cfg = cfg or EvalConfig()
    # the validation split is scored with the selected model over the training graph only: embeddings that
    # never saw the validation edges (the served embeddings.npz did, and may come from a refit on them)
    run = load_run(run_dir, VALID_EMBEDDINGS if cfg.split == "valid" else EMBEDDINGS)
    if data_path is not None:
        _check_data(run, data_path)
    ds = run.dataset
    mask, truth = split_matrices(ds, cfg.split)
    if truth.nnz == 0:
        raise DataError(f"{run_dir}: the dataset has no {cfg.split} interactions to evaluate on")
    out = evaluate_arrays(
        run.user_z, run.item_z, mask, truth, cfg, user_vectors=run.user_vectors, item_vectors=run.item_vectors
    )
    return {"run_dir": str(run_dir), "dataset": ds.name, **out}


# -- reports ---------------------------------------------------------------------------------------------


def markdown_table(result: dict[str, Any]) -> str:
    """The rows of a result as a markdown table (mode, C, Recall@k, NDCG@k, overlap with continuous)."""
    k = result["k"]
    lines = [
        f"| mode | C | Recall@{k} | NDCG@{k} | overlap@{k} with continuous |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        c = "" if r["candidates"] is None else str(r["candidates"])
        lines.append(f"| {r['mode']} | {c} | {r['recall']:.4f} | {r['ndcg']:.4f} | {r['overlap_at_k']:.3f} |")
    return "\n".join(lines)


def plot_recall_vs_c(
    results: Sequence[tuple[str, dict[str, Any]]],
    path: str | Path,
    refs: Sequence[tuple[str, float]] = (),
    title: str | None = None,
) -> Path:
    """Recall@k against C (hierarchical, log x axis), with continuous and Hamming as horizontal lines.

    ``results`` is a list of (label, evaluate result), one colour per result; ``refs`` adds grey
    horizontal reference lines (label, Recall@k), e.g. baselines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, res) in enumerate(results):
        color = f"C{i}"
        hier = [r for r in res["rows"] if r["mode"] == "hierarchical"]
        cont = next(r for r in res["rows"] if r["mode"] == "continuous")
        ham = next(r for r in res["rows"] if r["mode"] == "hamming")
        prefix = f"{label}: " if label else ""
        ax.plot(
            [r["candidates"] for r in hier],
            [r["recall"] for r in hier],
            "o-",
            color=color,
            label=f"{prefix}hierarchical",
        )
        ax.axhline(cont["recall"], color=color, ls="--", lw=1, label=f"{prefix}continuous")
        ax.axhline(ham["recall"], color=color, ls=":", lw=1, label=f"{prefix}Hamming only")
    for j, (label, value) in enumerate(refs):
        ax.axhline(value, color="0.4", ls=["-.", (0, (1, 3)), "--"][j % 3], lw=1, label=label)
    k = results[0][1]["k"] if results else 20
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xscale("log")
    ticks = sorted(
        {r["candidates"] for _, res in results for r in res["rows"] if r["mode"] == "hierarchical"}
    )
    if ticks:  # label the measured C values themselves, not powers of ten
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel("C (Hamming candidates re-ranked)")
    ax.set_ylabel(f"Recall@{k}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def write_reports(run_dir: str | Path, result: dict[str, Any]) -> list[Path]:
    """Write RUN_DIR/eval.json, eval.md and eval_recall_vs_c.png; returns their paths.

    A validation-split result goes to eval_valid.* instead, so it never replaces the test figures.
    """
    rd = Path(run_dir)
    stem = "eval" if result["split"] == "test" else f"eval_{result['split']}"
    js = rd / f"{stem}.json"
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(js)
    md = rd / f"{stem}.md"
    t = result["timing"]
    md.write_text(
        f"# Evaluation of {rd.name}\n\n"
        f"Split: {result['split']}, {result['users']:,} users x {result['items']:,} items, "
        f"{result['bits']}-bit codes, Hamming stage on a FAISS {result.get('index_type', 'flat')} index. "
        f"{result['protocol']}.\n\n"
        f"{markdown_table(result)}\n\n"
        f"Hamming ties: {result['hamming_tie_rule']}; re-rank ties: {result['rerank_tie_rule']}.\n"
        f"Time: continuous {t['continuous_s']} s, Hamming stage {t['hamming_stage_s']} s (C = "
        f"{max(int(c) for c in t['rerank_s'])}), re-rank {sum(t['rerank_s'].values()):.3f} s, "
        f"total {t['total_s']} s.\n"
    )
    png = plot_recall_vs_c([("", result)], rd / f"{stem}_recall_vs_c.png")
    return [js, md, png]
