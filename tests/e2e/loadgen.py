"""A small load generator for the end-to-end runs: raw asyncio HTTP/1.1, open or closed loop, in its own
process, and every answer checked (status, complete body, version, the exact expected items).

Why not wrk or httpx: wrk cannot check answers (a fault run must prove *no wrong answer*, not only no
error), and httpx costs ~0.5 ms of client CPU per request, which on a 2-core machine steals the server's
CPU. This client parses only what it checks.

Open loop (``rate`` set): request i is *scheduled* at ``start + i / rate`` and its latency is measured from
that scheduled time, so a server stall shows up as latency of every request that should have been sent
during it (no coordinated omission). Closed loop (``rate=None``): ``connections`` clients send back to back,
which measures capacity.

    spec = LoadSpec(port=8000, targets=[Target("GET", "/recommend/u1?k=20", user="u1")], duration_s=10,
                    rate=200)
    handle = start_load(spec)        # a separate process
    ...                              # inject a fault
    result = handle.result()         # LoadResult: one record per request
    print(window_stats(result, result.t0, result.t0 + 10))
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing as mp
import queue
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Target:
    """One request to send. ``kind`` says how to check the answer:

    - ``recommend``: 200, a JSON Recommendation; with ``expected`` answers, its items must be exactly the
      expected items of the version it names (a mixed-version or wrong answer fails);
    - ``batch``: 200, a JSON BatchResponse whose results all carry the response's version;
    - ``status``: 200 only.
    """

    method: str
    path: str
    body: bytes = b""
    kind: str = "recommend"
    user: str = ""


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how fast and for how long (see the module docstring for open vs closed loop)."""

    port: int
    targets: list[Target]
    duration_s: float
    rate: float | None = None
    connections: int = 16
    timeout_s: float = 10.0
    host: str = "127.0.0.1"
    # version -> user -> item ids: the only correct answers (None: do not check items)
    expected: dict[str, dict[str, list[str]]] | None = None
    # wall-clock (time.time()) start; None = as soon as the process is up
    start_at: float | None = None
    # closed loop only: stop after this many requests (or at duration_s, whichever comes first)
    count: int | None = None


@dataclass
class LoadResult:
    """One entry per request, in completion order. ``t``: scheduled send time (epoch s), ``sent``: when its
    bytes were actually written (later than ``t`` when the client falls behind), ``latency``: s from ``t``,
    ``error``: "" when the answer passed every check, else what was wrong."""

    t0: float = 0.0
    t: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    error: list[str] = field(default_factory=list)
    version: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)

    def add(
        self, t: float, lat: float, status: int, error: str, version: str, source: str, sent: float = 0.0
    ) -> None:
        """Record one request."""
        self.t.append(t)
        self.sent.append(sent or t)
        self.latency.append(lat)
        self.status.append(status)
        self.error.append(error)
        self.version.append(version)
        self.source.append(source)

    def __len__(self) -> int:
        return len(self.t)


class HttpError(Exception):
    """A transport-level failure (reset, refused, truncated body, timeout)."""


NOT_ANSWERED = "closed before any answer byte"
"""The error text of a request whose connection closed before a single byte of answer came back: the
server never answered it (for example an idle keep-alive connection closed by a shutting-down server
while the request was on its way), as opposed to a truncated answer, which is data lost."""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # end of trailers (we send none and expect none)
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def http_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> tuple[int, dict[str, str], bytes, bool]:
    """Send one serialised request and read the whole answer: (status, headers, body, keep_alive).

    Raises HttpError when the connection breaks before the answer is complete (a truncated answer is an
    error, never a short body).
    """
    try:
        writer.write(raw)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as err:
            if not err.partial:
                raise HttpError(NOT_ANSWERED) from err
            raise
        except ConnectionResetError as err:
            raise HttpError(NOT_ANSWERED + " (reset)") from err
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            body = await reader.read()
            return status, headers, body, False
    except asyncio.IncompleteReadError as err:
        raise HttpError(f"truncated answer ({len(err.partial)} bytes, connection closed)") from err
    except (ConnectionError, OSError) as err:
        raise HttpError(f"{type(err).__name__}: {err}") from err
    except asyncio.LimitOverrunError as err:
        raise HttpError("answer headers too long") from err
    except (ValueError, IndexError) as err:
        raise HttpError(f"malformed answer head: {err}") from err
    keep = headers.get("connection", "").lower() != "close"
    return status, headers, body, keep


def serialise(host: str, port: int, target: Target) -> bytes:
    """The HTTP/1.1 bytes of ``target`` (keep-alive; JSON content type when there is a body)."""
    head = f"{target.method} {target.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if target.body or target.method in ("POST", "PUT", "PATCH"):
        head += f"Content-Type: application/json\r\nContent-Length: {len(target.body)}\r\n"
    return head.encode() + b"\r\n" + target.body


def check_answer(
    target: Target, status: int, body: bytes, expected: dict[str, dict[str, list[str]]] | None
) -> tuple[str, str, str]:
    """(error, version, source) of one answer; error is "" when the answer is right. See :class:`Target`."""
    if status != 200:
        return f"http {status}", "", ""
    if target.kind == "status":
        return "", "", ""
    try:
        doc = json.loads(body)
    except ValueError:
        return "malformed JSON answer", "", ""
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), str):
        return "answer without a version", "", ""
    version: str = doc["version"]
    if target.kind == "batch":
        results = doc.get("results")
        if not isinstance(results, list) or any(r.get("version") != version for r in results):
            return "mixed versions inside one batch answer", version, ""
        return "", version, "batch"
    source = str(doc.get("source", ""))
    if "items" not in doc:
        return "answer without items", version, source
    if expected is not None:
        per_version = expected.get(version)
        if per_version is None:
            return f"unknown version {version}", version, source
        want = per_version.get(target.user)
        got = [it["item"] for it in doc["items"]]
        if want is not None and got != want:
            return f"wrong items for {target.user} under version {version}", version, source
    return "", version, source


class _Connection:
    """A worker's keep-alive connection: opened on first use, closed after an error or ``Connection:
    close`` (the next exchange opens a new one)."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self._rw: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, raw: bytes) -> tuple[int, bytes]:
        """(status, body) of one request; raises what :func:`http_exchange` raises, or TimeoutError."""
        timeout = self.spec.timeout_s
        try:
            # asyncio.timeout, not wait_for: wait_for runs the exchange in a task of its own, a cost per
            # request that halved the rate one client core could offer
            async with asyncio.timeout(timeout):
                if self._rw is None:
                    self._rw = await asyncio.open_connection(self.spec.host, self.spec.port)
            async with asyncio.timeout(timeout):
                status, _h, body, keep = await http_exchange(*self._rw, raw)
        except BaseException:
            self.close()
            raise
        if not keep:
            self.close()
        return status, body

    def close(self) -> None:
        """Close the connection if one is open."""
        if self._rw is not None:
            self._rw[1].close()
            self._rw = None


async def run_load(spec: LoadSpec, stop: Any = None) -> LoadResult:
    """Send the load described by ``spec`` and return one record per request (in this event loop).

    ``stop``: an event (``is_set()``); once set, no further request is sent (those in flight finish)."""
    t0 = spec.start_at if spec.start_at is not None else time.time()
    delay = t0 - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    result = LoadResult(t0=t0)
    counter = itertools.count()
    n_total = int(spec.rate * spec.duration_s) if spec.rate else None
    end = t0 + spec.duration_s
    raws = [serialise(spec.host, spec.port, tg) for tg in spec.targets]

    async def next_slot() -> tuple[int, float] | None:
        """(request number, scheduled time) of the next request, once it is due; None when done."""
        i = next(counter)
        if stop is not None and stop.is_set():
            return None
        if n_total is None:  # closed loop: now, until the end (or the count)
            now = time.time()
            return None if now >= end or (spec.count is not None and i >= spec.count) else (i, now)
        if i >= n_total:
            return None
        sched = t0 + i / float(spec.rate or 1)
        if sched > time.time():
            await asyncio.sleep(sched - time.time())
        return i, sched

    async def worker() -> None:
        conn = _Connection(spec)
        while (slot := await next_slot()) is not None:
            i, sched = slot
            j = i % len(raws)
            status, err, version, source = 0, "", "", ""
            sent = time.time()
            try:
                status, body = await conn.exchange(raws[j])
                err, version, source = check_answer(spec.targets[j], status, body, spec.expected)
            except (TimeoutError, HttpError, OSError) as exc:
                err = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            result.add(sched, time.time() - sched, status, err, version, source, sent)
        conn.close()

    await asyncio.gather(*(worker() for _ in range(max(1, spec.connections))))
    return result


def _child(spec: LoadSpec, queue: Any, stop: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        res = asyncio.run(run_load(spec, stop))
        queue.put(("ok", res))
    except BaseException as err:  # report, never hang the parent
        queue.put(("error", f"{type(err).__name__}: {err}"))


class LoadHandle:
    """A load run in a separate process (spawned, so no state leaks from the parent)."""

    def __init__(self, spec: LoadSpec) -> None:
        ctx = mp.get_context("spawn")
        self._queue = ctx.Queue()
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_child, args=(spec, self._queue, self._stop), daemon=True)
        self._proc.start()
        self.spec = spec
        self.pid: int | None = self._proc.pid

    def stop(self) -> None:
        """End the run before its ``duration_s``: no request is sent after this (``result`` still works)."""
        self._stop.set()

    def result(self, timeout: float | None = None) -> LoadResult:
        """Wait for the run to finish; raises RuntimeError when the load process failed or died."""
        wait = timeout if timeout is not None else self.spec.duration_s + self.spec.timeout_s + 60
        deadline = time.monotonic() + wait
        while True:  # drain the queue before join (a large result blocks the child until read)
            try:
                kind, payload = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._proc.is_alive() and self._queue.empty():
                    raise RuntimeError(f"load generator died (exit code {self._proc.exitcode})") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"load generator gave no result in {wait:.0f} s") from None
        self._proc.join(timeout=10)
        if kind != "ok":
            raise RuntimeError(f"load generator failed: {payload}")
        assert isinstance(payload, LoadResult)
        return payload


def start_load(spec: LoadSpec) -> LoadHandle:
    """Start ``spec`` in its own process; call ``.result()`` to collect it."""
    return LoadHandle(spec)


def window_stats(res: LoadResult, t_from: float, t_to: float) -> dict[str, Any]:
    """Requests *scheduled* in ``[t_from, t_to)``: count, failures, the commonest errors, p50/p95/p99 (ms)
    and the achieved rate. Percentiles are None when the window is empty."""
    import numpy as np

    t = np.asarray(res.t)
    sel = (t >= t_from) & (t < t_to)
    lat = np.asarray(res.latency)[sel] * 1000.0
    errs = [e for e, s in zip(res.error, sel, strict=True) if s and e]
    n = int(sel.sum())
    span = max(1e-9, t_to - t_from)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 2) if n else None

    return {
        "requests": n,
        "failures": len(errs),
        "errors": dict(Counter(errs).most_common(3)),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "rps": round(n / span, 1),
    }


def sources(res: LoadResult, t_from: float, t_to: float) -> dict[str, int]:
    """How many answers in the window came from each source (``model``, ``cache``, ``popular``)."""
    return dict(Counter(s for s, t in zip(res.source, res.t, strict=True) if t_from <= t < t_to and s))


def recommend_targets(
    users: list[str], k: int = 20, candidates: int | None = None, seed: int = 0
) -> list[Target]:
    """One ``GET /recommend/<user>`` target per user, in a shuffled (seeded) order."""
    import random

    order = list(users)
    random.Random(seed).shuffle(order)
    q = f"?k={k}" + (f"&candidates={candidates}" if candidates else "")
    return [Target("GET", f"/recommend/{u}{q}", user=u) for u in order]
