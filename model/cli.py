"""CLI commands of the model area: ``data stats``, ``data synth``, ``train``, ``evaluate`` and ``export``.

hashrec export runs/gowalla-default --out bundles/                  # exact flat index, float32
hashrec export runs/gowalla-default --out bundles/ --index ivf --index-param nprobe=32 --keep 3
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def add_data_args(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """Options that describe how to load a dataset (mirrors :class:`hashrec.data.DataConfig`)."""
    if positional:
        p.add_argument("path", help="dataset folder (train.txt[.gz] + test.txt) or interaction file")
    g = p.add_argument_group("data loading")
    g.add_argument("--test", dest="test_path", default=None, help="explicit test file (same format)")
    g.add_argument(
        "--format", dest="fmt", default="auto", choices=["auto", "adjacency", "delimited", "parquet"]
    )
    g.add_argument("--sep", default=None, help="separator of delimited files (default: sniffed); 'tab' = \\t")
    g.add_argument("--columns", default=None, help="column names, e.g. user,item,rating,timestamp (- = skip)")
    hdr = g.add_mutually_exclusive_group()
    hdr.add_argument("--header", dest="header", action="store_true", default=None)
    hdr.add_argument("--no-header", dest="header", action="store_false")
    g.add_argument("--min-rating", type=float, default=None, help="keep ratings >= this as positives")
    g.add_argument("--kcore", type=int, default=0, help="keep the k-core (users and items with >= k)")
    g.add_argument("--split", default="auto", choices=["auto", "given", "random", "temporal"])
    g.add_argument("--test-ratio", type=float, default=0.2, help="per-user test fraction (random split)")
    g.add_argument("--leave-out", type=int, default=1, help="latest items per user held out (temporal split)")
    g.add_argument("--valid-ratio", type=float, default=0.1, help="per-user validation fraction of train")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the random splits")


def data_config_from_args(args: argparse.Namespace, path: str | None = None) -> Any:
    """Build a validated DataConfig from parsed arguments."""
    from hashrec.data import DataConfig

    sep = {"tab": "\t", "\\t": "\t", "space": " "}.get(args.sep, args.sep) if args.sep else None
    cols = tuple(c.strip() for c in args.columns.split(",")) if args.columns else None
    return DataConfig(
        path=path if path is not None else args.path,
        test_path=args.test_path,
        fmt=args.fmt,
        sep=sep,
        columns=cols,
        header=args.header,
        min_rating=args.min_rating,
        kcore=args.kcore,
        split=args.split,
        test_ratio=args.test_ratio,
        leave_out=args.leave_out,
        valid_ratio=args.valid_ratio,
        seed=args.data_seed,
    )


def _cmd_stats(args: argparse.Namespace) -> int:
    from hashrec.data import load_dataset

    t0 = time.perf_counter()
    cfg = data_config_from_args(args)
    ds = load_dataset(cfg)
    stats = ds.stats()
    stats["load_seconds"] = round(time.perf_counter() - t0, 3)
    if cfg.min_rating is not None:
        raw = load_dataset(cfg.__class__(**{**cfg.to_json(), "min_rating": None}))
        stats["interactions_before_threshold"] = raw.stats()["interactions"]
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"dataset        {stats['name']}  ({cfg.path})")
    print(f"users          {stats['users']:,}")
    print(f"items          {stats['items']:,}")
    if "interactions_before_threshold" in stats:
        print(
            f"interactions   {stats['interactions_before_threshold']:,} before rating >= {cfg.min_rating:g}"
        )
    print(f"interactions   {stats['interactions']:,}")
    print(f"  train        {stats['train']:,}  (fit {stats['train_fit']:,} + validation {stats['valid']:,})")
    print(f"  test         {stats['test']:,}  ({stats['test_users']:,} test users)")
    print(f"density        {stats['density']:.5f}")
    print(
        f"user degree    min {stats['user_degree_min']}  median {stats['user_degree_median']:g}"
        f"  max {stats['user_degree_max']}"
    )
    for k, v in ds.report.items():
        if v:
            print(f"note           {k.replace('_', ' ')}: {v:,}")
    print(f"loaded in      {stats['load_seconds']:.2f} s  ({stats['interactions_per_s']:,} interactions/s)")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from hashrec.data.synthetic import SyntheticConfig, generate, write_csv

    cfg = SyntheticConfig(
        n_users=args.users, n_items=args.items, n_communities=args.communities, seed=args.seed
    )
    path = write_csv(generate(cfg), args.out)
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``data ...`` (and the training commands once they exist)."""
    data = sub.add_parser("data", help="inspect and generate datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    st = dsub.add_parser("stats", help="load a dataset as training would and print its counts")
    add_data_args(st)
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=_cmd_stats)
    sy = dsub.add_parser("synth", help="write a synthetic dataset with planted communities (CSV)")
    sy.add_argument("out", help="output CSV path")
    sy.add_argument("--users", type=int, default=2000)
    sy.add_argument("--items", type=int, default=1000)
    sy.add_argument("--communities", type=int, default=20)
    sy.add_argument("--seed", type=int, default=0)
    sy.set_defaults(func=_cmd_synth)
    register_train(sub)
    from hashrec.model.evaluate_cli import add_evaluate_parser  # cheap: argparse only

    add_evaluate_parser(sub)
    register_export(sub)


def _parse_params(items: list[str]) -> dict[str, Any]:
    from hashrec.data import UserError

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
    from hashrec.data import UserError
    from hashrec.index.bundle import BundleError
    from hashrec.model.export import export_run

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


def register_export(sub: argparse._SubParsersAction) -> None:
    """Add ``export``."""
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
    ex.add_argument(
        "--float16", action="store_true", help="store re-rank vectors as float16 (served as float32)"
    )
    ex.add_argument("--model-version", default=None, help="model version label (default: run name@sha)")
    ex.set_defaults(func=_cmd_export)


def _cmd_train(args: argparse.Namespace) -> int:
    from hashrec.model.config import TrainConfig
    from hashrec.model.train import train

    data = data_config_from_args(args, path=args.data)
    overrides: dict[str, Any] = {
        "bits": args.bits,
        "epochs": args.epochs,
        "seed": args.seed,
        "device": args.device,
        "threads": args.threads,
        "continuous": True if args.continuous else None,
        "progress": False if args.no_progress else None,
    }
    if args.time_budget is not None:  # 0 = no limit; not given = the preset's
        overrides["time_budget_min"] = args.time_budget or None
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            from hashrec.model.config import ConfigError

            raise ConfigError(f"{item}: --set expects FIELD=VALUE")
        try:
            overrides[key.strip()] = json.loads(value)
        except ValueError:
            overrides[key.strip()] = value  # a plain string (e.g. ranking=margin)
    cfg = TrainConfig.preset_config(args.preset, data, **overrides)
    t0 = time.perf_counter()
    out = train(cfg, args.out, resume=args.resume, force=args.force)
    print(json.dumps({"run_dir": str(out), "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


def register_train(sub: argparse._SubParsersAction) -> None:
    """Add ``train``."""
    p = sub.add_parser("train", help="train HashGNN into a run directory")
    p.add_argument(
        "--data", required=True, help="dataset folder (train.txt[.gz] + test.txt) or interaction file"
    )
    p.add_argument("--out", required=True, help="run directory (created; never overwritten without --force)")
    p.add_argument("--preset", default="default", help="paper | default (default: default)")
    p.add_argument("--bits", type=int, default=None, help="code length K, a multiple of 8 (preset's default)")
    p.add_argument(
        "--epochs",
        "--max-epochs",
        dest="epochs",
        type=int,
        default=None,
        help="most epochs (preset's default)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MINUTES",
        help="the whole run (validation, settings search and refit included) ends within this wall time "
        "(default preset: 30; 0 = no limit)",
    )
    p.add_argument("--continuous", action="store_true", help="train the continuous baseline (no sign)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--force", action="store_true", help="replace an existing run directory")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="default auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="override any TrainConfig field (repeatable)"
    )
    add_data_args(p, positional=False)
    p.set_defaults(func=_cmd_train)
