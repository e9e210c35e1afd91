"""``POST /candidates/export``: top-C candidates for a list of users (or all), streamed as NDJSON."""

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ..context import CtxDep
from ..errors import ApiError, error_doc
from ..export_stream import iter_candidate_rows, rows_to_ndjson, unknown_users
from ..schemas import ExportRequest, ExportRow
from ..settings import Settings


def build_router(settings: Settings) -> APIRouter:
    """The export route."""
    router = APIRouter(tags=["export"])

    @router.post(
        "/candidates/export",
        summary="Stream top-C candidates for many users (NDJSON)",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "one ExportRow per line (`application/x-ndjson`)",
                "content": {
                    "application/x-ndjson": {
                        "schema": ExportRow.model_json_schema(),
                        "example": '{"user":"42","version":"20260101T000000Z-3f2a9c1d","items":["7","12"],'
                        '"scores":[3.1,2.9],"hamming":[4,6]}\n',
                    }
                },
            },
            **error_doc(400, 413, 422),
        },
    )
    async def export_candidates(ctx: CtxDep, body: ExportRequest) -> StreamingResponse:
        """Rows are computed ``export_batch`` users at a time in the compute pool and sent as they are ready,
        so the server holds one batch, never the whole export. All rows come from the bundle version in the
        ``X-Model-Version`` header (a reload during the stream does not change it). Unknown user ids are
        refused up front (422 naming the first one).
        """
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
        if body.users is not None:
            if len(body.users) > s.max_export_users:
                raise ApiError(
                    422,
                    "invalid_parameter",
                    f"at most {s.max_export_users} users per export, got {len(body.users)}",
                    "body.users",
                )
            bad = unknown_users(snap.retriever, body.users)
            if bad:
                first = bad[0]
                raise ApiError(
                    422,
                    "unknown_user",
                    f"user {body.users[first]!r} is not known to model {snap.version} "
                    f"({len(bad)} unknown id(s) in total)",
                    f"body.users[{first}]",
                )
        total = len(body.users) if body.users is not None else snap.n_users
        rows = iter_candidate_rows(
            snap.bundle, snap.retriever, body.users, c, exclude_seen=body.exclude_seen, batch=s.export_batch
        )
        loop = asyncio.get_running_loop()

        async def stream() -> AsyncIterator[bytes]:
            sentinel: list[dict[str, object]] = []
            while True:
                batch = await loop.run_in_executor(ctx.export_executor, next, rows, sentinel)
                if batch is sentinel:
                    return
                ctx.metrics.exported_rows.inc(len(batch))
                yield rows_to_ndjson(batch)

        return StreamingResponse(
            stream(),
            media_type="application/x-ndjson",
            headers={"X-Model-Version": snap.version, "X-Total-Users": str(total)},
        )

    return router
