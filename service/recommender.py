"""Answering recommendation requests: cache-aside around the Retriever, fallbacks, JSON bodies.

One snapshot per request (see ``state.py``): the cache key, the model call and the ``version`` field all
come from it. Model calls run in the app's thread pool (FAISS and numpy release the GIL), never on the
event loop. Answers are serialised once, as bytes: the items part of a model answer is what the cache
stores, so a cache hit costs a dictionary look-up and a byte concatenation, no JSON encoding.
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

from .cache import answer_key
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


class Recommender:
    """Per-request façade over the context: resolves parameters, cache-aside, fallbacks."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def params(self, k: int | None, candidates: int | None, exclude_seen: bool, where: str) -> Params:
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
        return Params(k, max(c, k), exclude_seen)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a model call in the compute pool; records its wall time (hand-off included)."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            return await loop.run_in_executor(self.ctx.executor, lambda: fn(*args, **kwargs))
        finally:
            self.ctx.metrics.stage.labels("model").observe(time.perf_counter() - t0)

    async def popular_items(self, snap: Snapshot, k: int) -> bytes:
        """The top-k popular items of this snapshot (memoised per snapshot: never stale after a reload)."""
        key = ("popular", k)
        cached = snap.memo.get(key)
        if cached is None:
            rec = await self._run(snap.retriever.popular, k)
            cached = items_json(rec, with_hamming=False)
            snap.memo[key] = cached
        return cached

    async def fallback(self, snap: Snapshot, user: str, p: Params, reason: str) -> bytes:
        """A popularity answer marked with its reason (counted in ``hashrec_fallbacks``)."""
        self.ctx.metrics.fallbacks.labels(reason).inc()
        return answer_json(
            user, snap.version, "popular", reason, p.k, p.candidates, await self.popular_items(snap, p.k)
        )

    async def for_users(self, snap: Snapshot, users: Sequence[str], p: Params, where: str) -> list[bytes]:
        """Answers for known-or-unknown user ids, in order: cache hits, one model call for the misses.

        Unknown ids get the popularity fallback, or 404 naming the field when configured so.
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
            keys = [answer_key(snap.version, users[pos], p.k, p.candidates, p.exclude_seen) for pos in known]
            hits = await self.ctx.cache.get_many(keys)
            misses = [pos for pos, hit in zip(known, hits, strict=True) if hit is None]
            for pos, hit in zip(known, hits, strict=True):
                if hit is not None:
                    out[pos] = answer_json(users[pos], snap.version, "cache", None, p.k, p.candidates, hit)
            if misses:
                # one future per user; the batcher merges concurrent requests into shared Retriever calls
                futs = self.ctx.batcher.submit(
                    snap, [users[pos] for pos in misses], p.k, p.candidates, p.exclude_seen
                )
                recs = [await f for f in futs]
                fresh: list[tuple[str, bytes]] = []
                for pos, rec in zip(misses, recs, strict=True):
                    if rec is None:  # has_user said yes: only possible with a bug in the retriever
                        out[pos] = await self.fallback(snap, users[pos], p, "unknown user")
                        continue
                    body = items_json(rec)
                    q = self.ctx.quality
                    if q is not None and q.sampled():  # exact top-k in the background (quality_monitor.py)
                        q.submit(snap.retriever, users[pos], rec.items, p.k, p.exclude_seen)
                    fresh.append(
                        (answer_key(snap.version, users[pos], p.k, p.candidates, p.exclude_seen), body)
                    )
                    out[pos] = answer_json(users[pos], snap.version, "model", None, p.k, p.candidates, body)
                await self.ctx.cache.set_many(fresh)
        return [b for b in out if b is not None]

    async def for_new_users(self, snap: Snapshot, new_users: Sequence[Any], p: Params) -> list[bytes]:
        """Answers for users given as item lists: fold-in when the bundle allows it, else popularity.

        Unknown item ids are ignored (items added after training are normal) and the ``reason`` says how
        many; when none of a user's items is known, or the bundle has no fold-in arrays, the answer is the
        popularity list with the reason. The given items are never recommended back (``exclude_seen``).
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
            recs = await self._run(
                r.recommend_new, folded.subset(rows), p.k, p.candidates, exclude_given=p.exclude_seen
            )
            for pos, rec in zip(rows, recs, strict=True):
                dropped = folded.unknown[pos]
                reason = f"{dropped} unknown item id(s) ignored" if dropped else None
                out[pos] = answer_json(
                    new_users[pos].key, snap.version, "model", reason, p.k, p.candidates, items_json(rec)
                )
        return [b for b in out if b is not None]
