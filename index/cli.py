"""CLI command of the index area: ``hashrec bundle verify``.

Examples::

    hashrec bundle verify bundles/                                      # the current version
    hashrec bundle verify bundles/20261127T081500.123456Z-3f2a9c1d --json

Exit codes: 0 success; 1 the bundle has a problem (the message names the file and the reason).
"""

from __future__ import annotations

import argparse
import json
import logging
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bundle verify``."""
    bd = sub.add_parser("bundle", help="inspect bundles")
    bsub = bd.add_subparsers(dest="bundle_command", metavar="SUBCOMMAND", required=True)
    ve = bsub.add_parser("verify", help="validate a bundle (checksums, shapes, index) and print its summary")
    ve.add_argument("path", help="a bundle version directory, or a bundles directory (its `current`)")
    ve.add_argument("--json", action="store_true", help="print one JSON object")
    ve.set_defaults(func=_cmd_verify)
