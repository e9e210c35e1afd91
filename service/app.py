"""The app factory: ``create_app(settings)`` builds the FastAPI app; the lifespan loads the bundle.

Run it with ``hashrec serve`` (or ``uvicorn --factory hashrec.service.app:create_app_from_env`` with
``HASHREC_*`` variables). Start-up fails (the lifespan raises, uvicorn exits non-zero) when the bundle is
missing or corrupt; ``hashrec serve`` checks that before uvicorn starts, to say which file and why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from hashrec import __version__

from .batcher import MicroBatcher
from .cache import make_cache
from .context import ServiceContext
from .errors import install_error_handlers
from .metrics import ServiceMetrics
from .middleware import ServiceMiddleware
from .quality_monitor import QualityMonitor
from .refresh import RefreshAhead
from .routes import admin, export, health, recommend
from .runtime_metrics import GcPauseMonitor, LoopLagMonitor, freeze_startup_heap
from .settings import Settings
from .state import ServingState, Snapshot

log = logging.getLogger(__name__)

DESCRIPTION = """
Two-stage recommendations from a HashGNN bundle: Hamming top-C recall over binary item codes (FAISS), then
a continuous re-rank of the C candidates, top-k returned. Answers say which bundle version produced them and
where they came from (`model`, `cache`, or a `popular` fallback with its reason).

Every error has the body `{"error": {"code": ..., "message": ..., "field": ...}}`.
"""


def limit_native_threads(threads: int = 1) -> None:
    """Give each model call one OpenMP/BLAS thread: concurrency comes from the request thread pool.

    Without this FAISS and torch each start one thread per core *per call*, and a few concurrent requests
    oversubscribe the cores (latency spikes, no throughput gain). Environment variables cover libraries
    loaded later and worker processes; the runtime calls cover those already loaded.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:  # pragma: no cover - faiss is a hard dependency
        pass
    import sys

    if "torch" in sys.modules:  # never import torch just to configure it (it costs a second at start-up)
        sys.modules["torch"].set_num_threads(threads)
    # numpy's BLAS (OpenBLAS) is usually loaded before this runs (the CLI imports numpy first), so its
    # environment variable comes too late; threadpoolctl sets the loaded library's thread count. Measured:
    # a matrix-vector product per sampled answer (the quality monitor) with OpenBLAS's default of one
    # thread per core, spinning between calls, doubled the service's CPU per uncached request.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning("threadpoolctl is not installed: numpy's BLAS keeps its default thread count")
    else:
        threadpool_limits(threads, user_api="blas")


def create_app(settings: Settings, snapshot: Snapshot | None = None) -> FastAPI:
    """Build the app. ``snapshot``: an already loaded bundle (``hashrec serve`` loads it to fail fast)."""
    metrics = ServiceMetrics()
    gc_monitor = GcPauseMonitor(metrics.registry)
    loop_lag = LoopLagMonitor(metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Load the bundle, build the cache, pools and batcher; release them at shutdown."""
        limit_native_threads(1)

        # label children looked up once: `labels()` takes a lock and builds a key on every call, and these
        # run several times per model call
        stages = {name: metrics.stage.labels(name) for name in ("recall", "rerank", "model")}

        def observe(stage: str, seconds: float) -> None:
            child = stages.get(stage)
            (child if child is not None else metrics.stage.labels(stage)).observe(seconds)

        state = ServingState(settings.bundles, threads=1, observe=observe, mmap=settings.bundle_mmap)
        if snapshot is not None:
            snapshot.retriever.observe = observe
            state.snapshot = snapshot
        else:
            state.load_initial(settings.bundle_version)
        snap = state.snapshot
        assert snap is not None
        metrics.set_bundle(snap.version, snap.index_type, snap.n_items, snap.n_users, snap.bits)
        cache = make_cache(
            settings.cache_backend,
            redis_url=settings.redis_url,
            ttl_s=settings.cache_ttl_s,
            ttl_jitter=settings.cache_ttl_jitter,
            max_entries=settings.cache_size,
            timeout_s=settings.redis_timeout_s,
            pool_size=settings.redis_pool_size,
            breaker_failures=settings.breaker_failures,
            breaker_reset_s=settings.breaker_reset_s,
            near_entries=settings.near_cache_size,
            metrics=metrics,
        )
        executor = ThreadPoolExecutor(settings.compute_threads, thread_name_prefix="hashrec-model")

        def observe_batch(seconds: float, size: int) -> None:
            stages["model"].observe(seconds)
            metrics.batch_size.observe(size)

        batcher = MicroBatcher(
            executor,
            max_inflight=settings.compute_threads,
            observe=observe_batch,
            inline_users=settings.inline_users,
        )
        quality = QualityMonitor(metrics.registry, settings.quality_sample_rate, executor)
        export_executor = ThreadPoolExecutor(settings.export_threads, thread_name_prefix="hashrec-export")
        refresh = RefreshAhead(
            settings.cache_refresh_ahead if settings.cache_backend != "none" else 0.0,
            settings.cache_refresh_concurrency,
            metrics.registry,
        )
        app.state.ctx = ServiceContext(
            settings,
            metrics,
            state,
            cache,
            executor,
            batcher,
            export_executor,
            quality=quality,
            refresh=refresh,
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
        if settings.gc_freeze:
            frozen = freeze_startup_heap()
            log.info("start-up heap frozen: %d objects out of the garbage collector's reach", frozen)
        gc_monitor.install()
        loop_lag.start()
        try:
            yield
        finally:
            await loop_lag.stop()
            gc_monitor.uninstall()
            await refresh.close()
            await cache.close()
            executor.shutdown(wait=False, cancel_futures=True)
            export_executor.shutdown(wait=False, cancel_futures=True)
            # the process may be killed by uvicorn's re-raised SIGTERM right after this: write logs now
            from .json_logs import finish_background_logging

            finish_background_logging()

    app = FastAPI(
        title="hashrec",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.router.routes.append(recommend.fast_get_route(settings))  # first: shadows the documented GET route
    app.include_router(recommend.build_router(settings))
    app.include_router(export.build_router(settings))
    app.include_router(health.router)
    app.include_router(admin.router)
    app.add_middleware(
        ServiceMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        log_requests=settings.access_log,
    )
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes: settings from ``HASHREC_*`` variables, JSON logs."""
    from .json_logs import setup_json_logging

    settings = Settings()  # type: ignore[call-arg]  # bundles comes from HASHREC_BUNDLES
    setup_json_logging(settings.log_level)
    return create_app(settings)
