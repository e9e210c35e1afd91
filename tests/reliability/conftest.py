"""Fixtures of the reliability tests: bundles of random embeddings on the synthetic dataset (no training)
and real ``hashrec serve`` processes on free ports (``hashrec.bench.server_process``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import make_bundle

from hashrec.bench.server_process import ADMIN_TOKEN, ServerProcess
from hashrec.data import Dataset


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, synth_dataset: Dataset) -> Path:
    """A bundles directory with one published version per test module."""
    d = tmp_path_factory.mktemp("bundles")
    make_bundle(d, synth_dataset, seed=1)
    return d


@pytest.fixture(scope="module")
def server(bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per module: in-process cache, admin enabled, access log on (tests read it)."""
    srv = ServerProcess(
        bundles,
        tmp_path_factory.mktemp("srv") / "server.log",
        env={"HASHREC_ADMIN_TOKEN": ADMIN_TOKEN},
        access_log=True,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``start_server(bundles, env={...})`` starts a server that is stopped after the test."""
    started: list[ServerProcess] = []

    def start(bundles: Path, env: dict[str, str] | None = None, **kw: object) -> ServerProcess:
        srv = ServerProcess(bundles, tmp_path / f"server{len(started)}.log", env=env, **kw)  # type: ignore[arg-type]
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.stop()
