"""Fixtures of the end-to-end tests: real ``hashrec serve`` processes (``support.ServerProcess``), a load
generator in its own process (``loadgen.py``), the fault scenarios (``faults.py``), the fuzzers
(``fuzz.py``) and the soak (``soak.py``).

Short versions run by default; the long ones are marked ``soak`` (opt in with ``--run-soak``) and write
their JSON and markdown to ``--e2e-out`` (default: pytest's tmp path), never into the source tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ADMIN_TOKEN, ServerProcess, make_bundle


@pytest.fixture(scope="session")
def e2e_out(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where long runs write their results: ``--e2e-out`` or a directory under pytest's tmp path."""
    given = request.config.getoption("--e2e-out")
    out = Path(given) if given else tmp_path_factory.mktemp("e2e-results")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def random_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundles directory with one random version: 2,000 users (``u0``...) x 3,000 items, 64 bits."""
    d = tmp_path_factory.mktemp("bundles")
    make_bundle(d, seed=0, bits=64, n_users=2000, n_items=3000)
    return d


@pytest.fixture(scope="module")
def server(random_bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server per module on ``random_bundles``, admin enabled, 16 exports at once allowed (the
    fuzzers' concurrent streams)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {"HASHREC_ADMIN_TOKEN": ADMIN_TOKEN, "HASHREC_MAX_EXPORTS": "16"}
    with ServerProcess(random_bundles, log, env=env).start() as srv:
        yield srv
