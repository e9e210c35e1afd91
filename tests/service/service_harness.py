"""Service test helpers: bundles built from random embeddings (no training) and a real server process.

``ServerProcess`` runs ``hashrec serve`` as a subprocess on a free port (real uvicorn, real sockets) and
waits for ``/readyz``; tests talk to it with httpx over loopback. Nothing is mocked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from hashrec.index.bundle import FoldIn
from hashrec.index.export import build_bundle
from hashrec.model.data import Dataset

BITS = 32
ADMIN_TOKEN = "test-admin-token-0123456789"
HASHREC = str(Path(sys.executable).parent / "hashrec")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_bundle(bundles: Path, ds: Dataset, seed: int, *, foldin: bool = True) -> Path:
    """Publish a bundle of random embeddings for ``ds`` (a different model per seed); returns its dir."""
    rng = np.random.default_rng(seed)
    user_z = np.tanh(rng.standard_normal((ds.n_users, BITS))).astype(np.float32)
    item_z = np.tanh(rng.standard_normal((ds.n_items, BITS))).astype(np.float32)
    fi = None
    if foldin:
        d = 16
        fi = FoldIn(
            item=rng.standard_normal((ds.n_items, d)).astype(np.float32),
            weight=rng.standard_normal((BITS, d)).astype(np.float32),
            bias=rng.standard_normal(BITS).astype(np.float32) * 0.1,
            power=0.5,
        )
    return build_bundle(bundles, user_z=user_z, item_z=item_z, dataset=ds, foldin=fi, keep=10)


class ServerProcess:
    """A ``hashrec serve`` subprocess on a free port."""

    def __init__(self, bundles: Path, log_path: Path, **env: str) -> None:
        self.bundles = bundles
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "HASHREC_BUNDLES": str(bundles),
            "HASHREC_PORT": str(self.port),
            "HASHREC_COMPUTE_THREADS": "2",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start and wait until /readyz answers 200; raises with the log tail when it does not."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (lives as long as the process)
        self.proc = subprocess.Popen(
            [HASHREC, "serve"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if hasattr(self, "_log"):
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""
