"""The ``hashrec`` command line: one entry point, subcommands registered by each area of the code.

Each area keeps its commands next to its code (``model/cli.py``, ``index/cli.py``, ``service/cli.py``)
and exposes ``register(subparsers)``; ``python -m hashrec`` is the same entry point (torchrun runs it). Registration must stay cheap: heavy imports
(torch, faiss, fastapi) happen inside the command handlers, so ``hashrec --help`` answers at once.

Exit codes: 0 success, 1 a failed check (e.g. ``bundle verify``), 2 bad input (a clear message is logged).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .logs import setup_logging

log = logging.getLogger("hashrec")


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every area's subcommands."""
    from hashrec import demo
    from hashrec.index import cli as index_cli
    from hashrec.model import cli as model_cli
    from hashrec.service import cli as service_cli

    parser = argparse.ArgumentParser(
        prog="hashrec",
        description="HashGNN learning-to-hash recommender: train, export a binary index, serve.",
    )
    parser.add_argument("--version", action="version", version=f"hashrec {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in (model_cli, index_cli, service_cli, demo):
        area.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    from hashrec.data.errors import UserError

    try:
        return int(args.func(args) or 0)
    except UserError as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except BrokenPipeError:
        # `hashrec ... | head`: the reader left; say nothing more and do not flush into the closed pipe.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
