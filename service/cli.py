"""CLI commands of the service area: ``serve`` and ``export-candidates`` (registered by ``hashrec.cli``).

    hashrec serve --bundles bundles/ [--host 0.0.0.0] [--port 8000] [--redis-url redis://localhost:6379/0]
    hashrec export-candidates --bundles bundles/ --out candidates.parquet [--users users.txt] [--candidates 500]

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

    import uvicorn

    from .app import create_app
    from .runtime import limit_native_threads
    from .json_logs import setup_json_logging
    from .state import BundleLoadError, ServingState

    settings = _settings_from_args(args)
    setup_json_logging(settings.log_level)
    limit_native_threads(1)
    # Load (and fully validate) the bundle before uvicorn starts: a missing or corrupt bundle must stop the
    # process with the file and the reason, not a half-started server.
    try:
        snapshot = ServingState(settings.bundles, mmap=settings.bundle_mmap).load_initial(
            settings.bundle_version
        )
    except BundleLoadError as err:
        log.error("cannot serve: %s", err)
        return 2
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # keep our JSON logging
        "access_log": False,  # the middleware logs each request with its id
        "timeout_keep_alive": 5,
        "server_header": False,
        "backlog": 2048,
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings, snapshot), **common)
    else:
        # worker processes rebuild the app from the environment (the parent's checks already passed)
        os.environ.update(settings.to_env())
        del snapshot
        uvicorn.run(
            "hashrec.service.app:create_app_from_env", factory=True, workers=settings.workers, **common
        )
    return 0


def _read_users(path: Path) -> list[str]:
    from hashrec.data import UserError

    users: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                u = line.strip()
                if not u or u.startswith("#"):
                    continue
                if any(ord(ch) < 32 for ch in u):
                    raise UserError(f"{path}:{lineno}: control characters in a user id")
                users.append(u)
    except OSError as err:
        raise UserError(f"{path}: cannot read users file: {err}") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err})") from err
    return users


def _cmd_export(args: argparse.Namespace) -> int:
    from hashrec.data import UserError

    from .runtime import limit_native_threads
    from .export_stream import write_candidates
    from .state import BundleLoadError, load_snapshot

    if args.candidates < 1:
        raise UserError(f"--candidates must be >= 1, got {args.candidates}")
    out = Path(args.out)
    if out.suffix.lower() not in (".ndjson", ".jsonl", ".parquet"):
        raise UserError(f"{out}: --out must end in .ndjson, .jsonl or .parquet")
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise UserError(
                "writing Parquet needs pyarrow: pip install 'hashrec[parquet]' (or use .ndjson)"
            ) from err
    limit_native_threads(args.threads)
    try:
        snap = load_snapshot(Path(args.bundles), args.version, threads=args.threads)
    except BundleLoadError as err:
        raise UserError(str(err)) from err
    users = _read_users(Path(args.users)) if args.users else None
    if users is not None:
        unknown = [(i, u) for i, u in enumerate(users) if not snap.retriever.has_user(u)]
        if unknown:
            shown = ", ".join(repr(u) for _i, u in unknown[:5])
            raise UserError(
                f"{args.users}: {len(unknown)} user id(s) unknown to bundle {snap.version}: {shown}"
            )
    n = write_candidates(
        snap.bundle,
        snap.retriever,
        out,
        users,
        args.candidates,
        exclude_seen=not args.include_seen,
        batch=args.batch,
    )
    print(f"{out}\t{n} rows\tversion {snap.version}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` and ``export-candidates``."""
    p = sub.add_parser(
        "serve",
        help="run the recommendation HTTP service (uvicorn)",
        description="Serve a bundles directory over HTTP. Every option is also a HASHREC_* environment "
        "variable (HASHREC_BUNDLES, HASHREC_PORT, HASHREC_REDIS_URL, HASHREC_ADMIN_TOKEN, HASHREC_MAX_K, ...).",
    )
    p.add_argument("--bundles", default=None, help="bundles directory (HASHREC_BUNDLES)")
    p.add_argument("--host", default=None, help="bind address (HASHREC_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (HASHREC_PORT, default 8000)")
    p.add_argument("--workers", type=int, default=None, help="uvicorn processes (HASHREC_WORKERS, default 1)")
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

    e = sub.add_parser(
        "export-candidates",
        help="write top-C candidates for users (all, or a list) to NDJSON or Parquet",
    )
    e.add_argument("--bundles", required=True, help="bundles directory (or one version directory)")
    e.add_argument("--version", default=None, help="bundle version (default: current)")
    e.add_argument("--out", required=True, help="output file: .ndjson/.jsonl or .parquet (needs pyarrow)")
    e.add_argument("--users", default=None, help="file with one user id per line (default: every user)")
    e.add_argument("--candidates", type=int, default=500, help="candidates per user (default 500)")
    e.add_argument("--include-seen", action="store_true", help="keep items the user already interacted with")
    e.add_argument("--batch", type=int, default=512, help="users per model call (memory bound)")
    e.add_argument("--threads", type=int, default=1, help="FAISS/BLAS threads")
    e.set_defaults(func=_cmd_export)
