"""CLI command of the service area: ``serve`` (registered by ``hashrec.cli``).

    hashrec serve --bundles bundles/ [--host 0.0.0.0] [--port 8000] [--redis-url redis://localhost:6379/0]

Every ``serve`` option is also a ``HASHREC_`` environment variable (``HASHREC_PORT``, ``HASHREC_REDIS_URL``,
...; see ``hashrec.service.settings``); a flag given on the command line wins over the environment.
The admin token is read from ``HASHREC_ADMIN_TOKEN`` only (command lines are visible to every local user).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _settings_from_args(args: argparse.Namespace) -> Any:
    """Settings from the environment, overridden by the flags given; exits 2 naming a bad field."""
    from pydantic import ValidationError

    from hashrec.data import UserError

    from .settings import Settings

    overrides = {
        name: getattr(args, name)
        for name in ("bundles", "host", "port", "workers", "redis_url", "cache", "compute_threads")
        if getattr(args, name, None) is not None
    }
    if args.no_access_log:
        overrides["access_log"] = False
    overrides["log_level"] = args.log_level
    try:
        return Settings(**overrides)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'} (HASHREC_"
            f"{str(e['loc'][0]).upper() if e['loc'] else ''}): {e['msg']}"
            for e in err.errors()
        )
        raise UserError(f"invalid service settings: {problems}") from err


def _cmd_serve(args: argparse.Namespace) -> int:
    import os
    import shutil
    import tempfile

    import uvicorn

    from .app import create_app
    from .json_logs import setup_json_logging
    from .runtime import limit_native_threads
    from .state import BundleLoadError, ServingState

    settings = _settings_from_args(args)
    setup_json_logging(settings.log_level)
    limit_native_threads(1)
    # the workers of this replica share admin reloads and report their version through a private directory
    made = settings.runtime_dir is None
    runtime = (
        Path(tempfile.mkdtemp(prefix="hashrec-")) if settings.runtime_dir is None else settings.runtime_dir
    )
    settings = settings.model_copy(update={"runtime_dir": runtime})
    # Load (and fully validate) the bundle before uvicorn starts: a missing or corrupt bundle must stop the
    # process with the file and the reason, not a half-started server.
    state = ServingState(settings.bundles, mmap=settings.bundle_mmap, pinned=settings.bundle_version)
    try:
        snapshot = state.load_initial()
    except BundleLoadError as err:
        log.error("cannot serve: %s", err)
        return 2
    finally:
        state.close()  # the workers lease what they serve themselves
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # keep our JSON logging
        "access_log": False,  # the middleware logs each request with its id
        "timeout_keep_alive": settings.keep_alive_s,
        "limit_concurrency": settings.limit_concurrency,
        "timeout_graceful_shutdown": 30,
        "server_header": False,
        "backlog": 2048,
    }
    try:
        if settings.workers == 1:
            uvicorn.run(create_app(settings, snapshot), **common)
        else:
            # worker processes rebuild the app from the environment (the parent's checks already passed)
            os.environ.update(settings.to_env())
            del snapshot
            uvicorn.run(
                "hashrec.service.app:create_app_from_env", factory=True, workers=settings.workers, **common
            )
    finally:
        if made:
            shutil.rmtree(runtime, ignore_errors=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve``."""
    p = sub.add_parser(
        "serve",
        help="run the recommendation HTTP service (uvicorn)",
        description="Serve a bundles directory over HTTP. Every option is also a HASHREC_* environment "
        "variable (HASHREC_BUNDLES, HASHREC_PORT, HASHREC_REDIS_URL, HASHREC_ADMIN_TOKEN, HASHREC_MAX_K, ...).",
    )
    p.add_argument("--bundles", default=None, help="bundles directory (HASHREC_BUNDLES)")
    p.add_argument("--host", default=None, help="bind address (HASHREC_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (HASHREC_PORT, default 8000)")
    p.add_argument(
        "--workers", type=int, default=None, help="uvicorn processes (HASHREC_WORKERS, default: one per core)"
    )
    p.add_argument(
        "--redis-url", default=None, help="Redis cache URL (HASHREC_REDIS_URL; unset = in-process LRU)"
    )
    p.add_argument(
        "--cache",
        default=None,
        choices=["auto", "redis", "memory", "none"],
        help="cache backend (HASHREC_CACHE)",
    )
    p.add_argument(
        "--compute-threads", type=int, default=None, help="model call threads (HASHREC_COMPUTE_THREADS)"
    )
    p.add_argument(
        "--no-access-log", action="store_true", help="no per-request log line (HASHREC_ACCESS_LOG)"
    )
    p.set_defaults(func=_cmd_serve)
