"""Everything a request handler needs, created once per app in the lifespan: the dependency routes use."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from .batcher import MicroBatcher
from .cache import AnswerCache
from .errors import ApiError
from .metrics import ServiceMetrics
from .quality_monitor import QualityMonitor
from .refresh import RefreshAhead
from .settings import Settings
from .state import ServingState, Snapshot


@dataclass
class ServiceContext:
    """The app's long-lived parts (no module-level globals: several apps can share a process in tests)."""

    settings: Settings
    metrics: ServiceMetrics
    state: ServingState
    cache: AnswerCache
    executor: ThreadPoolExecutor
    batcher: MicroBatcher
    export_executor: ThreadPoolExecutor
    started: float = field(default_factory=time.monotonic)
    quality: QualityMonitor | None = None  # samples answers for hashrec_recall_overlap (quality_monitor.py)
    refresh: RefreshAhead | None = None  # background refresh of cache entries near expiry (refresh.py)

    def snapshot(self) -> Snapshot:
        """The snapshot this request will use from start to end; 503 when none is loaded."""
        snap = self.state.snapshot
        if snap is None:
            raise ApiError(503, "not_ready", "no bundle is loaded")
        return snap


async def get_context(request: Request) -> ServiceContext:
    """FastAPI dependency: the app's ServiceContext (set by the lifespan).

    ``async`` on purpose: FastAPI runs plain ``def`` dependencies in a worker thread, a thread hand-off per
    request for a dictionary look-up.
    """
    ctx: ServiceContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServiceContext, Depends(get_context)]
