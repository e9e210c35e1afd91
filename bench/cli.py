"""``hashrec bench ...``: each benchmark lives in its own module and registers itself here."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its subcommands (quality, retrieval, service, ...)."""
    from . import faults, fuzz, quality, retrieval, service, soak

    p = sub.add_parser("bench", help="benchmarks: print results and save them (JSON + docs/benchmarks.md)")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for mod in (quality, retrieval, service, fuzz, faults, soak):
        mod.register(bsub)
