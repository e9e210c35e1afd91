"""The app: ``create_app(settings)`` builds the FastAPI application; its lifespan opens the context.

Run it with ``hashrec serve`` (or ``uvicorn --factory hashrec.service.app:create_app_from_env`` with
``HASHREC_*`` variables). Start-up fails (the lifespan raises, uvicorn exits non-zero) when the bundle is
missing or corrupt; ``hashrec serve`` checks that before uvicorn starts, to say which file and why.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from hashrec import __version__

from .context import open_context
from .errors import install_error_handlers
from .metrics import ServiceMetrics
from .middleware import ServiceMiddleware
from .routes import admin, export, health, recommend
from .runtime import GcPauseMonitor, LoopLagMonitor, freeze_startup_heap, install_drain, limit_native_threads
from .settings import Settings
from .state import Snapshot

log = logging.getLogger(__name__)

DESCRIPTION = """
Two-stage recommendations from a HashGNN bundle: Hamming top-C recall over binary item codes (FAISS), then
a re-rank of the C candidates by the continuous vectors, top-k returned. Answers say which bundle version
produced them and where they came from (`model`, `cache`, or a `popular` fallback with its reason).

Every error has the body `{"error": {"code": ..., "message": ..., "field": ...}}`.
"""


def create_app(settings: Settings, snapshot: Snapshot | None = None) -> FastAPI:
    """Build the app. ``snapshot``: an already loaded bundle (``hashrec serve`` loads it to fail fast)."""
    metrics = ServiceMetrics()
    gc_monitor, loop_lag = GcPauseMonitor(metrics.registry), LoopLagMonitor(metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_native_threads(1)
        async with open_context(settings, metrics, snapshot) as ctx:
            app.state.ctx = ctx
            restore = install_drain(lambda: setattr(ctx.state, "draining", True), settings.drain_s)
            if settings.gc_freeze:
                log.info(
                    "start-up heap frozen: %d objects out of the collector's reach", freeze_startup_heap()
                )
            gc_monitor.install()
            loop_lag.start()
            try:
                yield
            finally:
                restore()
                await loop_lag.stop()
                gc_monitor.uninstall()
        # uvicorn may re-raise SIGTERM and kill the process right after this: write queued logs now
        from .json_logs import finish_background_logging

        finish_background_logging()

    app = FastAPI(title="hashrec", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    # first, shadowing the documented APIRoute of the same path (kept for a measured gain: recommend.py)
    app.router.routes.append(recommend.fast_get_route(settings))
    for router in (
        recommend.build_router(settings),
        export.build_router(settings),
        health.router,
        admin.router,
    ):
        app.include_router(router)
    app.add_middleware(
        ServiceMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        log_requests=settings.access_log,
        max_inflight=settings.max_inflight,
        retry_after_s=settings.retry_after_s,
        api_token=settings.api_token.get_secret_value() if settings.api_token else None,
    )
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes: settings from ``HASHREC_*`` variables, JSON logs."""
    from .json_logs import setup_json_logging

    settings = Settings()  # type: ignore[call-arg]  # bundles comes from HASHREC_BUNDLES
    setup_json_logging(settings.log_level)
    return create_app(settings)
