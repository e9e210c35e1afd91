"""Fixtures of the index tests (helpers live in index_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import write_run

from hashrec.data import Dataset


@pytest.fixture()
def run_dir(tmp_path: Path, synth_dataset: Dataset) -> Path:
    """A fresh run directory on the shared synthetic dataset (600 users, 400 items, 32 bits)."""
    return write_run(tmp_path / "run", synth_dataset)
