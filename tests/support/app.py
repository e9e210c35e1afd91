"""The service in-process: ``create_app(Settings(...))`` behind FastAPI's test client, lifespan included.

    with app_client(bundles, admin_token=ADMIN_TOKEN) as client:   # the lifespan loads the bundle
        client.get("/recommend/u1")

API behaviour is tested this way; real ``hashrec serve`` processes (:class:`support.ServerProcess`) are for
what only a process shows: signals, load, slow sockets, several workers, exit codes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# what every in-process app gets unless a test says otherwise: one worker (the app is this process),
# gc.freeze off (it would freeze the test process's heap), the two compute threads of the tests' servers
IN_PROCESS_DEFAULTS: dict[str, Any] = {
    "workers": 1,
    "gc_freeze": False,
    "compute_threads": 2,
    "access_log": False,
}


def app_settings(bundles: Path, **overrides: Any) -> Any:
    """``Settings`` for ``bundles`` with :data:`IN_PROCESS_DEFAULTS`, then ``overrides`` applied."""
    from hashrec.service.settings import Settings

    return Settings(bundles=Path(bundles), **{**IN_PROCESS_DEFAULTS, **overrides})


@contextmanager
def app_client(bundles: Path, **overrides: Any) -> Iterator[Any]:
    """A ``fastapi.testclient.TestClient`` of the app on ``bundles``; the lifespan runs for the block."""
    from fastapi.testclient import TestClient

    from hashrec.service.app import create_app

    with TestClient(create_app(app_settings(bundles, **overrides))) as client:
        yield client
