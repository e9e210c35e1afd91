"""Candidate-export batches computed in a child process at the lowest CPU priority.

Why a process: an export computes and encodes every user's candidates; in a thread of the serving worker it
shares the GIL with the event loop, and online requests wait for it (benchmarks/serving_limits.py, export
scenario: online p99 from about 5 ms idle to 120-150 ms during two full exports, with the export thread
niced or not). In a child process at nice 19 and, on Linux, in the SCHED_IDLE class it shares only the
cores, and the kernel gives them to the request threads first (SCHED_IDLE: the child runs only on a core
nothing else wants, and a waking request thread takes it back at once).

The child is started (``spawn``: safe beside the worker's threads) at the first export and kept for the
next ones; it loads each bundle version once, memory-mapped (the pages are the page cache's, shared with
the worker), without re-hashing it: the serving worker verified that version before serving it. A child
that dies (killed for memory, say) fails the streams it was serving, which then end without their end line,
so clients see the cut, and a new child is started at the next export.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# in the child: one Retriever per bundle version directory it was asked about (a few at most: versions
# change at roll-outs)
_retrievers: dict[str, Any] = {}
_MAX_VERSIONS = 2


def _init_child() -> None:
    """Lowest CPU priority, one thread for FAISS and BLAS (the child must only use idle CPU), and a watch on
    the worker: the child exits when its worker is gone, however the worker ended (killed included)."""
    os.nice(19)
    try:  # Linux: run only on a core nothing else wants, and yield it at once when a request thread wakes
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as err:  # another OS: nice 19 alone
        log.info("export process keeps nice 19 without SCHED_IDLE: %s", err)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # re-parented: the worker died
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="export-parent-watch", daemon=True).start()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import faiss

    faiss.omp_set_num_threads(1)


def _retriever(path: str) -> Any:
    r = _retrievers.get(path)
    if r is None:
        from hashrec.index.bundle import load_bundle
        from hashrec.index.retriever import Retriever

        if len(_retrievers) >= _MAX_VERSIONS:
            _retrievers.pop(next(iter(_retrievers)))
        r = _retrievers[path] = Retriever(load_bundle(path, mmap=True, verify_checksums=False), threads=1)
    return r


def encode_batch(path: str, users: np.ndarray, candidates: int, options: dict[str, Any]) -> bytes:
    """NDJSON rows of internal user ids ``users`` from the bundle version at ``path`` (runs in the child).

    ``options``: :func:`hashrec.index.candidates.candidates_for`'s keyword options.
    """
    from hashrec.index.candidates import candidates_for, to_ndjson

    return to_ndjson(candidates_for(_retriever(path), users, candidates, **options))


class ExportProcess:
    """The worker's export child: ``submit`` batches; restarted after it breaks."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor:
        """The live pool (started on first use, or again after a child died)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_init_child
            )
        return self._pool

    def broken(self, err: BrokenProcessPool) -> None:
        """Forget a pool whose child died; the next export starts a new one."""
        log.error("the export process died (%s); the next export starts a new one", err)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        """Stop the child (pending batches are cancelled)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
