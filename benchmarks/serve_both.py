"""Does serving two models (the sum of their re-rank scores) beat each alone? Decided on validation only.

    python benchmarks/serve_both.py RUN_A RUN_B --out /tmp/serve_both.json

RUN_A and RUN_B: two runs of the same dataset and splits trained on the training split (for example a
default run, whose ``valid_embeddings.npz`` is its selected model, and ``hashrec train ... --seed 1
--set refit=false``). Each run's ``valid_embeddings.npz`` (its selected model over the training graph: it
never saw the validation edges) is scored on the validation split with ``hashrec evaluate``'s protocol and
Retriever path: A alone, B alone, and A's codes with both models' re-rank vectors joined the way the
trainer serves a refit and its selected model (:func:`hashrec.model.ensemble.join`), the second model
weighted 1 and 0.5. The test split is never read. docs/training.md ("Why serve both") quotes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from common import add_out, md_table, report, setup_logging

from hashrec.model import ensemble
from hashrec.model.evaluate import EvalConfig, evaluate_arrays, split_matrices
from hashrec.model.run import VALID_EMBEDDINGS, Run, RunError, load_run

CANDIDATES = (200, 1000)


def arrays(run: Run) -> dict[str, np.ndarray]:
    return {
        "user_z": run.user_z,
        "item_z": run.item_z,
        "user_vectors": run.user_vectors,
        "item_vectors": run.item_vectors,
    }


def score(name: str, emb: dict[str, np.ndarray], run: Run) -> list[dict[str, Any]]:
    """Validation rows (mode, C, recall, ndcg) of one set of embeddings."""
    mask, truth = split_matrices(run.dataset, "valid")
    cfg = EvalConfig(k=20, candidates=CANDIDATES, split="valid", progress=False)
    res = evaluate_arrays(
        emb["user_z"],
        emb["item_z"],
        mask,
        truth,
        cfg,
        user_vectors=emb["user_vectors"],
        item_vectors=emb["item_vectors"],
    )
    return [
        {"model": name, "mode": r["mode"], "C": r["candidates"], "recall": r["recall"], "ndcg": r["ndcg"]}
        for r in res["rows"]
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_a", type=Path, help="a run trained on the training split (its codes are served)")
    p.add_argument("run_b", type=Path, help="a second run of the same data and splits")
    add_out(p)
    args = p.parse_args()
    setup_logging()
    a, b = load_run(args.run_a, VALID_EMBEDDINGS), load_run(args.run_b, VALID_EMBEDDINGS)
    if a.dataset.fingerprint() != b.dataset.fingerprint():
        raise RunError(f"{args.run_a} and {args.run_b} were trained on different data or splits")
    ea, eb = arrays(a), arrays(b)
    rows = score("A", ea, a) + score("B", eb, a)
    for w in (1.0, 0.5):
        rows += score(
            f"A + {w:g} B (A's codes)", ensemble.join(ea, {**eb, "user_vectors": w * eb["user_vectors"]}), a
        )
    table = md_table(
        ["model", "mode", "C", "Recall@20", "NDCG@20"],
        [[r["model"], r["mode"], r["C"] or "", f"{r['recall']:.4f}", f"{r['ndcg']:.4f}"] for r in rows],
    )
    payload = {"run_a": str(args.run_a), "run_b": str(args.run_b), "split": "valid", "rows": rows}
    report("Serving two models, validation split", table, payload, args.out, "python " + " ".join(sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
