"""CLI commands of the index area: ``hashrec export`` and ``hashrec bundle verify``.

Examples::

    hashrec export runs/gowalla-default --out bundles/                  # exact flat index, float32
    hashrec export runs/gowalla-default --out bundles/ --index ivf --index-param nprobe=32 --keep 3
    hashrec bundle verify bundles/                                      # the current version
    hashrec bundle verify bundles/20261127T081500.123456Z-3f2a9c1d --json

Exit codes: 0 success; 1 ``bundle verify`` found a problem (the message names the file and the reason);
2 bad input (missing run files, bad parameters).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

log = logging.getLogger(__name__)


def _parse_params(items: list[str]) -> dict[str, Any]:
    from hashrec.cli import UserError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--index-param: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _cmd_export(args: argparse.Namespace) -> int:
    from hashrec.cli import UserError

    from .bundle import BundleError
    from .export import export_run

    try:
        path = export_run(
            args.run_dir,
            args.out,
            index_type=args.index,
            index_params=_parse_params(args.index_param),
            keep=args.keep,
            dtype="float16" if args.float16 else "float32",
            **({"model_version": args.model_version} if args.model_version else {}),
        )
    except (BundleError, ValueError) as err:
        raise UserError(str(err)) from err
    print(path)
    return 0


def _self_check(bundle: Any, n: int = 8, k: int = 10) -> dict[str, Any]:
    """Search a few users' codes in the index and compare with an exact numpy Hamming top-k."""
    import numpy as np

    from . import binary_index
    from .codes import hamming

    users = np.linspace(0, bundle.n_users - 1, num=min(n, bundle.n_users)).astype(np.int64)
    q = np.asarray(bundle.user_codes[users])
    d_idx, _ = binary_index.search(bundle.index, q, k)
    # one user at a time: the reference materialises [n_items, bytes] per query
    exact = np.stack(
        [np.sort(hamming(q[r : r + 1], np.asarray(bundle.item_codes))[0]) for r in range(len(q))]
    )
    exact = exact[:, : d_idx.shape[1]]
    # compare distances (ids may differ only among ties for approximate indexes)
    kth = exact[:, -1:]
    recall = float(np.mean(d_idx <= kth))
    return {"users_checked": len(users), "k": int(d_idx.shape[1]), "recall_vs_exact": recall}


def _cmd_verify(args: argparse.Namespace) -> int:
    from .bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(args.path, verify_checksums=True)
        check = _self_check(bundle)
    except BundleError as err:
        log.error("bundle verify failed: %s", err)
        return 1
    summary = {**bundle.summary(), "self_check": check}
    if bundle.index_type == "flat" and check["recall_vs_exact"] < 1.0:
        log.error(
            "%s: the flat index disagrees with the item codes (recall %.3f)",
            bundle.path,
            check["recall_vs_exact"],
        )
        return 1
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"bundle         {summary['path']}")
    print(
        f"version        {summary['version']}  (model {summary['model_version']}, created {summary['created']})"
    )
    print(
        f"codes          {summary['bits']} bits; embeddings {summary['dim']}-d {summary['embedding_dtype']}"
    )
    print(
        f"users / items  {summary['users']:,} / {summary['items']:,}  ({summary['seen']:,} seen interactions)"
    )
    print(f"index          {summary['index']['type']} {json.dumps(summary['index']['params'])}")
    print(f"fold-in        {'yes' if summary['foldin'] else 'no (unseen users get popular items)'}")
    print(f"checksums      ok ({len(bundle.manifest['files'])} files)")
    print(
        f"self-check     Hamming top-{check['k']} of {check['users_checked']} users: recall {check['recall_vs_exact']:.3f} vs exact"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``bundle verify``."""
    ex = sub.add_parser("export", help="export a training run as a versioned bundle (atomic publish)")
    ex.add_argument("run_dir", help="training run directory (dataset/ + embeddings.npz)")
    ex.add_argument("--out", required=True, help="bundles directory (versions + `current` symlink)")
    ex.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw"], help="binary index type")
    ex.add_argument(
        "--index-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="index parameter, repeatable: ivf nlist/nprobe, hnsw M/efConstruction/efSearch",
    )
    ex.add_argument("--keep", type=int, default=5, help="bundle versions to keep (default 5)")
    ex.add_argument("--float16", action="store_true", help="store embeddings as float16 (served as float32)")
    ex.add_argument("--model-version", default=None, help="model version label (default: run name@sha)")
    ex.set_defaults(func=_cmd_export)

    bd = sub.add_parser("bundle", help="inspect bundles")
    bsub = bd.add_subparsers(dest="bundle_command", metavar="SUBCOMMAND", required=True)
    ve = bsub.add_parser("verify", help="validate a bundle (checksums, shapes, index) and print its summary")
    ve.add_argument("path", help="a bundle version directory, or a bundles directory (its `current`)")
    ve.add_argument("--json", action="store_true", help="print one JSON object")
    ve.set_defaults(func=_cmd_verify)
