"""The app's long-lived parts, built once in the lifespan (:func:`open_context`), and the dependencies
routes use to reach them (``CtxDep``, ``SnapshotDep``). No module-level globals: several apps can share a
process (the tests do)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from .batcher import MicroBatcher
from .cache import AnswerCache, make_cache
from .errors import ApiError
from .export_process import ExportProcess
from .metrics import ServiceMetrics
from .quality_monitor import QualityMonitor
from .settings import Settings
from .state import ServingState, Snapshot

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """Everything a request handler needs; see :func:`open_context` for how each part is made."""

    settings: Settings
    metrics: ServiceMetrics
    state: ServingState
    cache: AnswerCache
    executor: ThreadPoolExecutor  # model calls too large to run inline (see batcher.py)
    batcher: MicroBatcher
    export_process: ExportProcess  # candidate exports: a child process, never the request threads
    quality: QualityMonitor
    started: float = field(default_factory=time.monotonic)
    exports: int = 0  # export streams running now (capped by settings.max_exports)

    async def switched(self, snap: Snapshot) -> None:
        """After a switch: free the local cache (its keys name the old version) and say what is served."""
        await self.cache.clear()
        self.metrics.reloads.labels("ok").inc()
        self.metrics.set_bundle(snap.version, snap.index_type, snap.n_items, snap.n_users, snap.bits)

    def snapshot(self) -> Snapshot:
        """The snapshot this request will use from start to end; 503 when none is loaded."""
        snap = self.state.snapshot
        if snap is None:
            raise ApiError(503, "not_ready", "no bundle is loaded")
        return snap


def _stage_observer(metrics: ServiceMetrics) -> Callable[[str, float], None]:
    """``observe(stage, seconds)`` into the stage histogram (label children looked up once: ``labels()``
    takes a lock and builds a key per call, and this runs several times per model call)."""
    stages = {name: metrics.stage.labels(name) for name in ("recall", "rerank", "model")}

    def observe(stage: str, seconds: float) -> None:
        stages.get(stage, stages["model"]).observe(seconds)

    return observe


@asynccontextmanager
async def open_context(
    settings: Settings, metrics: ServiceMetrics, snapshot: Snapshot | None = None
) -> AsyncIterator[ServiceContext]:
    """Load the bundle (or take ``snapshot``, already loaded by ``hashrec serve``), make the cache, the
    thread pools, the batcher and the quality monitor; close them all on exit."""
    observe = _stage_observer(metrics)
    state = ServingState(
        settings.bundles,
        threads=1,
        observe=observe,
        mmap=settings.bundle_mmap,
        pinned=settings.bundle_version,
        runtime_dir=settings.runtime_dir,
        lease_ttl_s=settings.lease_ttl_s,
    )
    if snapshot is not None:
        snapshot.retriever.observe = observe
        state.snapshot = snapshot
        state.report()
    else:
        state.load_initial()
    snap = state.snapshot
    assert snap is not None
    metrics.set_bundle(snap.version, snap.index_type, snap.n_items, snap.n_users, snap.bits)
    cache = make_cache(
        settings.cache_backend,
        redis_url=settings.redis_url,
        ttl_s=settings.cache_ttl_s,
        ttl_jitter=settings.cache_ttl_jitter,
        max_bytes=settings.cache_bytes,
        near_bytes=settings.near_cache_bytes,
        timeout_s=settings.redis_timeout_s,
        pool_size=settings.redis_pool_size,
        breaker_failures=settings.breaker_failures,
        breaker_reset_s=settings.breaker_reset_s,
        bypass_below=settings.cache_bypass_below,
        metrics=metrics,
    )
    executor = ThreadPoolExecutor(settings.compute_threads, thread_name_prefix="hashrec-model")
    export_process = ExportProcess(settings.export_processes)

    def observe_batch(seconds: float, size: int) -> None:
        observe("model", seconds)
        metrics.batch_size.observe(size)

    ctx = ServiceContext(
        settings=settings,
        metrics=metrics,
        state=state,
        cache=cache,
        executor=executor,
        batcher=MicroBatcher(
            executor, settings.compute_threads, observe=observe_batch, inline_users=settings.inline_users
        ),
        export_process=export_process,
        quality=QualityMonitor(metrics.registry, settings.quality_sample_rate, executor),
    )
    log.info(
        "serving bundle %s (%s, %d items, %d bits), cache %s, %d compute threads",
        snap.version,
        snap.index_type,
        snap.n_items,
        snap.bits,
        settings.cache_backend,
        settings.compute_threads,
    )
    follower = None
    if settings.bundle_poll_s > 0:
        follower = asyncio.get_running_loop().create_task(state.follow(settings.bundle_poll_s, ctx.switched))
    try:
        yield ctx
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        state.close()
        await cache.close()
        executor.shutdown(wait=False, cancel_futures=True)
        export_process.close()


async def get_context(request: Request) -> ServiceContext:
    """The app's ServiceContext (set by the lifespan). ``async`` on purpose: FastAPI runs plain ``def``
    dependencies in a worker thread, a thread hand-off per request for a dictionary look-up."""
    ctx: ServiceContext = request.app.state.ctx
    return ctx


async def get_snapshot(request: Request) -> Snapshot:
    """The bundle snapshot the request uses from start to end (503 when none is loaded)."""
    ctx: ServiceContext = request.app.state.ctx
    return ctx.snapshot()


CtxDep = Annotated[ServiceContext, Depends(get_context)]
SnapshotDep = Annotated[Snapshot, Depends(get_snapshot)]
