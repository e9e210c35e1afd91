"""``hashrec bench retrieval`` (not written yet)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench retrieval`` (nothing yet)."""
