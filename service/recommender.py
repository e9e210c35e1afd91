"""Answering recommendation requests: cache-aside around the Retriever, filters, fallbacks, JSON bodies.

One snapshot per request (see ``state.py``): the cache key, the model call and the ``version`` field all
come from it. Model calls go through the micro-batcher (``batcher.py``). Answers are serialised once, as
bytes: the items part of a model answer is what the cache stores, so a cache hit costs a dictionary look-up
and a byte concatenation, no JSON encoding.

Filters (``exclude_items`` / ``include_items``, raw item ids applied to every user of a request) are
resolved against the snapshot's items once per request; unknown ids are ignored and counted in ``reason``.
Filtered answers are cached under keys that carry a digest of the resolved filters, so an answer is never
served for another filter.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batcher import NO_FILTERS, DeadlineExceeded, Filters
from .cache import answer_key, filters_digest
from .context import ServiceContext
from .errors import ApiError
from .state import Snapshot

log = logging.getLogger(__name__)

# Answers are built as bytes by hand, not by FastAPI's response model: kept for a measured gain, uncached
# req/s x1.20 and CPU per request x1.18 (docs/service.md, bypass table); tests compare the bytes with the
# response model. Ids made only of characters JSON never escapes are written between quotes as they are.
_PLAIN_ID = re.compile(r'[^"\\\x00-\x1f\x7f-\uffff]*')


def _json_str(s: str) -> str:
    return f'"{s}"' if _PLAIN_ID.fullmatch(s) else json.dumps(s)


def items_json(rec: Any, *, with_hamming: bool = True) -> bytes:
    """The ``items`` array of an answer: ``[{"item", "score", "hamming"}, ...]`` as JSON bytes.

    ``score`` is the float's shortest round-trip repr (what json.dumps writes); ``hamming`` is null when
    ``with_hamming`` is False (popularity answers).
    """
    items = [str(i) for i in rec.items]
    quoted = ['"' + i + '"' for i in items] if _PLAIN_ID.fullmatch("".join(items)) else map(json.dumps, items)
    scores = map(repr, map(float, rec.scores))
    hams = map(str, rec.hamming) if with_hamming else itertools.repeat("null")
    body = ",".join(
        f'{{"item":{i},"score":{s},"hamming":{h}}}' for i, s, h in zip(quoted, scores, hams, strict=False)
    )
    return ("[" + body + "]").encode()


def answer_json(
    user: str, version: str, source: str, reason: str | None, k: int, candidates: int, items: bytes
) -> bytes:
    """A full Recommendation body around an ``items`` array (same bytes whether fresh or cached)."""
    r = "null" if reason is None else json.dumps(reason)
    head = (
        f'{{"user":{_json_str(user)},"version":{_json_str(version)},"source":"{source}","reason":{r},'
        f'"k":{k},"candidates":{candidates},"items":'
    )
    return head.encode() + items + b"}"


@dataclass(frozen=True)
class Params:
    """The parameters that change an answer (all part of the cache key)."""

    k: int
    candidates: int
    exclude_seen: bool
    filters: Filters = NO_FILTERS
    deadline: float = float("inf")  # time.monotonic() after which the model call is not made

    @property
    def note(self) -> str | None:
        """The ``reason`` a filtered answer carries when some filter ids were unknown."""
        n = self.filters.unknown
        return f"{n} unknown item id(s) in the filters ignored" if n else None


def resolve_filters(snap: Snapshot, exclude: Sequence[str] | None, include: Sequence[str] | None) -> Filters:
    """The request's raw-id filters as sorted internal ids of ``snap`` (unknown ids counted, ignored)."""
    if not exclude and include is None:
        return NO_FILTERS
    r = snap.retriever
    ex, unknown_ex = r.item_index(exclude or [])
    inc, unknown_inc = r.item_index(include) if include is not None else (None, 0)
    return Filters(
        exclude=ex,
        include=inc,
        unknown=unknown_ex + unknown_inc,
        digest=filters_digest(ex.tolist(), None if inc is None else inc.tolist()),
    )


def _join(*reasons: str | None) -> str | None:
    parts = [r for r in reasons if r]
    return "; ".join(parts) if parts else None


class Recommender:
    """Per-request façade over the context: resolves parameters, cache-aside, fallbacks."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def params(
        self, k: int | None, candidates: int | None, exclude_seen: bool, where: str, **kw: Any
    ) -> Params:
        """Apply defaults and limits; C is raised to k (recall can never return fewer than k items)."""
        s = self.ctx.settings
        k = s.default_k if k is None else k
        c = s.default_candidates if candidates is None else candidates
        if k > s.max_k:
            raise ApiError(422, "invalid_parameter", f"k: must be <= {s.max_k}, got {k}", f"{where}.k")
        if c > s.max_candidates:
            raise ApiError(
                422,
                "invalid_parameter",
                f"candidates: must be <= {s.max_candidates}, got {c}",
                f"{where}.candidates",
            )
        return Params(k, max(c, k), exclude_seen, **kw)

    async def popular_items(self, snap: Snapshot, p: Params, exclude: np.ndarray | None = None) -> bytes:
        """The top-k popular items of this snapshot within the request's filters (memoised per snapshot and
        filter when nothing user-specific is excluded: never stale after a reload)."""
        key = ("popular", p.k, p.filters.digest)
        cached = snap.memo.get(key) if exclude is None else None
        if cached is None:
            ex = p.filters.exclude if exclude is None else np.union1d(p.filters.exclude, exclude)
            rec = snap.retriever.popular(p.k, exclude=ex, allow=p.filters.include)
            cached = items_json(rec, with_hamming=False)
            if exclude is None:
                snap.memo[key] = cached
        return cached

    async def fallback(self, snap: Snapshot, user: str, p: Params, reason: str) -> bytes:
        """A popularity answer marked with its reason (counted in ``hashrec_fallbacks``)."""
        self.ctx.metrics.fallbacks.labels(reason.split(":")[0]).inc()
        items = await self.popular_items(snap, p)
        return answer_json(user, snap.version, "popular", _join(reason, p.note), p.k, p.candidates, items)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a model call in the compute pool (not on the event loop); records its wall time."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            return await loop.run_in_executor(self.ctx.executor, lambda: fn(*args, **kwargs))
        finally:
            self.ctx.metrics.stage.labels("model").observe(time.perf_counter() - t0)

    def _key(self, snap: Snapshot, user: str, p: Params) -> str:
        return answer_key(snap.version, user, p.k, p.candidates, p.exclude_seen, p.filters.digest)

    async def for_users(self, snap: Snapshot, users: Sequence[str], p: Params, where: str) -> list[bytes]:
        """Answers for known-or-unknown user ids, in order: cache hits, one batched model call for the misses.

        Unknown ids get the popularity fallback, or 404 naming the field when configured so. Raises ApiError
        503 when the model call's deadline passed before it ran.
        """
        r = snap.retriever
        out: list[bytes | None] = [None] * len(users)
        known: list[int] = []
        for pos, user in enumerate(users):
            if r.has_user(user):
                known.append(pos)
            elif self.ctx.settings.unknown_user == "404":
                field = f"{where}.user_id" if where == "path" else f"{where}.users[{pos}]"
                raise ApiError(
                    404, "unknown_user", f"user {user!r} is not known to model {snap.version}", field
                )
            else:
                out[pos] = await self.fallback(snap, user, p, "unknown user")
        if known:
            hits = await self.ctx.cache.get_many([self._key(snap, users[pos], p) for pos in known])
            for pos, hit in zip(known, hits, strict=True):
                if hit is not None:
                    out[pos] = answer_json(users[pos], snap.version, "cache", p.note, p.k, p.candidates, hit)
            misses = [pos for pos, hit in zip(known, hits, strict=True) if hit is None]
            if misses:
                await self._compute(snap, users, misses, p, out)
        return [b for b in out if b is not None]

    async def _compute(
        self, snap: Snapshot, users: Sequence[str], misses: list[int], p: Params, out: list[bytes | None]
    ) -> None:
        """The model's answers for ``users[misses]`` into ``out``, stored in the cache."""
        futs = self.ctx.batcher.submit(
            snap, [users[pos] for pos in misses], p.k, p.candidates, p.exclude_seen, p.filters, p.deadline
        )
        try:
            recs = [await f for f in futs]
        except DeadlineExceeded as err:
            self.ctx.metrics.shed.labels("deadline").inc()
            raise ApiError(
                503,
                "overloaded",
                f"the request's deadline passed before it was computed ({err})",
                headers=_retry(self.ctx),
            ) from err
        fresh: list[tuple[str, bytes]] = []
        q = self.ctx.quality
        for pos, rec in zip(misses, recs, strict=True):
            if rec is None:  # has_user said yes: only possible with a bug in the retriever
                out[pos] = await self.fallback(snap, users[pos], p, "unknown user")
                continue
            body = items_json(rec)
            if not p.filters.digest and q.sampled():  # exact top-k in the background (quality_monitor.py)
                q.submit(snap.retriever, users[pos], rec.items, p.k, p.exclude_seen)
            fresh.append((self._key(snap, users[pos], p), body))
            out[pos] = answer_json(users[pos], snap.version, "model", p.note, p.k, p.candidates, body)
        await self.ctx.cache.set_many(fresh)

    async def for_new_users(self, snap: Snapshot, new_users: Sequence[Any], p: Params) -> list[bytes]:
        """Answers for users given as item lists: fold-in when the bundle allows it, else popularity.

        Unknown item ids are ignored (items added after training are normal) and the ``reason`` says how
        many; when none of a user's items is known, or the bundle has no fold-in arrays, the answer is the
        popularity list with the reason. The given items are never recommended back (``exclude_seen``).
        Fold-in answers are not cached: their key would be the item list.
        """
        from hashrec.index.retriever import FoldInUnavailable

        r = snap.retriever
        out: list[bytes | None] = [None] * len(new_users)
        try:
            folded = await self._run(r.encode_new, [nu.items for nu in new_users])
        except FoldInUnavailable as err:
            return [await self.fallback(snap, nu.key, p, f"fold-in unavailable: {err}") for nu in new_users]
        rows = [pos for pos, used in enumerate(folded.items) if len(used)]
        for pos, used in enumerate(folded.items):
            if not len(used):
                out[pos] = await self.fallback(
                    snap, new_users[pos].key, p, "none of the given items is known to the model"
                )
        if rows:
            f = p.filters
            recs = await self._run(
                r.recommend_new,
                folded.subset(rows),
                p.k,
                p.candidates,
                exclude_given=p.exclude_seen,
                exclude_items=f.exclude,
                include_items=f.include,
            )
            for pos, rec in zip(rows, recs, strict=True):
                dropped = folded.unknown[pos]
                reason = _join(f"{dropped} unknown item id(s) ignored" if dropped else None, p.note)
                out[pos] = answer_json(
                    new_users[pos].key, snap.version, "model", reason, p.k, p.candidates, items_json(rec)
                )
        return [b for b in out if b is not None]


def _retry(ctx: ServiceContext) -> dict[str, str]:
    return {"Retry-After": str(ctx.settings.retry_after_s)}


def deadline_for(ctx: ServiceContext, arrival: float | None = None) -> float:
    """The monotonic time after which this request's model call is not made."""
    return (arrival if arrival is not None else time.monotonic()) + ctx.settings.request_timeout_s
