"""Shared fixtures and options: a small synthetic dataset (no downloads), a private redis-server on a free
port, and the opt-in long end-to-end runs.

Long runs (the soak, the full fault and fuzz reports) are marked ``soak`` and skipped unless asked for::

    .venv/bin/python -m pytest tests/e2e --run-soak                       # results under pytest's tmp path
    .venv/bin/python -m pytest tests/e2e -m soak --e2e-out /tmp/e2e-results --soak-minutes 10
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import RedisProcess

from hashrec.data import Dataset
from hashrec.data.synthetic import SyntheticConfig, synthetic_dataset


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--run-soak``, ``--soak-minutes`` and ``--e2e-out`` (see the module docstring)."""
    group = parser.getgroup("hashrec end-to-end")
    group.addoption("--run-soak", action="store_true", help="run the long tests marked `soak`")
    group.addoption("--soak-minutes", type=float, default=10.0, help="soak length in minutes (default 10)")
    group.addoption(
        "--e2e-out",
        default=None,
        help="directory for the JSON and markdown results of long runs (default: pytest's tmp path)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long end-to-end runs, opt-in (--run-soak or -m soak)")
    # starlette asks for its httpx fork; the test client works as it is with httpx
    config.addinivalue_line("filterwarnings", "ignore:Using `httpx` with `starlette.testclient`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``soak`` tests unless ``--run-soak`` is given or the ``-m`` expression names them."""
    if config.getoption("--run-soak") or "soak" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="long run: opt in with --run-soak (or -m soak)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


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
