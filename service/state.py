"""The bundle being served: one immutable snapshot (bundle + retriever + version), swapped atomically, and
how each worker follows the published version.

Every request reads ``ServingState.snapshot`` once and uses only that object, so an answer is always
computed, cached and labelled with one version, even while a reload swaps in another: a request that
started on the old snapshot finishes on it (the old bundle stays alive until its last user lets go).

Which version a worker serves (:meth:`ServingState.wanted`), checked every ``bundle_poll_s`` by
:meth:`ServingState.follow`:

1. an admin pin of this replica (``POST /admin/reload`` with a version), shared by its workers through
   ``runtime_dir/control.json``;
2. else ``HASHREC_BUNDLE_VERSION`` (a replica pinned at start does not follow);
3. else what ``BUNDLES/current`` points to: the published version. Polling is the guarantee (a missed
   notice cannot leave a worker behind); an admin reload only makes a switch immediate in its worker.

A new version is first verified in a child process (``hashrec bundle verify``: checksums, shapes, and
FAISS reading the index: a malformed index file crashes that process, never a serving one), then loaded
and smoke-tested in a thread, then swapped in with one assignment on the event loop. A version that fails
is logged and not retried until ``current`` changes again; the old one keeps serving.

Each worker reports the version it serves in ``runtime_dir/worker-<pid>.json`` (so an admin reload can
say when every worker switched) and leases it in ``BUNDLES/.leases`` (so pruning never removes a version a
live replica serves).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONTROL = "control.json"
VERIFY_TIMEOUT_S = 120.0


class BundleLoadError(Exception):
    """A bundle cannot be served. ``str(err)`` names the file and the reason."""


@dataclass
class Snapshot:
    """A loaded bundle ready to serve (never mutated after construction except its memo dict)."""

    version: str
    path: Path
    bundle: Any
    retriever: Any
    loaded_at: str
    index_type: str
    bits: int
    n_items: int
    n_users: int
    foldin: bool
    # per-snapshot memo (popular lists per k and filter): dies with the snapshot, so never stale
    memo: dict[Any, bytes] = field(default_factory=dict)

    def facts(self) -> dict[str, Any]:
        """What /healthz and the bundle info metric show."""
        return {
            "version": self.version,
            "loaded_at": self.loaded_at,
            "index_type": self.index_type,
            "bits": self.bits,
            "items": self.n_items,
            "users": self.n_users,
            "foldin": self.foldin,
        }


Observer = Callable[[str, float], None]


def resolve_version(bundles_dir: Path, version: str | None) -> Path:
    """The version directory to load (``None`` = ``current``), refused unless it lies directly under the
    bundles directory (a version name is never a path of the client's choosing). BundleLoadError."""
    from hashrec.index.bundle import BundleError, resolve_bundle_dir

    try:
        path = resolve_bundle_dir(bundles_dir / version if version else bundles_dir)
    except BundleError as err:
        raise BundleLoadError(str(err)) from err
    root = Path(bundles_dir).resolve()
    if path != root and path.parent != root:
        raise BundleLoadError(
            f"{bundles_dir / (version or 'current')}: resolves to {path}, outside the bundles directory {root}; refused"
        )
    return path


def load_snapshot(
    path: Path, threads: int = 1, observe: Observer | None = None, mmap: bool = False
) -> Snapshot:
    """Load, validate and smoke-test one bundle version directory.

    Validation is the bundle loader's full check (manifest, checksums, shapes) plus one real query through
    the Retriever (a known user, and the popularity list), so a bundle that loads but cannot answer is
    refused before it serves anyone. Raises :class:`BundleLoadError` naming the file and the reason.
    """
    from hashrec.index.bundle import BundleError, load_bundle
    from hashrec.index.retriever import Retriever

    t0 = time.perf_counter()
    try:
        bundle = load_bundle(path, mmap=mmap)
        retriever = Retriever(bundle, threads=threads, observe=observe)
    except BundleError as err:
        raise BundleLoadError(str(err)) from err
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise BundleLoadError(f"{path}: bundle cannot be loaded: {err}") from err
    try:
        if bundle.n_items and len(retriever.popular(1).items) != 1:
            raise ValueError("popular(1) returned no item")
        if bundle.n_users:
            first = str(bundle.users.raw[0])
            (rec,) = retriever.recommend([first], 1, 1, exclude_seen=False)
            if rec is None or len(rec.items) != 1:
                raise ValueError(f"recommend for user {first!r} returned no item")
    except Exception as err:  # whatever the cause, this bundle must not serve
        raise BundleLoadError(f"{path}: bundle loads but fails a test query: {err}") from err
    snap = Snapshot(
        version=str(bundle.version),
        path=Path(path),
        bundle=bundle,
        retriever=retriever,
        loaded_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        index_type=bundle.index_type,
        bits=bundle.bits,
        n_items=bundle.n_items,
        n_users=bundle.n_users,
        foldin=bundle.foldin is not None,
    )
    log.info(
        "bundle %s loaded from %s in %.0f ms",
        snap.version,
        path,
        (time.perf_counter() - t0) * 1000,
        extra={"bundle": snap.facts()},
    )
    return snap


async def verify_isolated(path: Path) -> None:
    """``hashrec bundle verify`` in a child process: whatever a malformed file does to FAISS happens there.

    Raises BundleLoadError with the child's message (or how it died)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hashrec",
        "--log-level",
        "ERROR",
        "bundle",
        "verify",
        str(path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _out, err = await asyncio.wait_for(proc.communicate(), VERIFY_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        raise BundleLoadError(
            f"{path}: verification did not finish within {VERIFY_TIMEOUT_S:.0f} s"
        ) from None
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip().splitlines()
        why = text[-1] if text else f"the verifying process died (status {proc.returncode})"
        raise BundleLoadError(f"{path}: refused by `hashrec bundle verify`: {why}")


class ServingState:
    """Holds the current snapshot and moves it to the version this worker should serve (module docstring)."""

    def __init__(
        self,
        bundles_dir: Path,
        *,
        threads: int = 1,
        observe: Observer | None = None,
        mmap: bool = False,
        pinned: str | None = None,
        runtime_dir: Path | None = None,
        lease_ttl_s: float = 60.0,
    ) -> None:
        self.bundles_dir = Path(bundles_dir)
        self.threads, self.observe, self.mmap = threads, observe, mmap
        self.pinned = pinned
        self.runtime_dir = runtime_dir
        self.lease_ttl_s = lease_ttl_s
        self.snapshot: Snapshot | None = None
        self.draining = False  # SIGTERM received: /readyz says 503 while in-flight requests finish
        self.holder = f"{socket.gethostname()}-{os.getpid()}"
        self._lock = asyncio.Lock()
        self._failed: set[Path] = set()
        self._lease_warned = False

    # -- which version -------------------------------------------------------------------------------------
    def control(self) -> dict[str, Any]:
        """The replica's admin control (``{"version": pin or None, "seq": n}``); empty when there is none."""
        if self.runtime_dir is None:
            return {}
        try:
            return dict(json.loads((self.runtime_dir / CONTROL).read_text()))
        except (OSError, ValueError):
            return {}

    def wanted(self) -> Path:
        """The version directory this worker should serve now (see the module docstring)."""
        ctl = self.control()
        version = ctl.get("version") if ctl else None
        return resolve_version(self.bundles_dir, version or self.pinned)

    # -- loading -------------------------------------------------------------------------------------------
    def load_initial(self) -> Snapshot:
        """Load the start-up bundle (blocking, in-process: a failure stops the process before it serves)."""
        self.snapshot = load_snapshot(self.wanted(), self.threads, self.observe, self.mmap)
        self.report()
        return self.snapshot

    async def switch(self, path: Path) -> tuple[Snapshot | None, Snapshot]:
        """Verify ``path`` in a child process, load it in a thread, swap it in; returns (old, new).

        Raises BundleLoadError (and keeps serving the old snapshot) when the new one fails."""
        async with self._lock:
            if self.snapshot is not None and self.snapshot.path == path:
                return self.snapshot, self.snapshot
            log.info("switching to %s: verifying it in a child process", path.name)
            await verify_isolated(path)
            new = await asyncio.to_thread(load_snapshot, path, self.threads, self.observe, self.mmap)
            old, self.snapshot = self.snapshot, new  # the swap: one reference assignment on the event loop
            await asyncio.to_thread(self.report)
            log.info("now serving %s (was %s)", new.version, old.version if old else None)
            return old, new

    async def check(self) -> bool:
        """Switch to the wanted version when it differs; returns whether a switch happened. A version
        that failed once is not retried until the wanted version changes."""
        try:
            path = await asyncio.to_thread(self.wanted)
        except BundleLoadError as err:
            log.warning("cannot tell which bundle to serve: %s", err)
            return False
        if (self.snapshot is not None and path == self.snapshot.path) or path in self._failed:
            return False
        try:
            await self.switch(path)
            return True
        except BundleLoadError as err:
            self._failed.add(path)
            log.error(
                "not switching to %s, still serving %s: %s",
                path.name,
                self.snapshot.version if self.snapshot else None,
                err,
            )
            return False

    async def follow(self, poll_s: float, on_switch: Callable[[Snapshot], Any] | None = None) -> None:
        """Check every ``poll_s`` seconds until cancelled (renewing the lease and the worker report).

        The poll's file reads and writes run in a thread: bundles often live on a network filesystem, and
        a stalled one must not stall the requests on the event loop."""
        while True:
            await asyncio.sleep(poll_s)
            if await self.check() and on_switch is not None and self.snapshot is not None:
                await on_switch(self.snapshot)
            await asyncio.to_thread(self.report)

    # -- telling others ------------------------------------------------------------------------------------
    def report(self) -> None:
        """Renew this worker's lease on its version and its line in the runtime directory."""
        snap = self.snapshot
        if snap is None:
            return
        from hashrec.index.publish import write_lease

        try:
            write_lease(self.bundles_dir, self.holder, snap.version, self.lease_ttl_s)
        except OSError as err:
            if not self._lease_warned:  # a read-only bundles directory: say it once
                self._lease_warned = True
                log.warning(
                    "cannot lease %s in %s (%s): pruning may remove a version this worker serves",
                    snap.version,
                    self.bundles_dir,
                    err,
                )
        if self.runtime_dir is not None:
            line = {"pid": os.getpid(), "version": snap.version, "time": time.time()}
            tmp = self.runtime_dir / f".worker-{os.getpid()}.tmp"
            tmp.write_text(json.dumps(line))
            os.replace(tmp, self.runtime_dir / f"worker-{os.getpid()}.json")

    def workers(self, fresh_s: float) -> list[dict[str, Any]]:
        """The reports of this replica's workers seen in the last ``fresh_s`` seconds (self included)."""
        if self.runtime_dir is None:
            snap = self.snapshot
            return [{"pid": os.getpid(), "version": snap.version if snap else None}]
        now, out = time.time(), []
        for f in self.runtime_dir.glob("worker-*.json"):
            try:
                line = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if now - float(line.get("time", 0)) <= fresh_s:
                out.append(line)
        return out

    def set_control(self, version: str | None) -> None:
        """Pin this replica to ``version`` (None: follow ``current`` again), for every worker's next check."""
        if self.runtime_dir is None:
            self.pinned = version
            return
        seq = int(self.control().get("seq", 0)) + 1
        tmp = self.runtime_dir / f".control-{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"version": version, "seq": seq}))
        os.replace(tmp, self.runtime_dir / CONTROL)
        self._failed.clear()

    def close(self) -> None:
        """Drop the lease and the worker report (a clean shutdown)."""
        from hashrec.index.publish import drop_lease

        drop_lease(self.bundles_dir, self.holder)
        if self.runtime_dir is not None:
            (self.runtime_dir / f"worker-{os.getpid()}.json").unlink(missing_ok=True)
