"""Test helpers shared by the service and reliability tests: bundles built from random embeddings (no
training) and a real server process.

``ServerProcess`` runs ``hashrec serve`` as a subprocess on a free port (real uvicorn, real sockets) and
waits for ``/readyz``; tests talk to it with httpx over loopback. Nothing is mocked. The process harness is
the benchmarks' own (:mod:`hashrec.bench.server_process`), so tests and benchmarks drive servers alike.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from hashrec.bench.server_process import ADMIN_TOKEN, free_port
from hashrec.bench.server_process import ServerProcess as _BenchServerProcess
from hashrec.index.bundle import FoldIn
from hashrec.index.export import build_bundle
from hashrec.model.data import Dataset

BITS = 32
__all__ = ["ADMIN_TOKEN", "BITS", "HASHREC", "ServerProcess", "free_port", "make_bundle"]
HASHREC = str(Path(sys.executable).parent / "hashrec")


def make_bundle(bundles: Path, ds: Dataset, seed: int, *, foldin: bool = True) -> Path:
    """Publish a bundle of random embeddings for ``ds`` (a different model per seed); returns its dir."""
    rng = np.random.default_rng(seed)
    user_z = np.tanh(rng.standard_normal((ds.n_users, BITS))).astype(np.float32)
    item_z = np.tanh(rng.standard_normal((ds.n_items, BITS))).astype(np.float32)
    fi = None
    if foldin:
        d = 16
        fi = FoldIn(
            item=rng.standard_normal((ds.n_items, d)).astype(np.float32),
            weight=rng.standard_normal((BITS, d)).astype(np.float32),
            bias=rng.standard_normal(BITS).astype(np.float32) * 0.1,
            power=0.5,
        )
    return build_bundle(bundles, user_z=user_z, item_z=item_z, dataset=ds, foldin=fi, keep=10)


class ServerProcess(_BenchServerProcess):
    """:class:`hashrec.bench.server_process.ServerProcess` with the ``HASHREC_*`` overrides as keyword arguments
    (``ServerProcess(bundles, log, HASHREC_ADMIN_TOKEN="...")``) and the access log on, as deployed."""

    def __init__(self, bundles: Path, log_path: Path, **env: str) -> None:
        super().__init__(bundles, log_path, env=env, access_log=True)
