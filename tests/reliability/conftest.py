"""Fixtures of the reliability tests: bundles of random embeddings on the synthetic dataset (no training)
and real ``hashrec serve`` processes on free ports (``hashrec.bench.server_process``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from hashrec.bench.server_process import ADMIN_TOKEN, ServerProcess
from hashrec.index.bundle import FoldIn
from hashrec.index.export import build_bundle
from hashrec.model.data import Dataset

BITS = 32


def synth_bundle(bundles: Path, ds: Dataset, seed: int, foldin: bool = True) -> Path:
    """Publish a bundle of random embeddings for ``ds`` (a different model per seed); returns its dir."""
    rng = np.random.default_rng(seed)
    user_z = np.tanh(rng.standard_normal((ds.n_users, BITS))).astype(np.float32)
    item_z = np.tanh(rng.standard_normal((ds.n_items, BITS))).astype(np.float32)
    fi = None
    if foldin:
        fi = FoldIn(
            item=rng.standard_normal((ds.n_items, 8)).astype(np.float32),
            weight=rng.standard_normal((BITS, 8)).astype(np.float32),
            bias=(0.1 * rng.standard_normal(BITS)).astype(np.float32),
            power=0.5,
        )
    return build_bundle(bundles, user_z=user_z, item_z=item_z, dataset=ds, foldin=fi, keep=10)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, synth_dataset: Dataset) -> Path:
    """A bundles directory with one published version per test module."""
    d = tmp_path_factory.mktemp("bundles")
    synth_bundle(d, synth_dataset, seed=1)
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
