"""``hashrec demo``: synthetic data -> train -> evaluate -> export -> serve -> a recommendation over HTTP.

Everything runs on a seeded synthetic dataset with planted communities, so nothing is downloaded and the
whole tour takes under a minute on an idle 2-core machine (46 s measured with ``make demo``)::

    hashrec demo                 # ends with the service running on http://127.0.0.1:8000 (Ctrl-C stops it)
    hashrec demo --exit          # stops after the service has answered once (what the tests run)

Each step uses the same public API as the individual commands (``hashrec train``, ``hashrec evaluate``,
``hashrec export``, ``hashrec serve``), so the demo doubles as a smoke test of the whole product.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("hashrec.demo")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _pick_port(host: str, wanted: int) -> int:
    if _port_free(host, wanted):
        return wanted
    with socket.socket() as s:
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    log.warning("port %d is taken; serving on %d instead", wanted, port)
    return port


def _get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with status {proc.returncode} before it was ready")
        try:
            status, _ = _get_json(base + "/readyz", timeout=1.0)
            if status == 200:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the service did not become ready within {timeout:.0f} s")


def _step(n: int, title: str) -> None:
    log.info("── step %d/6: %s", n, title)


def run_demo(workdir: Path, *, seed: int, host: str, port: int, keep_serving: bool, epochs: int) -> int:
    """Run the whole tour in ``workdir``; returns the exit status (0 = every step worked)."""
    from hashrec.data import DataConfig
    from hashrec.data.synthetic import SyntheticConfig, generate, write_csv
    from hashrec.index.bundle import load_bundle
    from hashrec.index.retriever import Retriever
    from hashrec.model.config import TrainConfig
    from hashrec.model.evaluate import evaluate_run, markdown_table, write_reports
    from hashrec.model.export import export_run
    from hashrec.model.train import train

    t0 = time.perf_counter()
    _step(1, "synthetic data (2,000 users, 1,000 items, 20 planted communities)")
    csv = write_csv(generate(SyntheticConfig(seed=seed)), workdir / "data" / "interactions.csv")
    log.info("wrote %s", csv)

    _step(2, "train HashGNN (default preset: LightGCN-style encoder, 64-bit codes)")
    # The default preset is tuned for Gowalla-sized graphs (batches of 8,192 edges); on 50k interactions
    # smaller batches give more steps per epoch and converge in seconds.
    cfg = TrainConfig.preset_config(
        "default",
        DataConfig(path=str(csv), seed=seed),
        epochs=epochs,
        valid_every=5,
        batch_size=1024,
        shared_negatives=256,
        seed=seed,
        tune=(),  # the settings search would train this run three times; `hashrec train` runs it
    )
    run_dir = train(cfg, workdir / "run", force=True)

    _step(3, "evaluate on the held-out test split (continuous, Hamming, hierarchical)")
    result = evaluate_run(run_dir)
    write_reports(run_dir, result)
    print(markdown_table(result), flush=True)

    _step(4, "export a bundle (FAISS binary index + embeddings + id maps), switch `current`")
    bundles = workdir / "bundles"
    version_dir = export_run(run_dir, bundles)
    log.info("published %s", version_dir)

    _step(5, "recommend in process with the two-stage Retriever")
    retriever = Retriever(load_bundle(bundles))
    users = [str(u) for u in retriever.bundle.users.raw[:3]]
    for rec in retriever.recommend(users, k=5, candidates=100):
        assert rec is not None
        shown = ", ".join(
            f"{i} ({s:.2f}, d={h})" for i, s, h in zip(rec.items, rec.scores, rec.hamming, strict=True)
        )
        print(f"{rec.user}: {shown}", flush=True)

    _step(6, "serve over HTTP and ask like a client would")
    port = _pick_port(host, port)
    base = f"http://{host}:{port}"
    cmd = [
        *(sys.executable, "-m", "hashrec.cli", "--log-level", "WARNING", "serve", "--bundles", str(bundles)),
        *("--host", host, "--port", str(port), "--cache", "memory", "--no-access-log"),
    ]
    log.info("starting: hashrec serve --bundles %s --port %d", bundles, port)
    # SIGTERM (a service manager, `kill`, `timeout`) must stop the server too: by default it ends this
    # process at once, without the `finally` below, and the server would keep its port as an orphan.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    proc = subprocess.Popen(cmd)
    try:
        _wait_ready(base, proc)
        url = f"{base}/recommend/{users[0]}?k=5"
        status, body = _get_json(url)
        print(f"\n$ curl -s '{url}'", flush=True)
        print(json.dumps(body, indent=2), flush=True)
        if status != 200:
            log.error("the service answered %d", status)
            return 1
        log.info("demo finished in %.0f s: the service is up at %s", time.perf_counter() - t0, base)
        if keep_serving:
            log.info("try: curl -s '%s/recommend/%s?k=10'   (Ctrl-C stops the service)", base, users[1])
            with contextlib.suppress(KeyboardInterrupt):
                proc.wait()
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_demo's `finally`, which stops the server


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(
        Path(args.workdir),
        seed=args.seed,
        host=args.host,
        port=args.port,
        keep_serving=not args.exit,
        epochs=args.epochs,
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    p = sub.add_parser("demo", help="generate data, train, export, serve and query, end to end")
    p.add_argument("--workdir", default="demo", help="where data, run and bundles go (default: ./demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="service port (a free one is used if taken)")
    p.add_argument("--exit", action="store_true", help="stop the service after its first answer")
    p.set_defaults(func=_cmd_demo)
