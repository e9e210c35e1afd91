"""Shared fixtures: a small synthetic dataset (no downloads) and a private redis-server on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support import RedisProcess
from hashrec.data import Dataset
from hashrec.data.synthetic import SyntheticConfig, synthetic_dataset


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A small planted-community dataset (600 users, 400 items), loaded through the real CSV loader."""
    cfg = SyntheticConfig(n_users=600, n_items=400, n_communities=8, mean_interactions=20, seed=7)
    return synthetic_dataset(cfg, tmp_path_factory.mktemp("synth"))


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh private redis-server for one test; killed afterwards."""
    srv = RedisProcess(tmp_path)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
