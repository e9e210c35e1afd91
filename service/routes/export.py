"""``POST /candidates/export``: top-C candidates for a list of users (or all), streamed as NDJSON.

Safe to offer beside online traffic: an optional bearer token (``HASHREC_EXPORT_TOKEN``, else the API
token's rule); at most ``max_exports`` streams per worker (503 with Retry-After past it); the rows are
computed *and encoded* in the worker's export process at the lowest CPU priority (service/export_process.py),
never on the event loop or in the request threads; the stream ends with an explicit line
``{"end": true, "rows": N, ...}``, so a client can tell a complete export from a cut one.
"""

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from ..context import CtxDep, ServiceContext
from ..errors import ApiError, error_doc
from ..export_process import encode_batch
from ..middleware import bearer_ok
from ..recommender import resolve_filters
from ..schemas import ExportEnd, ExportRequest, ExportRow
from ..settings import Settings


def _check_token(ctx: ServiceContext, authorization: str | None) -> None:
    token = ctx.settings.export_token
    if token is not None and not bearer_ok(
        {b"authorization": (authorization or "").encode("latin-1")}, token.get_secret_value()
    ):
        raise ApiError(
            401,
            "unauthorized",
            "a valid `Authorization: Bearer <export token>` header is required",
            "header.authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _users(ctx: ServiceContext, snap: Any, body: ExportRequest) -> Any:
    """Internal ids of the requested users (None = every user); 422 naming the first unknown id."""
    if body.users is None:
        return None
    s = ctx.settings
    if len(body.users) > s.max_export_users:
        raise ApiError(
            422,
            "invalid_parameter",
            f"at most {s.max_export_users} users per export, got {len(body.users)}",
            "body.users",
        )
    idx = snap.bundle.users.to_internal(body.users)
    bad = [pos for pos, i in enumerate(idx.tolist()) if i < 0]
    if bad:
        raise ApiError(
            422,
            "unknown_user",
            f"user {body.users[bad[0]]!r} is not known to model {snap.version} ({len(bad)} unknown id(s) in total)",
            f"body.users[{bad[0]}]",
        )
    return idx


def build_router(settings: Settings) -> APIRouter:
    """The export route."""
    router = APIRouter(tags=["export"])

    @router.post(
        "/candidates/export",
        summary="Stream top-C candidates for many users (NDJSON), ending with an end-of-stream line",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "one ExportRow per line, then one ExportEnd line (`application/x-ndjson`)",
                "content": {
                    "application/x-ndjson": {
                        "schema": ExportRow.model_json_schema(),
                        "example": '{"user":"42","version":"20260101T000000Z-3f2a9c1d","items":["7","12"],'
                        '"scores":[3.1,2.9],"hamming":[4,6]}\n{"end":true,"rows":1,"version":"20260101T000000Z-3f2a9c1d",'
                        '"unknown_filter_items":0}\n',
                    }
                },
            },
            **error_doc(400, 401, 413, 422, 503),
        },
    )
    async def export_candidates(
        ctx: CtxDep,
        body: ExportRequest,
        authorization: str | None = Header(
            default=None, description="`Bearer <HASHREC_EXPORT_TOKEN>` when set"
        ),
    ) -> StreamingResponse:
        """Rows are computed ``export_batch`` users at a time in the export process and sent as they are ready,
        so the server holds one batch, never the whole export. Every row comes from the bundle version in the
        ``X-Model-Version`` header (a reload during the stream does not change it). Unknown user ids are
        refused up front (422 naming the first one); the item filters apply to every row.
        """
        _check_token(ctx, authorization)
        s = ctx.settings
        c = s.default_candidates if body.candidates is None else body.candidates
        if c > s.max_candidates:
            raise ApiError(
                422,
                "invalid_parameter",
                f"candidates: must be <= {s.max_candidates}, got {c}",
                "body.candidates",
            )
        snap = ctx.snapshot()
        users = _users(ctx, snap, body)
        filters = resolve_filters(snap, body.exclude_items, body.include_items)
        if ctx.exports >= s.max_exports:
            ctx.metrics.shed.labels("exports").inc()
            raise ApiError(
                503,
                "too_many_exports",
                f"{s.max_exports} export(s) already streaming; retry later",
                headers={"Retry-After": str(s.retry_after_s)},
            )
        ctx.exports += 1
        released = False

        def release() -> None:  # once, from whichever comes first: the stream's end or the response's
            nonlocal released
            if not released:
                released = True
                ctx.exports -= 1

        total = snap.n_users if users is None else len(users)

        ids = np.arange(snap.n_users) if users is None else users
        options = {
            "exclude_seen": body.exclude_seen,
            "exclude_items": filters.exclude,
            "include_items": filters.include,
        }

        async def stream() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            rows = 0
            try:
                for start in range(0, len(ids), s.export_batch):
                    batch = ids[start : start + s.export_batch]
                    try:
                        chunk = await loop.run_in_executor(
                            ctx.export_process.pool(), encode_batch, str(snap.path), batch, c, options
                        )
                    except BrokenProcessPool as err:  # the stream ends without its end line: a visible cut
                        ctx.export_process.broken(err)
                        return
                    ctx.metrics.exported_rows.inc(len(batch))
                    rows += len(batch)
                    yield chunk
                end = ExportEnd(rows=rows, version=snap.version, unknown_filter_items=filters.unknown)
                yield end.model_dump_json().encode() + b"\n"
            finally:
                release()

        return StreamingResponse(
            stream(),
            media_type="application/x-ndjson",
            headers={"X-Model-Version": snap.version, "X-Total-Users": str(total)},
            background=BackgroundTask(release),  # also runs when the stream never started (client gone)
        )

    return router
