"""CLI commands of the index area: ``hashrec bundle verify`` and ``hashrec export-candidates``.

Examples::

    hashrec bundle verify bundles/                                      # the current version
    hashrec bundle verify bundles/20261127T081500.123456Z-3f2a9c1d --json
    hashrec export-candidates --bundles bundles/ --out candidates.parquet [--users users.txt] [--candidates 500]
    hashrec export-candidates --bundles bundles/ --out candidates/ --engine ray --workers 2

Exit codes: 0 success; 1 the bundle has a problem (verify); 2 bad input (the message names the file).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _self_check(bundle: Any, n: int = 8, k: int = 10) -> dict[str, Any]:
    """Check the index against the item codes: for a flat index, the stored codes are the item codes byte
    for byte; for every index, each returned distance is the Hamming distance of the pair it names."""
    import faiss
    import numpy as np

    from hashrec.data.codes import distances

    from . import binary_index

    flat_equal = None
    if bundle.index_type == "flat":
        stored = faiss.vector_to_array(bundle.index.xb).reshape(bundle.n_items, -1)
        flat_equal = bool(np.array_equal(stored, np.asarray(bundle.item_codes)))
    users = np.linspace(0, bundle.n_users - 1, num=min(n, bundle.n_users)).astype(np.int64)
    q = np.asarray(bundle.user_codes[users])
    dist, idx = binary_index.search(bundle.index, q, k)
    ok = idx >= 0
    pairs = distances(q[:, None, :], np.asarray(bundle.item_codes)[np.where(ok, idx, 0)])
    consistent = bool(np.all(np.where(ok, pairs == dist, True)))
    return {
        "users_checked": len(users),
        "k": int(dist.shape[1]),
        "flat_codes_equal": flat_equal,
        "distances_consistent": consistent,
    }


def _cmd_verify(args: argparse.Namespace) -> int:
    from .bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(args.path, verify_checksums=True)
        check = _self_check(bundle)
    except BundleError as err:
        log.error("bundle verify failed: %s", err)
        return 1
    summary = {**bundle.summary(), "self_check": check}
    if check["flat_codes_equal"] is False or not check["distances_consistent"]:
        log.error("%s: the index disagrees with the item codes (%s)", bundle.path, check)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"bundle         {summary['path']}")
    print(
        f"version        {summary['version']}  (model {summary['model_version']}, created {summary['created']})"
    )
    print(
        f"codes          {summary['bits']} bits; re-rank vectors {summary['dim']}-d {summary['vector_dtype']}"
    )
    print(
        f"users / items  {summary['users']:,} / {summary['items']:,}  ({summary['seen']:,} seen interactions)"
    )
    print(f"index          {summary['index']['type']} {json.dumps(summary['index']['params'])}")
    print(f"fold-in        {'yes' if summary['foldin'] else 'no (unseen users get popular items)'}")
    print(f"checksums      ok ({len(bundle.manifest['files'])} files)")
    print(
        f"self-check     index agrees with the item codes (top-{check['k']} of {check['users_checked']} users)"
    )
    return 0


def _read_users(path: Path) -> list[str]:
    """Raw user ids, one per line (blank lines and ``#`` comments skipped); UserError naming file and line."""
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


def _internal_users(retriever: Any, users_file: str | None) -> Any:
    """Internal ids of the users file's ids (None = every user); UserError listing unknown ids."""
    import numpy as np

    from hashrec.data import UserError

    if users_file is None:
        return None
    raw = _read_users(Path(users_file))
    idx = retriever.bundle.users.to_internal(raw)
    unknown = [u for u, i in zip(raw, idx.tolist(), strict=True) if i < 0]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise UserError(
            f"{users_file}: {len(unknown)} user id(s) unknown to bundle {retriever.version}: {shown}"
        )
    return np.asarray(idx, dtype=np.int64)


def _cmd_export_candidates(args: argparse.Namespace) -> int:
    from hashrec.data import UserError

    from .bundle import BundleError, load_bundle
    from .candidates import SUFFIXES, require_pyarrow, write_candidates
    from .retriever import Retriever

    if args.candidates < 1:
        raise UserError(f"--candidates must be >= 1, got {args.candidates}")
    out = Path(args.out)
    if args.engine == "local" and out.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"{out}: --out must end in {', '.join(SUFFIXES)} (or use --engine ray for a directory)"
        )
    try:
        if args.engine == "ray" or out.suffix.lower() == ".parquet":
            require_pyarrow()
        bundle = load_bundle(Path(args.bundles) / args.version if args.version else args.bundles)
    except (ImportError, BundleError) as err:
        raise UserError(str(err)) from err
    retriever = Retriever(bundle, threads=args.threads)
    users = _internal_users(retriever, args.users)
    if args.engine == "ray":
        return _export_ray(args, bundle, out, users)
    n = write_candidates(
        retriever, out, users, args.candidates, exclude_seen=not args.include_seen, batch=args.batch
    )
    print(f"{out}\t{n} rows\tversion {bundle.version}")
    return 0


def _export_ray(args: argparse.Namespace, bundle: Any, out: Path, users: Any) -> int:
    from hashrec.data import UserError

    try:
        from .ray_export import export_with_ray
    except ImportError as err:  # pragma: no cover - the ray extra is missing
        raise UserError("--engine ray needs Ray: pip install 'hashrec[ray]'") from err
    try:
        summary = export_with_ray(
            bundle.path,
            out,
            bundle.n_users if users is None else users,
            args.candidates,
            exclude_seen=not args.include_seen,
            workers=args.workers,
            batch=args.batch,
            address=args.address,
        )
    except FileExistsError as err:
        raise UserError(str(err)) from err
    print(json.dumps({"out": str(out), "version": bundle.version, **summary}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bundle verify`` and ``export-candidates``."""
    e = sub.add_parser(
        "export-candidates",
        help="write top-C candidates for users (all, or a list): one NDJSON/Parquet file, or Parquet files with Ray",
    )
    e.add_argument("--bundles", required=True, help="bundles directory (or one version directory)")
    e.add_argument("--version", default=None, help="bundle version (default: current)")
    e.add_argument(
        "--out", required=True, help="a .ndjson/.jsonl/.parquet file, or a new directory (--engine ray)"
    )
    e.add_argument("--users", default=None, help="file with one user id per line (default: every user)")
    e.add_argument("--candidates", type=int, default=500, help="candidates per user (default 500)")
    e.add_argument("--include-seen", action="store_true", help="keep items the user already interacted with")
    e.add_argument("--batch", type=int, default=512, help="users per model call (memory bound)")
    e.add_argument("--threads", type=int, default=1, help="FAISS threads of the local engine")
    e.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="one process (default) or Ray Data"
    )
    e.add_argument("--workers", type=int, default=2, help="Ray actors (--engine ray)")
    e.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local Ray")
    e.set_defaults(func=_cmd_export_candidates)

    bd = sub.add_parser("bundle", help="inspect bundles")
    bsub = bd.add_subparsers(dest="bundle_command", metavar="SUBCOMMAND", required=True)
    ve = bsub.add_parser("verify", help="validate a bundle (checksums, shapes, index) and print its summary")
    ve.add_argument("path", help="a bundle version directory, or a bundles directory (its `current`)")
    ve.add_argument("--json", action="store_true", help="print one JSON object")
    ve.set_defaults(func=_cmd_verify)
