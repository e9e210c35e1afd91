"""Fixtures of the service tests: a published bundle per module and the app in-process, admin enabled
(``support.app_client``: FastAPI's test client, the lifespan run for the module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support import ADMIN_TOKEN, app_client, make_bundle

from hashrec.data import Dataset

if TYPE_CHECKING:  # imported by the tests themselves (conftests load before the warning filters)
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, synth_dataset: Dataset) -> Path:
    """A bundles directory with one published version (seed 1) per test module."""
    d = tmp_path_factory.mktemp("bundles")
    make_bundle(d, synth_dataset, seed=1)
    return d


@pytest.fixture(scope="module")
def client(bundles: Path) -> Iterator[TestClient]:
    """One app per module: in-process LRU cache, admin enabled."""
    with app_client(bundles, admin_token=ADMIN_TOKEN) as c:
        yield c
