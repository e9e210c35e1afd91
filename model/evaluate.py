"""``hashrec evaluate``: the LightGCN protocol on a trained run, in three retrieval modes.

Protocol (GUIDE.md section 3): every user with a non-empty test row ranks *all* items; the items the user
already knows (train + validation) are masked; Recall@K and NDCG@K (LightGCN definitions, see
:mod:`hashrec.model.metrics`) are averaged over those users. Modes:

- ``continuous``: rank by the inner product of the continuous embeddings z (the model without its codes);
- ``hamming``: rank by the Hamming distance of the codes ``sign(z)``; ties: smaller distance first, then
  smaller item id (the rule of :mod:`hashrec.index.search`, the serving path);
- ``hierarchical``: the paper's search: Hamming top-C, then re-rank those C by the continuous inner product
  (ties: larger score first, then smaller item id), for each C.

The Hamming and hierarchical modes run the serving code path (the index's Hamming recall stage and re-rank
stage) rather than a re-implementation, so what is measured is what is served. The Hamming top-``Cmax`` is
computed once per batch of users; the top-C for smaller C is its prefix, since the (distance, id) order is
total. The Hamming-only top-K is the same prefix with C = K.

Usage::

    hashrec evaluate runs/gowalla-default --json
    hashrec evaluate runs/gowalla-default --k 20 --candidates 50,100,200,500,1000

Outputs RUN_DIR/eval.json, RUN_DIR/eval.md and RUN_DIR/eval_recall_vs_c.png.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from .data import DataConfig, DataError, Dataset, load_dataset
from .metrics import hit_matrix, recall_ndcg, topk_by_score

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES: tuple[int, ...] = (50, 100, 200, 500, 1000)
HAMMING_TIE_RULE = "Hamming distance ascending, then item id ascending"
RERANK_TIE_RULE = "inner product of z descending, then item id ascending"


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate.

    Attributes:
        k: list length (Recall@k, NDCG@k).
        candidates: the C values of the hierarchical mode (each >= k; clipped to the number of items).
        split: ``test`` (mask train + validation, score on test) or ``valid`` (mask train, score on
            validation: for model selection, never the test set).
        batch_size: users per batch (memory ~ ``batch_size * n_items * 8`` bytes per stage).
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


# -- the two serving stages ----------------------------------------------------------------------------


class _Stages:
    """The Retriever's Hamming recall stage and re-rank stage (the serving code path), on in-memory arrays."""

    def __init__(
        self, user_z: np.ndarray, item_z: np.ndarray, known: sp.csr_matrix, threads: int, index_type: str
    ) -> None:
        from hashrec.index.retriever import Retriever

        # seen = the masked items: the Retriever excludes a user's seen items in its recall stage, exactly
        # as the service does (exclude_seen=True)
        self.retriever = Retriever.from_arrays(user_z, item_z, known, threads=threads, index_type=index_type)
        self.user_z = user_z

    def hamming(self, users: np.ndarray, c: int) -> np.ndarray:
        """int64 [len(users), c] candidate ids by (distance, id); -1 where fewer than c items remain."""
        _d, idx = self.retriever.recall_stage(users, c, exclude_seen=True)
        return idx

    def rerank(self, users: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
        """int64 [len(users), k] of the candidates re-ranked by (score desc, id asc)."""
        _s, top = self.retriever.rerank_stage(self.user_z[users], cand, k)
        return top


# -- evaluation on arrays ------------------------------------------------------------------------------


def _check_embeddings(user_z: np.ndarray, item_z: np.ndarray, n_users: int, n_items: int, where: str) -> None:
    from hashrec.index.codes import check_bits

    for name, a, n in (("user_z", user_z, n_users), ("item_z", item_z, n_items)):
        if a.ndim != 2:
            raise DataError(f"{where}: {name} must be 2-D, got shape {a.shape}")
        if a.shape[0] != n:
            raise DataError(
                f"{where}: {name} has {a.shape[0]} rows but the dataset has {n}; "
                "the embeddings do not belong to this dataset"
            )
        if not np.isfinite(a).all():
            raise DataError(f"{where}: {name} contains NaN or infinite values")
    if user_z.shape[1] != item_z.shape[1]:
        raise DataError(f"{where}: user_z has {user_z.shape[1]} dims but item_z has {item_z.shape[1]}")
    try:
        check_bits(int(user_z.shape[1]))
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None


def _overlap(a: np.ndarray, b: np.ndarray, n_items: int) -> float:
    """Mean |a_u ∩ b_u| / k over rows (both [n, k] item ids < n_items; -1 never matches)."""
    k = a.shape[1]
    ok = b >= 0
    truth = sp.csr_matrix(
        (np.ones(int(ok.sum()), np.float32), (np.nonzero(ok)[0], b[ok])), shape=(b.shape[0], n_items)
    )
    return float(hit_matrix(a, truth).sum(axis=1).mean() / k) if len(a) else 0.0


def rank_all_modes(
    user_z: np.ndarray,
    item_z: np.ndarray,
    known: sp.csr_matrix,
    users: np.ndarray,
    k: int,
    candidates: Sequence[int],
    batch_size: int = 1024,
    progress: bool = False,
    threads: int | None = None,
    index_type: str = "flat",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Top-``k`` lists of the given users in every mode, and the seconds spent per stage.

    Returns:
        (tops, timing): ``tops`` maps ``"continuous"``, ``"hamming"`` and ``"hierarchical@C"`` (each C of
        ``candidates``, clipped to the number of items) to int64 [len(users), k] item ids (``-1`` = empty
        slot); ``timing`` has ``continuous_s``, ``hamming_stage_s`` and ``rerank_s`` (per C).
        ``threads`` is the FAISS thread count of the recall stage (default: all cores); ``index_type`` its
        FAISS index (``flat`` = exact).
    """
    import os

    threads = threads or os.cpu_count() or 1
    n_items = item_z.shape[0]
    k = min(k, n_items)
    cs = sorted({min(c, n_items) for c in candidates})
    t0 = time.perf_counter()
    cont = topk_by_score(user_z, item_z, k, mask_csr=known, users=users, batch_size=batch_size)
    t_cont = time.perf_counter() - t0

    stages = _Stages(user_z, item_z, known, threads, index_type)
    ham = np.empty((len(users), k), dtype=np.int64)
    hier = {c: np.empty((len(users), k), dtype=np.int64) for c in cs}
    t_ham = 0.0
    t_rerank = dict.fromkeys(cs, 0.0)
    starts = range(0, len(users), batch_size)
    for s in tqdm(starts, desc="hamming + re-rank", unit="batch", disable=not progress, leave=False):
        b = users[s : s + batch_size]
        t = time.perf_counter()
        # one Hamming pass at the largest C: smaller C (and the Hamming-only top-k) are its prefixes
        cand = stages.hamming(b, cs[-1])
        t_ham += time.perf_counter() - t
        ham[s : s + len(b)] = cand[:, :k]
        for c in cs:
            t = time.perf_counter()
            hier[c][s : s + len(b)] = stages.rerank(b, cand[:, :c], k)
            t_rerank[c] += time.perf_counter() - t
    tops = {"continuous": cont, "hamming": ham, **{f"hierarchical@{c}": v for c, v in hier.items()}}
    timing = {
        "continuous_s": round(t_cont, 3),
        "hamming_stage_s": round(t_ham, 3),
        "rerank_s": {str(c): round(v, 3) for c, v in t_rerank.items()},
    }
    return tops, timing


def evaluate_arrays(
    user_z: np.ndarray,
    item_z: np.ndarray,
    known: sp.csr_matrix,
    truth: sp.csr_matrix,
    cfg: EvalConfig | None = None,
) -> dict[str, Any]:
    """Evaluate continuous, Hamming and hierarchical retrieval of one model.

    Args:
        user_z: float32 [n_users, K] continuous user outputs; the codes are ``sign(z)``.
        item_z: float32 [n_items, K] continuous item outputs.
        known: CSR [n_users, n_items] of the items masked at ranking time.
        truth: CSR [n_users, n_items] of the held-out items; users with an empty row are not evaluated.
        cfg: options (:class:`EvalConfig`).

    Returns:
        A JSON-ready dict: ``rows`` (one per mode and C: mode, candidates, k, recall, ndcg, precision,
        hit_rate, overlap_at_k = mean share of the continuous top-k found), ``users``, ``items``, ``bits``,
        ``timing`` (seconds per stage and total) and the tie rules.
    """
    cfg = cfg or EvalConfig()
    user_z = np.asarray(user_z, dtype=np.float32)
    item_z = np.asarray(item_z, dtype=np.float32)
    n_items = item_z.shape[0]
    k = min(cfg.k, n_items)
    known = sp.csr_matrix(known)
    truth = sp.csr_matrix(truth)
    users = np.flatnonzero(np.diff(truth.indptr)).astype(np.int64)
    log.info(
        "evaluating %d users x %d items, K=%d bits, C in %s",
        len(users),
        n_items,
        user_z.shape[1],
        cfg.candidates,
    )
    t0 = time.perf_counter()
    tops, timing = rank_all_modes(
        user_z,
        item_z,
        known,
        users,
        k,
        cfg.candidates,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        index_type=cfg.index_type,
    )
    t_rank = time.perf_counter() - t0
    t = truth[users]
    cont = tops["continuous"]
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
                "overlap_at_k": _overlap(top, cont, n_items),
            }
        )
    timing["total_s"] = round(t_rank, 3)
    return {
        "rows": rows,
        "users": len(users),
        "items": n_items,
        "bits": int(user_z.shape[1]),
        "k": k,
        "split": cfg.split,
        "index_type": cfg.index_type,
        "protocol": "all-item ranking, known items masked, LightGCN Recall@K / NDCG@K (IDCG over min(|test|, K))",
        "hamming_tie_rule": HAMMING_TIE_RULE,
        "rerank_tie_rule": RERANK_TIE_RULE,
        "timing": timing,
    }


# -- run directories -----------------------------------------------------------------------------------


def load_run_arrays(
    run_dir: str | Path, data_path: str | Path | None = None
) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """(dataset, user_z, item_z) of a run directory (``dataset/`` + ``embeddings.npz``).

    With ``data_path`` the dataset is reloaded from that path with the run's saved loading options (or the
    defaults when the run saved none) and must have the run's fingerprint (same ids and splits).
    Raises DataError naming the file when something is missing, unreadable or does not match.
    """
    rd = Path(run_dir)
    if not rd.is_dir():
        raise DataError(f"{rd}: no such run directory")
    saved: Dataset | None = None
    if (rd / "dataset" / "dataset.json").is_file():
        saved = Dataset.load(rd / "dataset")
    if data_path is not None:
        base = saved.config.to_json() if saved is not None and saved.config is not None else {}
        ds = load_dataset(DataConfig(**{**base, "path": str(data_path)}))
        if saved is not None and saved.fingerprint() != ds.fingerprint():
            raise DataError(
                f"{rd / 'dataset'}: the run was trained on different data, ids or splits than {data_path} "
                "(fingerprints differ); evaluate on the run's own dataset (omit --data)"
            )
    elif saved is not None:
        ds = saved
    else:
        raise DataError(f"{rd / 'dataset'}: the run directory has no saved dataset; pass --data PATH")
    emb = rd / "embeddings.npz"
    if not emb.is_file():
        raise DataError(f"{emb}: missing (training has not finished; embeddings are written at the end)")
    try:
        with np.load(emb, allow_pickle=False) as z:
            missing = [key for key in ("user_z", "item_z") if key not in z.files]
            if missing:
                raise DataError(f"{emb}: missing array(s) {', '.join(missing)} (found {', '.join(z.files)})")
            user_z, item_z = z["user_z"], z["item_z"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{emb}: cannot be read: {err}") from err
    _check_embeddings(user_z, item_z, ds.n_users, ds.n_items, str(emb))
    return ds, user_z.astype(np.float32), item_z.astype(np.float32)


def split_matrices(ds: Dataset, split: Literal["test", "valid"]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(mask, truth) CSR matrices: test -> (train + valid, test); valid -> (train, valid)."""
    if split == "test":
        return ds.graph("known").user_items, ds.graph("test").user_items
    return ds.graph("train").user_items, ds.graph("valid").user_items


def evaluate_run(
    run_dir: str | Path, cfg: EvalConfig | None = None, data_path: str | Path | None = None
) -> dict[str, Any]:
    """Evaluate a run directory (see :func:`evaluate_arrays`); adds ``run_dir`` and ``dataset`` keys."""
    cfg = cfg or EvalConfig()
    ds, user_z, item_z = load_run_arrays(run_dir, data_path)
    mask, truth = split_matrices(ds, cfg.split)
    if truth.nnz == 0:
        raise DataError(f"{run_dir}: the dataset has no {cfg.split} interactions to evaluate on")
    out = evaluate_arrays(user_z, item_z, mask, truth, cfg)
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
