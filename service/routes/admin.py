"""``POST /admin/reload``: load a bundle version, validate it, swap it in while requests keep flowing."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from fastapi import APIRouter, Header

from ..context import CtxDep
from ..errors import ApiError, error_doc
from ..schemas import ReloadRequest, ReloadResponse
from ..state import BundleLoadError

log = logging.getLogger(__name__)

router = APIRouter(tags=["admin"])


def _check_token(ctx: CtxDep, authorization: str | None) -> None:
    configured = ctx.settings.admin_token
    if configured is None:
        raise ApiError(
            403, "admin_disabled", "admin endpoints are disabled (no HASHREC_ADMIN_TOKEN configured)"
        )
    scheme, _, given = (authorization or "").partition(" ")
    # compare_digest: the time taken must not tell an attacker how much of the token was right
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), configured.get_secret_value().encode()
    )
    if not ok:
        raise ApiError(
            401,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
            "header.authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    summary="Switch this replica (every worker) to a bundle version, or back to following `current`",
    responses=error_doc(401, 403, 404, 422),
)
async def reload(
    ctx: CtxDep,
    body: ReloadRequest | None = None,
    authorization: str | None = Header(default=None, description="`Bearer <HASHREC_ADMIN_TOKEN>`"),
) -> ReloadResponse:
    """``{"version": V}`` pins the replica to V; ``{"version": null}`` (or no body) makes it follow the
    published ``current`` again. This worker verifies the version (in a child process), loads it and swaps it
    in before answering; the replica's other workers read the same request and follow within
    ``HASHREC_BUNDLE_POLL_S`` (the answer counts those already there, after waiting that long at most).

    Requests in flight finish on the version they started with; later ones see the new version; none fails.
    A version that fails verification is refused (422, the message names the file) and the old one keeps
    serving; the pin is withdrawn.
    """
    _check_token(ctx, authorization)
    version = body.version if body else None
    state = ctx.state
    previous = ctx.snapshot().version
    t0 = time.perf_counter()
    await asyncio.to_thread(state.set_control, version)  # file work off the event loop, as in the poll
    try:
        old, new = await state.switch(await asyncio.to_thread(state.wanted))
    except BundleLoadError as err:
        await asyncio.to_thread(state.set_control, None)
        ctx.metrics.reloads.labels("refused").inc()
        log.error("reload refused, still serving %s: %s", previous, err)
        if "no such" in str(err).lower() or "not found" in str(err).lower():
            raise ApiError(404, "bundle_not_found", str(err), "body.version") from err
        raise ApiError(422, "bundle_invalid", str(err), "body.version") from err
    if old is not new:
        await ctx.switched(new)
    load_ms = (time.perf_counter() - t0) * 1000
    workers = await _wait_for_workers(ctx, new.version)
    log.info("reloaded: %s -> %s in %.0f ms", previous, new.version, load_ms, extra={"bundle": new.facts()})
    return ReloadResponse(
        previous=previous,
        version=new.version,
        changed=new.version != previous,
        pinned=version is not None,
        load_ms=round(load_ms, 1),
        workers=len(workers),
        workers_on_version=sum(w.get("version") == new.version for w in workers),
    )


async def _wait_for_workers(ctx: CtxDep, version: str) -> list[dict[str, object]]:
    """The replica's worker reports once all are on ``version``, or after one poll interval and a second."""
    poll = ctx.settings.bundle_poll_s
    fresh = 2 * poll + 5  # a worker that has not reported in that long is gone
    deadline = time.monotonic() + (poll + 1 if poll > 0 else 0)
    while True:
        workers = await asyncio.to_thread(ctx.state.workers, fresh)
        if all(w.get("version") == version for w in workers) or time.monotonic() >= deadline:
            return workers
        await asyncio.sleep(0.1)
