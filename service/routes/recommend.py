"""``GET /recommend/{user_id}`` and ``POST /recommend`` (batch, with new users)."""

# No `from __future__ import annotations` here: the routes are closures over `settings`, and FastAPI
# must evaluate their annotations (Query limits) where they are defined.
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from ..context import Ctx
from ..errors import ApiError, error_doc
from ..recommender import Recommender
from ..schemas import ID_PATTERN, BatchRequest, BatchResponse, Recommendation
from ..settings import Settings


def build_router(settings: Settings) -> APIRouter:
    """The recommend routes, with the configured limits in their validation and OpenAPI schema."""
    router = APIRouter(tags=["recommend"])

    @router.get(
        "/recommend/{user_id}",
        response_model=Recommendation,
        summary="Top-k items for one user",
        responses=error_doc(404, 422),
    )
    async def recommend_one(
        ctx: Ctx,
        user_id: Annotated[
            str,
            Path(
                min_length=1, max_length=256, pattern=ID_PATTERN, description="raw user id", examples=["42"]
            ),
        ],
        k: Annotated[int | None, Query(ge=1, le=settings.max_k, description="items to return")] = None,
        candidates: Annotated[
            int | None,
            Query(
                ge=1, le=settings.max_candidates, description="Hamming recall size C (raised to k if smaller)"
            ),
        ] = None,
        exclude_seen: Annotated[
            bool, Query(description="drop items the user already interacted with")
        ] = True,
    ) -> Response:
        """Hamming top-C recall, continuous re-rank, top-k; from the cache when this exact question was
        answered for this bundle version before. Unknown users get the popularity list (``source:
        popular``) or 404, as configured.
        """
        rec = Recommender(ctx)
        p = rec.params(k, candidates, exclude_seen, "query")
        snap = ctx.snapshot()
        (body,) = await rec.for_users(snap, [user_id], p, "path")
        return Response(body, media_type="application/json")

    @router.post(
        "/recommend",
        response_model=BatchResponse,
        summary="Top-k items for several users, including users the model has never seen",
        responses=error_doc(400, 404, 413, 422),
    )
    async def recommend_batch(ctx: Ctx, body: BatchRequest) -> Response:
        """Known users by id (cache-aside, one model call for all misses); new users by the items they
        interacted with (folded in when the bundle carries fold-in arrays, else the popularity list with the
        reason). Results keep the request order: ``users`` first, then ``new_users``.
        """
        s = ctx.settings
        n = len(body.users) + len(body.new_users)
        if n == 0:
            raise ApiError(422, "invalid_parameter", "give at least one of users or new_users", "body.users")
        if n > s.max_batch_users:
            raise ApiError(
                422,
                "invalid_parameter",
                f"at most {s.max_batch_users} users per request, got {n}",
                "body.users",
            )
        for pos, nu in enumerate(body.new_users):
            if len(nu.items) > s.max_items_per_user:
                raise ApiError(
                    422,
                    "invalid_parameter",
                    f"at most {s.max_items_per_user} items per new user, got {len(nu.items)}",
                    f"body.new_users[{pos}].items",
                )
        rec = Recommender(ctx)
        p = rec.params(body.k, body.candidates, body.exclude_seen, "body")
        snap = ctx.snapshot()
        parts = await rec.for_users(snap, body.users, p, "body") if body.users else []
        parts += await rec.for_new_users(snap, body.new_users, p) if body.new_users else []
        head = b'{"version":' + _json_str(snap.version) + b',"results":['
        return Response(head + b",".join(parts) + b"]}", media_type="application/json")

    return router


def _json_str(s: str) -> bytes:
    import json

    return json.dumps(s).encode()
