"""``POST /admin/reload``: load a bundle version, validate it, swap it in while requests keep flowing."""

from __future__ import annotations

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
    summary="Load and swap in a bundle version",
    responses=error_doc(401, 403, 404, 409, 422),
)
async def reload(
    ctx: CtxDep,
    body: ReloadRequest | None = None,
    authorization: str | None = Header(default=None, description="`Bearer <HASHREC_ADMIN_TOKEN>`"),
) -> ReloadResponse:
    """Validate the new bundle fully (load + test query) in a thread, then swap it in atomically.

    Requests in flight finish on the version they started with; later ones see the new version; none fails.
    A bundle that fails validation is refused (422, the message names the file) and the old one keeps
    serving.
    """
    _check_token(ctx, authorization)
    if ctx.settings.workers > 1:
        # A request reaches one worker process: reloading it alone would serve two versions at once.
        raise ApiError(
            409,
            "reload_unsupported",
            f"hot reload needs a single worker process (HASHREC_WORKERS={ctx.settings.workers}); run one worker "
            "per container and scale with containers, or restart the service to pick up the new bundle",
        )
    version = body.version if body else None
    previous = ctx.snapshot().version
    t0 = time.perf_counter()
    try:
        _old, new = await ctx.state.reload(version)
    except BundleLoadError as err:
        ctx.metrics.reloads.labels("refused").inc()
        log.error("reload refused, still serving %s: %s", previous, err)
        if "no such" in str(err).lower() or "not found" in str(err).lower():
            raise ApiError(404, "bundle_not_found", str(err), "body.version") from err
        raise ApiError(422, "bundle_invalid", str(err), "body.version") from err
    await ctx.cache.clear()
    ctx.metrics.reloads.labels("ok").inc()
    f = new.facts()
    ctx.metrics.set_bundle(new.version, new.index_type, new.n_items, new.n_users, new.bits)
    load_ms = (time.perf_counter() - t0) * 1000
    log.info("reloaded: %s -> %s in %.0f ms", previous, new.version, load_ms, extra={"bundle": f})
    return ReloadResponse(
        previous=previous, version=new.version, changed=new.version != previous, load_ms=round(load_ms, 1)
    )
