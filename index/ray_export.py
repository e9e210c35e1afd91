"""The candidate export as a Ray Data pipeline: user-id ranges -> an actor pool -> Parquet files.

    hashrec export-candidates --bundles bundles/ --out candidates/ --engine ray --workers 2
    hashrec export-candidates --bundles /shared/bundles --out /shared/candidates --engine ray \\
        --address ray://head:10001 --workers 64            # an existing cluster (bundles on shared storage)

- ``ray.data.range(n_users)`` gives the internal user ids; ``map_batches`` runs them through an actor pool
  (:class:`CandidateActor`) whose actors load the bundle once, memory-mapped (actors on one host share the
  pages; no actor builds a dictionary of every raw id), and call :func:`hashrec.index.candidates.candidates_for`,
  the per-batch code of the other exports;
- FAISS/OpenMP and BLAS get one thread per actor (Ray only sets OMP_NUM_THREADS from an actor's CPUs, and
  BLAS may already be loaded): concurrency comes from actors;
- actors ask for half a CPU each: on a 2-CPU machine, a pool at one CPU per actor starved Ray Data's own
  read tasks and hung;
- the Parquet files go to a hidden temporary directory beside ``out``, which is renamed to ``out`` when
  complete; ``_SUCCESS`` is written last, so a reader that sees it sees every file. ``_actors.json`` says
  how many batches each actor ran and its peak memory.

Local runs start a real local Ray with ``workers`` CPUs and an explicit object store size; ``address``
joins a running cluster instead. Output file order is not user order: sort by ``user`` when order matters.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
ACTORS = "_actors.json"


class CandidateActor:
    """One actor of the pool: the bundle memory-mapped once, one thread for FAISS and BLAS."""

    def __init__(self, bundle_dir: str, candidates: int, exclude_seen: bool, stats_dir: str) -> None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        import faiss
        from threadpoolctl import threadpool_limits

        from .bundle import load_bundle
        from .retriever import Retriever

        faiss.omp_set_num_threads(1)
        threadpool_limits(1)
        # the driver verified the checksums once; actors only map the files
        self.retriever = Retriever(load_bundle(bundle_dir, mmap=True, verify_checksums=False), threads=1)
        self.candidates, self.exclude_seen = candidates, exclude_seen
        self.stats = Path(stats_dir) / f"actor-{os.getpid()}.json"
        self.batches = 0
        self._write_stats()  # an actor that gets no batch (the others were faster) is still recorded

    def _write_stats(self) -> None:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        self.stats.write_text(
            json.dumps({"pid": os.getpid(), "batches": self.batches, "peak_rss_mb": round(peak_mb, 1)})
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        """A batch of internal user ids (column ``id``) -> its candidate rows (a pyarrow Table)."""
        from .candidates import candidates_for, to_arrow

        table = to_arrow(
            candidates_for(self.retriever, batch["id"], self.candidates, exclude_seen=self.exclude_seen)
        )
        self.batches += 1
        self._write_stats()
        return table


def export_with_ray(
    bundle_dir: Path,
    out: Path,
    users: int | np.ndarray,
    candidates: int,
    *,
    exclude_seen: bool = True,
    workers: int = 2,
    batch: int = 2048,
    address: str | None = None,
    object_store_mb: int = 512,
) -> dict[str, Any]:
    """Write every user's candidates as Parquet files under ``out`` (a directory); returns a summary.

    ``bundle_dir`` is one version directory (already verified by the caller); ``users``: every user of the
    bundle (their count: the ids are generated lazily) or an array of internal ids. ``out`` must not exist
    yet (an export never replaces another): FileExistsError.
    """
    import ray

    if out.exists():
        raise FileExistsError(f"{out}: already exists; an export never replaces another (choose a new --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    stats = tmp / "_stats"
    stats.mkdir(parents=True)
    t0 = time.perf_counter()
    started = False
    try:
        if not ray.is_initialized():
            kw: dict[str, Any] = (
                {"address": address}
                if address
                else {"num_cpus": workers, "object_store_memory": object_store_mb << 20}
            )
            ray.init(include_dashboard=False, log_to_driver=False, **kw)
            started = True
        n_users = users if isinstance(users, int) else len(users)
        blocks = max(1, -(-n_users // batch))
        if isinstance(users, int):
            source = ray.data.range(users, override_num_blocks=blocks)
        else:
            source = ray.data.from_items([{"id": int(u)} for u in users], override_num_blocks=blocks)
        ds = source.map_batches(
            CandidateActor,
            fn_constructor_args=(str(bundle_dir), candidates, exclude_seen, str(stats)),
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=0.5,
        )
        ds.write_parquet(str(tmp))  # readers skip names starting with "_" or "." (pyarrow's default)
        actors = [json.loads(p.read_text()) for p in sorted(stats.glob("actor-*.json"))]
        shutil.rmtree(stats)
        (tmp / ACTORS).write_text(json.dumps(actors, indent=2) + "\n")
        os.rename(tmp, out)
        (out / SUCCESS).write_text("")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    n_users = users if isinstance(users, int) else len(users)
    summary = {
        "users": n_users,
        "seconds": round(seconds, 2),
        "users_per_s": round(n_users / seconds, 1),
        "actors": actors,
    }
    log.info("exported %d users with Ray (%d workers) to %s in %.1f s", n_users, workers, out, seconds)
    return summary
