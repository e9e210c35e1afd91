"""``GET /recommend/{user_id}`` and ``POST /recommend`` (batch, with new users)."""

# No `from __future__ import annotations` here: the routes are closures over `settings`, and FastAPI
# must evaluate their annotations (Query limits) where they are defined.
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Match, Route

from ..context import CtxDep, ServiceContext
from ..errors import ApiError, error_doc
from ..recommender import Recommender, deadline_for, resolve_filters
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
        openapi_extra={"parameters": _get_parameters(settings)},
    )
    async def recommend_one(request: Request) -> Response:
        """Hamming top-C recall, continuous re-rank, top-k; from the cache when this exact question was
        answered for this bundle version before. Unknown users get the popularity list (``source:
        popular``) or 404, as configured.
        """
        return await _recommend_one(settings, request)

    @router.post(
        "/recommend",
        response_model=BatchResponse,
        summary="Top-k items for several users, including users the model has never seen",
        responses=error_doc(400, 404, 413, 422),
    )
    async def recommend_batch(ctx: CtxDep, body: BatchRequest, request: Request) -> Response:
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
        snap = ctx.snapshot()
        filters = resolve_filters(snap, body.exclude_items, body.include_items)
        deadline = deadline_for(ctx, request.scope.get("hashrec.arrival"))
        p = rec.params(body.k, body.candidates, body.exclude_seen, "body", filters=filters, deadline=deadline)
        parts = await rec.for_users(snap, body.users, p, "body") if body.users else []
        parts += await rec.for_new_users(snap, body.new_users, p) if body.new_users else []
        head = b'{"version":' + _json_str(snap.version) + b',"results":['
        return Response(head + b",".join(parts) + b"]}", media_type="application/json")

    return router


async def _recommend_one(settings: Settings, request: Request) -> Response:
    # Parameters are parsed here rather than declared to FastAPI: this is the hottest route, and FastAPI's
    # per-parameter resolution cost about as much CPU as a cache hit. Same rules, same error shape; the
    # OpenAPI schema documents them through `openapi_extra` (see _get_parameters).
    ctx: ServiceContext = request.app.state.ctx
    user_id = _user_id(request.path_params["user_id"])
    qp = request.query_params
    k = _int_query(qp, "k", settings.max_k)
    candidates = _int_query(qp, "candidates", settings.max_candidates)
    exclude_seen = _bool_query(qp, "exclude_seen", default=True)
    rec = Recommender(ctx)
    p = rec.params(
        k, candidates, exclude_seen, "query", deadline=deadline_for(ctx, request.scope.get("hashrec.arrival"))
    )
    snap = ctx.snapshot()
    (body,) = await rec.for_users(snap, [user_id], p, "path")
    return Response(body, media_type="application/json")


class _PlainRoute(Route):
    """A Starlette route that, like FastAPI's, records itself as ``scope["route"]`` (the metrics label)."""

    def matches(self, scope: Any) -> tuple[Match, Any]:
        """Starlette's match, plus ``route`` in the child scope."""
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


def fast_get_route(settings: Settings) -> Route:
    """``GET /recommend/{user_id}`` as a plain Starlette route, registered ahead of the documented APIRoute.

    Kept for a measured gain: uncached req/s x1.28, p99 x1.9, CPU per request x1.3 against the APIRoute
    (docs/service.md, bypass table): FastAPI's dependency solving and wrappers cost that much on the
    hottest route. The endpoint is the same function; errors still reach the app's handlers (the one
    error shape); the APIRoute stays in the router for the OpenAPI schema and is shadowed for GET.
    """

    async def endpoint(request: Request) -> Response:
        return await _recommend_one(settings, request)

    route = _PlainRoute("/recommend/{user_id}", endpoint, methods=["GET"], include_in_schema=False)
    route.methods = {"GET"}  # Starlette adds HEAD; the documented route answers GET only
    return route


_ID_RE = re.compile(ID_PATTERN)
_INT_RE = re.compile(r"^[+-]?\d{1,9}$")
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_parameter", f"{field}: {message}", field)


def _user_id(raw: str) -> str:
    if not 1 <= len(raw) <= 256:
        raise _invalid("path.user_id", f"must be 1 to 256 characters, got {len(raw)}")
    if not _ID_RE.fullmatch(raw):  # fullmatch: re's $ would let "abc\n" through
        raise _invalid("path.user_id", "must not contain control characters")
    return raw


def _int_query(qp: Any, name: str, hi: int) -> int | None:
    raw = qp.get(name)
    if raw is None:
        return None
    if not _INT_RE.match(raw):
        raise _invalid(f"query.{name}", f"must be an integer, got {raw[:40]!r}")
    value = int(raw)
    if not 1 <= value <= hi:
        raise _invalid(f"query.{name}", f"must be between 1 and {hi}, got {value}")
    return value


def _bool_query(qp: Any, name: str, default: bool) -> bool:
    raw = qp.get(name)
    if raw is None:
        return default
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise _invalid(f"query.{name}", f"must be true or false, got {raw[:40]!r}")


def _get_parameters(settings: Settings) -> list[dict[str, Any]]:
    """OpenAPI parameters of GET /recommend/{user_id} (parsed by hand, so documented by hand)."""
    return [
        {
            "name": "user_id",
            "in": "path",
            "required": True,
            "description": "raw user id (1-256 characters, no control characters)",
            "schema": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": ID_PATTERN},
            "example": "42",
        },
        {
            "name": "k",
            "in": "query",
            "required": False,
            "description": f"items to return (default {settings.default_k})",
            "schema": {"type": "integer", "minimum": 1, "maximum": settings.max_k},
            "example": 20,
        },
        {
            "name": "candidates",
            "in": "query",
            "required": False,
            "description": f"Hamming recall size C, raised to k if smaller (default {settings.default_candidates})",
            "schema": {"type": "integer", "minimum": 1, "maximum": settings.max_candidates},
            "example": 500,
        },
        {
            "name": "exclude_seen",
            "in": "query",
            "required": False,
            "description": "drop items the user already interacted with",
            "schema": {"type": "boolean", "default": True},
            "example": True,
        },
    ]


def _json_str(s: str) -> bytes:
    import json

    return json.dumps(s).encode()
