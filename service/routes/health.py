"""Probes and metrics: ``/livez``, ``/readyz``, ``/healthz``, ``/metrics``."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..context import CtxDep
from ..schemas import Health, Status

router = APIRouter(tags=["probes"])


@router.get(
    "/livez",
    response_model=Status,
    summary="Liveness: the process answers",
    responses={200: {"content": {"application/json": {"example": {"status": "ok", "version": None}}}}},
)
async def livez() -> Status:
    """Always 200 while the event loop runs (restart the container when this fails)."""
    return Status(status="ok")


@router.get(
    "/readyz",
    response_model=Status,
    summary="Readiness: a bundle is loaded and answers",
    responses={
        200: {"content": {"application/json": {"example": {"status": "ok", "version": "20260101-abc"}}}},
        503: {"model": Status, "description": "no bundle loaded (yet), or draining after SIGTERM"},
    },
)
async def readyz(ctx: CtxDep) -> Response:
    """200 when a bundle serves; 503 when none does, or while draining after SIGTERM (so that a load
    balancer stops sending traffic before the server stops accepting). Redis being down does not make the
    service unready."""
    snap = ctx.state.snapshot
    if snap is None or ctx.state.draining:
        status: Literal["draining", "unavailable"] = "draining" if ctx.state.draining else "unavailable"
        return JSONResponse(
            Status(status=status, version=snap.version if snap else None).model_dump(), status_code=503
        )
    return JSONResponse(Status(status="ok", version=snap.version).model_dump())


@router.get("/healthz", response_model=Health, summary="Details: version, index, sizes, cache state")
async def healthz(ctx: CtxDep) -> Health:
    """The served bundle's facts and the cache's state (Redis is pinged, bypassing the breaker)."""
    snap = ctx.state.snapshot
    cache_state = dict(ctx.cache.state())
    ping = getattr(ctx.cache, "ping", None)
    if ping is not None:
        cache_state["reachable"] = await ping()
    facts = snap.facts() if snap else {}
    return Health(
        status="ok" if snap else "unavailable",
        version=facts.get("version"),
        loaded_at=facts.get("loaded_at"),
        index_type=facts.get("index_type"),
        bits=facts.get("bits"),
        items=facts.get("items"),
        users=facts.get("users"),
        foldin=facts.get("foldin"),
        cache=cache_state,
        uptime_s=round(time.monotonic() - ctx.started, 3),
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"example": "hashrec_http_requests_total{...} 12.0"}}}},
)
async def metrics(ctx: CtxDep) -> Response:
    """The text exposition format of the app's registry."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
