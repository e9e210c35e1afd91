"""The ``hashrec evaluate`` subcommand (parser and handler; the work is in :mod:`hashrec.model.evaluate`)."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from hashrec.data import UserError
    from hashrec.model.evaluate import (
        EvalConfig,
        evaluate_run,
        markdown_table,
        parse_candidates,
        write_reports,
    )

    try:
        cfg = EvalConfig(
            k=args.k,
            candidates=parse_candidates(args.candidates),
            split=args.split,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            index_type=args.index,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    result = evaluate_run(args.run_dir, cfg, data_path=args.data)
    paths = write_reports(args.run_dir, result)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    if args.json:
        print(json.dumps(result))
    else:
        print(markdown_table(result))
        print(f"\n{result['users']:,} users, total {result['timing']['total_s']} s")
    return 0


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg, unused-ignore]
    """Register ``evaluate RUN_DIR [--data PATH] [--json] [--k 20] [--candidates ...] [--split ...]``."""
    ev = sub.add_parser(
        "evaluate",
        help="Recall/NDCG of a run: continuous, Hamming and hierarchical (LightGCN protocol)",
        description="All-item ranking for every test user, known (train + validation) items masked; "
        "writes RUN_DIR/eval.json, eval.md and eval_recall_vs_c.png.",
    )
    ev.add_argument("run_dir", help="run directory (dataset/ + embeddings.npz)")
    ev.add_argument(
        "--data",
        default=None,
        help="reload the dataset from PATH with the run's saved loading options (it must match the run's "
        "dataset exactly); needed only when the run has no dataset/",
    )
    ev.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ev.add_argument("--k", type=int, default=20, help="cut-off K of Recall@K / NDCG@K (default 20)")
    ev.add_argument(
        "--candidates",
        default="50,100,200,500,1000",
        help="C values of the hierarchical mode, comma-separated (default 50,100,200,500,1000)",
    )
    ev.add_argument(
        "--split", default="test", choices=["test", "valid"], help="test (default) or valid (model selection)"
    )
    ev.add_argument("--batch-size", type=int, default=1024, help="users per batch (default 1024)")
    ev.add_argument(
        "--index",
        default="flat",
        choices=["flat", "ivf", "hnsw"],
        help="FAISS binary index of the Hamming stage: flat (exact, default) or approximate ivf / hnsw",
    )
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(func=_cmd_evaluate)
