"""CLI commands of the index area (registered by ``hashrec.cli``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this area's subcommands (none yet)."""
