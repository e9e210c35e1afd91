"""The bundle being served: one immutable snapshot (bundle + retriever + version), swapped atomically.

Every request reads ``ServingState.snapshot`` once and uses only that object, so an answer is always
computed, cached and labelled with one version, even while a reload swaps in another: a request that
started on the old snapshot finishes on it (the old bundle stays alive until its last user lets go).
Reloads load and validate the new bundle off the event loop (a thread), then replace the reference in one
assignment, which is atomic for readers on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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
    # per-snapshot memo (popular lists per k): dies with the snapshot, so never stale after a reload
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


def load_snapshot(
    bundles_dir: Path,
    version: str | None = None,
    threads: int = 1,
    observe: Observer | None = None,
    mmap: bool = False,
) -> Snapshot:
    """Load, validate and smoke-test one bundle version (``None`` = the ``current`` link).

    Validation is the bundle loader's full check (manifest, checksums, shapes) plus one real query through
    the Retriever (a known user, and the popularity list), so a bundle that loads but cannot answer is
    refused before it serves anyone. Raises :class:`BundleLoadError` naming the file and the reason.
    """
    from hashrec.index.bundle import BundleError, load_bundle, resolve_bundle_dir
    from hashrec.index.retriever import Retriever

    t0 = time.perf_counter()
    try:
        # a version must be a direct child of the bundles directory: never a path of the client's choosing
        path = resolve_bundle_dir(bundles_dir / version if version else bundles_dir)
        # ... and not one that a symlink inside it leads elsewhere: requests load only what lies under it
        root = Path(bundles_dir).resolve()
        if path != root and path.parent != root:
            raise BundleError(
                f"{bundles_dir / (version or 'current')}: resolves to {path}, outside the bundles directory "
                f"{root}; refused"
            )
        bundle = load_bundle(path, mmap=mmap)
        retriever = Retriever(bundle, threads=threads, observe=observe)
    except BundleError as err:
        raise BundleLoadError(str(err)) from err
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise BundleLoadError(
            f"{bundles_dir}: bundle {version or 'current'} cannot be loaded: {err}"
        ) from err
    try:
        pop = retriever.popular(1)
        if bundle.n_items and len(pop.items) != 1:
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
        snap.path,
        (time.perf_counter() - t0) * 1000,
        extra={"bundle": snap.facts()},
    )
    return snap


class ServingState:
    """Holds the current snapshot; ``reload`` swaps a new one in atomically (one reload at a time)."""

    def __init__(
        self, bundles_dir: Path, threads: int = 1, observe: Observer | None = None, mmap: bool = False
    ) -> None:
        self.bundles_dir = bundles_dir
        self.threads = threads
        self.observe = observe
        self.mmap = mmap
        self.snapshot: Snapshot | None = None
        self._reload_lock = asyncio.Lock()

    def load_initial(self, version: str | None = None) -> Snapshot:
        """Load the start-up bundle (blocking; called before the server accepts requests)."""
        self.snapshot = load_snapshot(self.bundles_dir, version, self.threads, self.observe, self.mmap)
        return self.snapshot

    async def reload(self, version: str | None = None) -> tuple[Snapshot | None, Snapshot]:
        """Load ``version`` (default: ``current``) in a thread, then swap it in; returns (old, new).

        Raises :class:`BundleLoadError` and leaves the current snapshot serving when the new one fails.
        """
        async with self._reload_lock:
            new = await asyncio.to_thread(
                load_snapshot, self.bundles_dir, version, self.threads, self.observe, self.mmap
            )
            old = self.snapshot
            self.snapshot = new  # the swap: one reference assignment on the event loop
            return old, new
