"""Fixtures of the service tests (helpers live in ``tests/harness.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import ADMIN_TOKEN, ServerProcess, make_bundle

from hashrec.data import Dataset


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, synth_dataset: Dataset) -> Path:
    """A bundles directory with one published version (seed 1) per test module."""
    d = tmp_path_factory.mktemp("bundles")
    make_bundle(d, synth_dataset, seed=1)
    return d


@pytest.fixture(scope="module")
def server(bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per module, in-process LRU cache, admin enabled."""
    srv = ServerProcess(
        bundles, tmp_path_factory.mktemp("srv") / "server.log", HASHREC_ADMIN_TOKEN=ADMIN_TOKEN
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    """An httpx client bound to the module's server."""
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c
