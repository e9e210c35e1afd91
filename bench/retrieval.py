"""``hashrec bench retrieval``: Hamming recall + continuous re-rank against float search, side by side.

    hashrec bench retrieval                 # 1M items (+ 100k for scaling), a few minutes; saves results
    hashrec bench retrieval --quick         # 100k items, a smoke run (nothing saved unless --save)
    hashrec bench retrieval --large         # adds 10M items to the scaling (several more minutes, ~4 GB)

Writes docs/results/retrieval.json, the ``retrieval`` section of docs/benchmarks.md and
docs/retrieval_scaling.png. Everything runs in this one process on one thread (FAISS OpenMP = 1), and the
methods are measured interleaved (query by query, batch by batch) so machine noise hits all of them.

Data: synthetic 64-d embeddings ``tanh(centre + 0.8 noise)`` around 1,000 centres (a stand-in for learned
embeddings: codes cluster, so an IVF has structure to exploit), 256 query users from the same mixture,
50 random seen items per user; k = 20, C = 1000. Speed depends on the shapes, not on the values, except for
the approximate indexes, whose recall is therefore also measured on a trained model's real codes when
``runs/gowalla-default`` exists (that run also gives the overlap@20 table).

Float search at its best configuration, in this process: FAISS uses BLAS only when queries x dims >=
``distance_compute_blas_threshold`` (128,000 by default, i.e. never for a 256 x 64 batch) and its bundled
OpenBLAS follows ``OPENBLAS_CORETYPE`` (set to an older core type on these machines). Before FAISS is
imported, the benchmark sets the core type to this CPU's (SKYLAKEX with AVX-512, else HASWELL) and lowers
the threshold to 1024; the JSON records both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .report import DOCS, REPO, md_table, save_json, write_section

log = logging.getLogger(__name__)

GOWALLA_RUN = REPO / "runs" / "gowalla-default"
K, C, BITS, SEEN = 20, 1000, 64, 50
GOWALLA_CS = (100, 200, 500, 1000, 2000)


def _cpu_coretype() -> str | None:
    try:
        flags = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), ""
        )
    except OSError:
        return None
    if " avx512f" in flags:
        return "SKYLAKEX"
    if " avx2" in flags:
        return "HASWELL"
    return None


def _prepare_blas() -> dict[str, Any]:
    """Point faiss's OpenBLAS at this CPU before faiss loads it (a no-op, recorded, if it already did)."""
    import sys

    before = os.environ.get("OPENBLAS_CORETYPE")
    # faiss ships its own OpenBLAS (faiss_cpu.libs), read when faiss is first imported; numpy's copy is a
    # different library and does not matter for the float search measured here
    loaded = "faiss" in sys.modules
    want = _cpu_coretype()
    if want and not loaded:
        os.environ["OPENBLAS_CORETYPE"] = want
    return {
        "openblas_coretype_env_before": before,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "set_before_load": not loaded,
    }


# -- timing ---------------------------------------------------------------------------------------------------
def _single(fns: dict[str, Callable[[int], Any]], n_queries: int) -> dict[str, float]:
    """Median ms per query; the methods take turns on each query (interleaved, same noise, rotated order)."""
    for fn in fns.values():
        fn(0)  # warm-up (page faults, lazy init)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for q in range(n_queries):
        # rotate the order each query: a method never always runs right after the one that evicts the caches
        # (the float flat scan streams 256 MB), which would bias it by a cold start
        for name in names[q % len(names) :] + names[: q % len(names)]:
            t0 = time.perf_counter()
            fns[name](q)
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def _batch(fns: dict[str, Callable[[], Any]], n_queries: int, repeats: int) -> dict[str, float]:
    """Median over ``repeats`` of (ms for the whole batch / batch size); methods alternate each repeat.

    With ``repeats`` below the number of methods, the rotation cannot give each method every position:
    use at least as many repeats as methods for a fair order (the default 7 covers the largest table)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotated, as in _single
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) / n_queries)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


# -- data -------------------------------------------------------------------------------------------------------
def _mixture(n: int, centres: Any, rng: Any) -> Any:
    import numpy as np

    out = np.empty((n, centres.shape[1]), np.float32)
    step = 1 << 20  # in blocks: 10M x 64 float32 intermediate arrays would double the memory
    for s in range(0, n, step):
        m = min(step, n - s)
        x = centres[rng.integers(0, len(centres), m)] + 0.8 * rng.standard_normal(
            (m, centres.shape[1]), dtype=np.float32
        )
        out[s : s + m] = np.tanh(x)
    return out


def _data(n_items: int, n_users: int, seed: int = 0) -> dict[str, Any]:
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, BITS)).astype(np.float32)
    item_z = _mixture(n_items, centres, rng)
    user_z = _mixture(n_users, centres, rng)
    rows = np.repeat(np.arange(n_users), SEEN)
    cols = np.concatenate([rng.choice(n_items, SEEN, replace=False) for _ in range(n_users)])
    seen = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    seen.sort_indices()
    return {"item_z": item_z, "user_z": user_z, "seen": seen}


# -- float baselines ----------------------------------------------------------------------------------------------
def _float_topk_excluding(index: Any, q: Any, seen_rows: list[Any], k: int, params: Any = None) -> Any:
    """Float top-k with seen items removed: over-fetch k + |seen| (the same exclusion rule as ours)."""
    import numpy as np

    extra = max(len(s) for s in seen_rows)
    _, idx = index.search(q, k + extra, params=params)
    out = np.empty((len(q), k), np.int64)
    for r in range(len(q)):
        row = idx[r][(idx[r] >= 0) & ~np.isin(idx[r], seen_rows[r])][:k]
        out[r, : len(row)] = row
        out[r, len(row) :] = -1  # an approximate index may return fewer than asked
    return out


def _exact_float_truth(item_z: Any, user_z: Any, seen: Any, k: int) -> Any:
    """Exact continuous top-k (ties by id) with seen items masked: the ground truth of Recall@20 here."""
    import numpy as np

    scores = user_z @ item_z.T
    scores[seen.nonzero()] = -np.inf
    part = np.argpartition(-scores, k, axis=1)[:, : k + 1]
    out = np.empty((len(user_z), k), np.int64)
    for r in range(len(user_z)):
        cand = part[r]
        out[r] = cand[np.lexsort((cand, -scores[r, cand]))][:k]
    return out


# -- the measurements ----------------------------------------------------------------------------------------------
def _cached_ivf(codes: Any, nlist: int) -> tuple[Any, dict[str, Any], float]:
    """IndexBinaryIVF over the codes; large builds (minutes at 10M) are cached under .hashrec/bench-cache,
    keyed by the data's size, nlist and seed, with their original build time."""
    import json

    import faiss

    from hashrec.index import binary_index

    n = len(codes)
    cache = REPO / ".hashrec" / "bench-cache" / f"ivf_{n}_nlist{nlist}_seed0.faissbin"
    meta = cache.with_suffix(".json")
    if n >= 1_000_000 and cache.is_file() and meta.is_file():
        params = {"nlist": nlist, "nprobe": 1}
        index = binary_index.read_index(cache, "ivf", params, mmap=False)
        return index, params, float(json.loads(meta.read_text())["build_s"])
    t0 = time.perf_counter()
    ivf, params = binary_index.build_index(codes, "ivf", {"nlist": nlist, "nprobe": 1})
    build_s = time.perf_counter() - t0
    if n >= 1_000_000:
        cache.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index_binary(ivf, str(cache))
        meta.write_text(json.dumps({"build_s": build_s}))
    return ivf, params, build_s


def _recall_stage(d: dict[str, Any], n_single: int, repeats: int, ivf_nlist: int) -> dict[str, Any]:
    """Candidate generation at one corpus size: Hamming top-C (several kernels) vs float top-k."""
    import faiss

    from hashrec.index import binary_index, fastscan
    from hashrec.data.codes import pack
    from hashrec.index.quality import hamming_recall

    item_z, user_z = d["item_z"], d["user_z"]
    n = len(item_z)
    codes, qcodes = pack(item_z), pack(user_z)
    res: dict[str, Any] = {"items": n}
    fi = faiss.IndexFlatIP(BITS)
    fi.add(item_z)
    heap = faiss.IndexBinaryFlat(BITS)
    heap.add(codes)
    mc = faiss.IndexBinaryFlat(BITS)
    mc.add(codes)
    mc.use_heap = False  # type: ignore[attr-defined]
    ivf, ivf_params, res["ivf_build_s"] = _cached_ivf(codes, ivf_nlist)
    exact_d, _ = fastscan.topk(codes, qcodes, C) if fastscan.available() else mc.search(qcodes, C)
    # IVF: the smallest nprobe reaching 0.99 recall of the exact Hamming top-C (ties counted)
    sweep = []
    chosen = None
    for nprobe in (8, 16, 32, 64, 128, 256):
        if nprobe > ivf_params["nlist"]:
            break
        ivf.nprobe = nprobe
        dd, ii = binary_index.search(ivf, qcodes, C)
        rec = hamming_recall(dd, ii, exact_d)
        sweep.append({"nprobe": nprobe, "recall": rec})
        if chosen is None and rec >= 0.99:
            chosen = nprobe
    chosen = chosen or sweep[-1]["nprobe"]
    ivf.nprobe = chosen
    res["ivf"] = {"nlist": ivf_params["nlist"], "nprobe": chosen, "sweep": sweep}
    q1 = [user_z[i : i + 1] for i in range(len(user_z))]
    c1 = [qcodes[i : i + 1] for i in range(len(user_z))]
    nq = len(user_z)
    single: dict[str, Callable[[int], Any]] = {
        "float_flat_ip": lambda i: fi.search(q1[i % nq], K),
        "faiss_binary_flat_heap": lambda i: heap.search(c1[i % nq], C),
        "faiss_binary_flat_counting": lambda i: mc.search(c1[i % nq], C),
        "binary_ivf": lambda i: ivf.search(c1[i % nq], C),
    }
    batch: dict[str, Callable[[], Any]] = {
        "float_flat_ip": lambda: fi.search(user_z, K),
        "faiss_binary_flat_heap": lambda: heap.search(qcodes, C),
        "faiss_binary_flat_counting": lambda: mc.search(qcodes, C),
        "binary_ivf": lambda: ivf.search(qcodes, C),
    }
    if fastscan.available():
        single["hashrec_scan"] = lambda i: fastscan.topk(codes, c1[i % nq], C)
        batch["hashrec_scan"] = lambda: fastscan.topk(codes, qcodes, C)
        ivf_scan = fastscan.IVFScan(ivf)  # the same lists and nprobe, scanned by the compiled scan
        single["hashrec_ivf_scan"] = lambda i: ivf_scan.search(c1[i % nq], C)
        batch["hashrec_ivf_scan"] = lambda: ivf_scan.search(qcodes, C)
        dd, ii = ivf_scan.search(qcodes, C)
        res["ivf"]["hashrec_ivf_scan_recall"] = hamming_recall(dd, ii, exact_d)
    res["single_ms"] = _single(single, n_single)
    res["batch_ms"] = _batch(batch, nq, repeats)
    res["bytes_per_item"] = {
        "float_flat_ip": 4 * BITS,
        "binary_flat": BITS // 8,
        "binary_ivf": binary_index.memory_bytes(ivf) / n,
    }
    log.info("recall stage, %d items: single %s", n, {k: round(v, 3) for k, v in res["single_ms"].items()})
    log.info(
        "recall stage, %d items: batch/query %s", n, {k: round(v, 3) for k, v in res["batch_ms"].items()}
    )
    return res


def _end_to_end(d: dict[str, Any], rs: dict[str, Any], n_single: int, repeats: int) -> dict[str, Any]:
    """recall + re-rank + seen-item exclusion, k = 20, C = 1000: ours vs exact float and float HNSW."""
    import faiss
    import numpy as np

    from hashrec.index import Retriever, fastscan
    from hashrec.index.quality import overlap_at_k

    item_z, user_z, seen = d["item_z"], d["user_z"], d["seen"]
    nq = len(user_z)
    users = [str(u) for u in range(nq)]
    seen_rows = [seen.indices[seen.indptr[u] : seen.indptr[u + 1]] for u in range(nq)]
    truth = _exact_float_truth(item_z, user_z, seen, K)
    res: dict[str, Any] = {}
    ours = {
        "ours_exact": Retriever.from_arrays(user_z, item_z, seen, scan="auto"),
        "ours_ivf": Retriever.from_arrays(
            user_z,
            item_z,
            seen,
            index_type="ivf",
            index_params={"nlist": rs["ivf"]["nlist"], "nprobe": rs["ivf"]["nprobe"]},
        ),
    }
    quality = {}
    for name, r in ours.items():
        recs = r.recommend(users, K, C)
        top = np.array([[int(x) for x in rec.items] for rec in recs])
        quality[name] = overlap_at_k(top, truth)
    fi = faiss.IndexFlatIP(BITS)
    fi.add(item_z)
    # float HNSW tuned to the same Recall@20 (vs the exact continuous top-20) as our exact-scan pipeline
    t0 = time.perf_counter()
    # building a 1M-item HNSW takes minutes: cache it (keyed by the data's shape and seed) for reruns
    cache = REPO / ".hashrec" / "bench-cache" / f"hnsw_m16_efc64_{len(item_z)}_seed0.faiss"
    if cache.is_file():
        hnsw = faiss.read_index(str(cache))
        res["hnsw_build_s"] = None
    else:
        faiss.omp_set_num_threads(2)  # building only; searches below run on one thread
        hnsw = faiss.IndexHNSWFlat(BITS, 16, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 64
        hnsw.add(item_z)
        faiss.omp_set_num_threads(1)
        res["hnsw_build_s"] = time.perf_counter() - t0
        cache.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(hnsw, str(cache))
    # float HNSW tuned to the same Recall@20 (vs the exact continuous top-20) as each of our pipelines:
    # sweep efSearch until it reaches our best recall, then time the efSearch values just under and just
    # over each of our recalls (HNSW "at our recall" is interpolated between them)
    ours_q = {name: quality[name] for name in ("ours_exact", "ours_ivf")}
    sweep = []
    for ef in (16, 32, 48, 64, 96, 128, 160, 192, 256, 384, 512):
        hnsw.hnsw.efSearch = ef  # type: ignore[attr-defined]
        rec = overlap_at_k(_float_topk_excluding(hnsw, user_z, seen_rows, K), truth)
        sweep.append({"efSearch": ef, "recall_at_20": rec})
        if rec >= max(ours_q.values()):
            break
    brackets = {}
    for name, q in ours_q.items():
        lo = [x["efSearch"] for x in sweep if x["recall_at_20"] < q]
        hi = [x["efSearch"] for x in sweep if x["recall_at_20"] >= q]
        brackets[name] = {"below": lo[-1] if lo else None, "over": hi[0] if hi else None}
    timed = sorted({ef for b in brackets.values() for ef in b.values() if ef is not None})
    res["hnsw"] = {"M": 16, "efConstruction": 64, "sweep": sweep, "brackets": brackets, "timed": timed}
    for ef in timed:
        quality[f"hnsw_ef{ef}"] = next(x["recall_at_20"] for x in sweep if x["efSearch"] == ef)
    quality["float_flat_ip"] = 1.0
    res["recall_at_20_vs_exact_float"] = quality

    def hnsw_one(ef: int) -> Callable[[int], Any]:
        params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
        return lambda i: _float_topk_excluding(
            hnsw, user_z[i % nq : i % nq + 1], seen_rows[i % nq : i % nq + 1], K, params
        )

    def hnsw_all(ef: int) -> Callable[[], Any]:
        params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
        return lambda: _float_topk_excluding(hnsw, user_z, seen_rows, K, params)

    single = {
        "float_flat_ip": lambda i: _float_topk_excluding(
            fi, user_z[i % nq : i % nq + 1], seen_rows[i % nq : i % nq + 1], K
        ),
        **{f"hnsw_ef{ef}": hnsw_one(ef) for ef in timed},
        "ours_ivf": lambda i: ours["ours_ivf"].recommend([users[i % nq]], K, C),
        "ours_exact": lambda i: ours["ours_exact"].recommend([users[i % nq]], K, C),
    }
    batch = {
        "float_flat_ip": lambda: _float_topk_excluding(fi, user_z, seen_rows, K),
        **{f"hnsw_ef{ef}": hnsw_all(ef) for ef in timed},
        "ours_ivf": lambda: ours["ours_ivf"].recommend(users, K, C),
        "ours_exact": lambda: ours["ours_exact"].recommend(users, K, C),
    }
    if fastscan.available():  # the same pipeline on FAISS's flat search, to show what the scan buys
        ours["ours_exact_faiss_flat"] = Retriever.from_arrays(user_z, item_z, seen, scan="faiss")
        single["ours_exact_faiss_flat"] = lambda i: ours["ours_exact_faiss_flat"].recommend(
            [users[i % nq]], K, C
        )
        batch["ours_exact_faiss_flat"] = lambda: ours["ours_exact_faiss_flat"].recommend(users, K, C)
        quality["ours_exact_faiss_flat"] = quality["ours_exact"]
    res["single_ms"] = _single(single, n_single)
    res["batch_ms"] = _batch(batch, nq, repeats)
    # re-rank alone: gather + product + top-k of C candidates per user
    r = ours["ours_exact"]
    _, cand = r.recall_stage(np.arange(nq), C)
    res["rerank_ms_per_user"] = _batch({"rerank": lambda: r.rerank_stage(user_z, cand, K)}, nq, repeats)[
        "rerank"
    ]
    res["bytes_per_item"] = {"float_hnsw": faiss.serialize_index(hnsw).size / len(item_z)}
    log.info("end to end: single %s", {k: round(v, 3) for k, v in res["single_ms"].items()})
    log.info("end to end: batch/query %s", {k: round(v, 3) for k, v in res["batch_ms"].items()})
    log.info("end to end: Recall@20 vs exact float %s", {k: round(v, 4) for k, v in quality.items()})
    return res


def _gowalla(run_dir: Path, repeats: int) -> dict[str, Any] | None:
    """Overlap@20 of hierarchical vs exact continuous top-20 on a trained model, per C, with latency."""
    import numpy as np

    from hashrec.index import Retriever, binary_index
    from hashrec.index.quality import hamming_recall, overlap_at_k
    from hashrec.model.run import load_run

    if not (run_dir / "embeddings.npz").is_file():
        return None
    run = load_run(run_dir)
    ds = run.dataset
    seen = ds.graph("known").user_items
    users = np.unique(ds.test.users)
    r = Retriever.from_arrays(run.user_z, run.item_z, seen)
    truth = np.concatenate(
        [
            _exact_float_truth(run.item_z, run.user_z[users[s : s + 1024]], seen[users[s : s + 1024]], K)
            for s in range(0, len(users), 1024)
        ]
    )
    rows = []
    for c in GOWALLA_CS:
        t0 = time.perf_counter()
        tops = []
        for s in range(0, len(users), 256):
            u = users[s : s + 256]
            _, cand = r.recall_stage(u, c)
            tops.append(r.rerank_stage(run.user_z[u], cand, K)[1])
        dt = (time.perf_counter() - t0) / len(users)
        rows.append(
            {
                "C": c,
                "overlap_at_20": overlap_at_k(np.concatenate(tops), truth),
                "ms_per_user_batched": 1e3 * dt,
            }
        )
    # approximate index on the real codes: IVF recall of the exact Hamming top-1000 vs nprobe
    sample = users[:: max(1, len(users) // 1000)]
    exact_d, _ = r.recall_stage(sample, C, exclude_seen=False)
    nlist = max(16, len(run.item_z) // 1000)
    ivf, _ = binary_index.build_index(r.bundle.item_codes, "ivf", {"nlist": nlist, "nprobe": 1})
    ivf_rows = []
    for nprobe in (1, 2, 4, 8, 16):
        ivf.nprobe = nprobe
        dd, ii = binary_index.search(ivf, r.bundle.user_codes[sample], C)
        ivf_rows.append({"nlist": nlist, "nprobe": nprobe, "recall": hamming_recall(dd, ii, exact_d)})
    return {
        "run": str(run_dir),
        "users": len(users),
        "items": len(run.item_z),
        "bits": run.bits,
        "overlap": rows,
        "ivf_on_real_codes": ivf_rows,
    }


def _plot(scaling: list[dict[str, Any]], mem: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = [m for m in scaling[0]["single_ms"] if all(m in s["single_ms"] for s in scaling)]
    for m in methods:
        xs = [s["items"] for s in scaling]
        a.plot(xs, [s["single_ms"][m] for s in scaling], marker="o", label=f"{m} (single)")
    for m in ("float_flat_ip", "hashrec_scan", "binary_ivf"):
        if all(m in s["batch_ms"] for s in scaling):
            a.plot(
                [s["items"] for s in scaling],
                [s["batch_ms"][m] for s in scaling],
                ls="--",
                marker="x",
                label=f"{m} (batch 256, per query)",
            )
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("items")
    a.set_ylabel("ms per query (median, 1 thread)")
    a.set_title(f"Recall stage: Hamming top-{C} vs float top-{K}, {BITS} bits / {BITS}-d")
    a.legend(fontsize=7)
    b.bar(list(mem), list(mem.values()))
    b.set_yscale("log")
    b.set_ylabel("bytes per item (index)")
    b.set_title("memory per item")
    b.tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _memory(out: dict[str, Any]) -> dict[str, float]:
    """Index bytes per item of every index type measured (serialized sizes; flat ones exact)."""
    one = next(s for s in out["scaling"] if s["items"] == out["items"])
    mem = {**one["bytes_per_item"], **out["end_to_end"]["bytes_per_item"]}
    if "binary_hnsw_bytes_per_item" in out:
        mem["binary_hnsw"] = out["binary_hnsw_bytes_per_item"]
    return mem


def _status(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _markdown(out: dict[str, Any]) -> str:
    m = out["machine"]
    one = next(s for s in out["scaling"] if s["items"] == out["items"])
    e2e = out["end_to_end"]
    lines = [
        "## Retrieval: Hamming recall + re-rank vs float search (issue 4)",
        "",
        f"Command: `{out['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared, noisy), Python {m['python']}. Date: {m['date']}.  ",
        f"Setup: {out['items']:,} items, {BITS}-bit codes vs {BITS}-d float32, k = {K}, C = {C}, {SEEN} seen items per user, "
        f"256 query users; one thread; single = median per query over {out['single_queries']} queries, "
        f"batch = 256 queries per call, median of {out['repeats']} repeats, per query. Methods interleaved. "
        f"Float search at its best: OPENBLAS_CORETYPE={out['blas']['openblas_coretype']} "
        f"(was {out['blas']['openblas_coretype_env_before']}), faiss distance_compute_blas_threshold=1024. "
        f"Exact scan kernel: {out['scan_kernel']}.",
        "",
        f"### Recall stage at {out['items']:,} items (ms per query)",
        "",
    ]
    names = {
        "float_flat_ip": f"float IndexFlatIP, exact top-{K}",
        "faiss_binary_flat_heap": f"FAISS IndexBinaryFlat (heap), exact top-{C}",
        "faiss_binary_flat_counting": f"FAISS IndexBinaryFlat (counting, use_heap=False), exact top-{C}",
        "hashrec_scan": f"hashrec compiled scan (index/_hamming.c), exact top-{C}",
        "binary_ivf": f"FAISS IndexBinaryIVF nlist {one['ivf']['nlist']} nprobe {one['ivf']['nprobe']}, top-{C}",
        "hashrec_ivf_scan": f"same IVF lists, hashrec compiled scan (index/fastscan.IVFScan), top-{C}",
    }
    base_s, base_b = one["single_ms"]["float_flat_ip"], one["batch_ms"]["float_flat_ip"]
    rows = []
    for key, label in names.items():
        if key in one["single_ms"]:
            s, b = one["single_ms"][key], one["batch_ms"][key]
            rows.append([label, f"{s:.3f}", f"{base_s / s:.1f}x", f"{b:.3f}", f"{base_b / b:.1f}x"])
    lines += [md_table(["method", "single", "speed-up vs float", "batch 256", "speed-up vs float"], rows), ""]
    lines += [
        f"IVF recall of the exact Hamming top-{C} (ties counted) by nprobe: "
        + ", ".join(f"{r['nprobe']}: {r['recall']:.4f}" for r in one["ivf"]["sweep"])
        + f" (build {one['ivf_build_s']:.1f} s).",
        "",
        f"### End to end at {out['items']:,} items: recall + re-rank + seen-item exclusion (ms per query)",
        "",
    ]
    q = e2e["recall_at_20_vs_exact_float"]
    enames = {"float_flat_ip": "float IndexFlatIP exact (over-fetch k + seen)"}
    for ef in e2e["hnsw"]["timed"]:
        enames[f"hnsw_ef{ef}"] = f"float IndexHNSWFlat M 16, efSearch {ef}"
    enames.update(
        {
            "ours_exact": "hashrec Retriever, exact Hamming (compiled scan)",
            "ours_exact_faiss_flat": "hashrec Retriever, exact Hamming (FAISS flat)",
            "ours_ivf": f"hashrec Retriever, IVF nprobe {one['ivf']['nprobe']}/{one['ivf']['nlist']} (compiled scan)",
        }
    )
    rows = []
    fs, fb = e2e["single_ms"]["float_flat_ip"], e2e["batch_ms"]["float_flat_ip"]
    for key, label in enames.items():
        if key in e2e["single_ms"]:
            s, b = e2e["single_ms"][key], e2e["batch_ms"][key]
            rows.append([label, f"{q[key]:.4f}", f"{s:.3f}", f"{fs / s:.1f}x", f"{b:.3f}", f"{fb / b:.1f}x"])
    lines += [
        md_table(
            ["method", "Recall@20 vs exact float", "single", "vs float exact", "batch 256", "vs float exact"],
            rows,
        ),
        "",
        f"Re-rank alone (gather + product + top-{K} of {C} candidates): {e2e['rerank_ms_per_user']:.3f} ms per user (batched). "
        f"HNSW efSearch sweep (Recall@20): "
        + ", ".join(f"{s['efSearch']}: {s['recall_at_20']:.4f}" for s in e2e["hnsw"]["sweep"])
        + (
            f"; HNSW build {e2e['hnsw_build_s']:.0f} s on 2 threads."
            if e2e["hnsw_build_s"] is not None
            else "; index loaded from the benchmark's cache (.hashrec/bench-cache)."
        ),
        "",
        "### Scaling (single query, ms; memory per item)",
        "",
        f"![scaling]({out['plot']})",
        "",
    ]
    keys = [k for k in names if all(k in s["single_ms"] for s in out["scaling"])]
    rows = []
    for s in out["scaling"]:
        ivf_rec = next(r["recall"] for r in s["ivf"]["sweep"] if r["nprobe"] == s["ivf"]["nprobe"])
        rows.append(
            [f"{s['items']:,}"]
            + [f"{s['single_ms'][k]:.3f}" for k in keys]
            + [f"{s['ivf']['nlist']} / {s['ivf']['nprobe']} / {ivf_rec:.4f}"]
        )
    lines += [md_table(["items", *keys, "IVF nlist / nprobe / recall"], rows), ""]
    mem = _memory(out)
    lines += ["Bytes per item: " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items()) + ".", ""]
    g = out.get("gowalla")
    if g:
        lines += [
            f"### Gowalla, trained model ({g['run']}, {g['bits']} bits): hierarchical vs exact continuous top-20",
            "",
            *(
                [
                    f"Measured {g['measured']} by `{g['command']}` (the rest of this section: the date above).",
                    "",
                ]
                if g.get("command")
                else []
            ),
            md_table(
                ["C", "overlap@20", "ms per user (batched recall + re-rank)"],
                [
                    [r["C"], f"{r['overlap_at_20']:.4f}", f"{r['ms_per_user_batched']:.3f}"]
                    for r in g["overlap"]
                ],
            ),
            "",
            f"IVF on the real item codes ({g['items']:,} items), recall of the exact Hamming top-{C}: "
            + ", ".join(
                f"nprobe {r['nprobe']}/{r['nlist']}: {r['recall']:.4f}" for r in g["ivf_on_real_codes"]
            )
            + ".",
            "",
        ]
    else:
        lines += [
            f"Gowalla overlap@20: not measured ({GOWALLA_RUN.relative_to(REPO)}/embeddings.npz does not exist yet).",
            "",
        ]
    lines += ["### Targets", "", md_table(["target", "measured", "status"], out["targets"]), ""]
    lines += [
        "Where the HNSW gap comes from: exact Hamming recall reads every item code once per query (8 bytes "
        "per item, at memory bandwidth) and then re-ranks C = 1000 candidates, whose embedding rows are "
        "fetched at random; a float HNSW search visits only the few thousand vectors along its graph walk. "
        "At 1M items that walk is cheaper than the full scan plus the re-rank of 1000 candidates, so "
        "matching HNSW would need fewer candidates or an approximate recall stage (the IVF rows above); "
        "the scan's advantage grows with the corpus only for the IVF scan (scaling table). The JSON holds "
        "every measurement, the sweeps included."
    ]
    return "\n".join(lines)


def _targets(out: dict[str, Any]) -> list[list[str]]:
    one = next(s for s in out["scaling"] if s["items"] == out["items"])
    e2e = out["end_to_end"]
    f1, fb = one["single_ms"]["float_flat_ip"], one["batch_ms"]["float_flat_ip"]
    exact = "hashrec_scan" if "hashrec_scan" in one["single_ms"] else "faiss_binary_flat_counting"
    rows = []
    r1 = f1 / one["single_ms"][exact]
    rows.append(
        [
            "Hamming recall, single query: >= 8x faster than exact float",
            f"{r1:.1f}x (exact, {exact})",
            _status(r1 >= 8),
        ]
    )
    rb = fb / one["batch_ms"][exact]
    ri = fb / one["batch_ms"]["binary_ivf"]
    ivf_rec = next(r["recall"] for r in one["ivf"]["sweep"] if r["nprobe"] == one["ivf"]["nprobe"])
    rows.append(
        [
            "Hamming recall, batch 256: >= 4x faster than exact float (best config)",
            f"{rb:.1f}x exact; {ri:.1f}x IVF at recall {ivf_rec:.3f}",
            _status(max(rb, ri) >= 4),
        ]
    )
    e1 = e2e["single_ms"]["float_flat_ip"] / e2e["single_ms"]["ours_exact"]
    rows.append(["end to end, single: >= 5x faster than exact float", f"{e1:.1f}x", _status(e1 >= 5)])
    q = e2e["recall_at_20_vs_exact_float"]
    hnsw_rows = []
    for name, label in (("ours_exact", "exact Hamming"), ("ours_ivf", "IVF")):
        br = e2e["hnsw"]["brackets"][name]
        lo, hi = br["below"], br["over"]
        if hi is None:
            hnsw_rows.append((f"{label}: HNSW never reached our Recall@20 {q[name]:.4f} in the sweep", False))
            continue
        t_hi = e2e["single_ms"][f"hnsw_ef{hi}"]
        if lo is None:
            hn, how = t_hi, f"efSearch {hi}"
        else:
            # HNSW latency at exactly our Recall@20: linear between the efSearch values around it
            t_lo, r_lo, r_hi = e2e["single_ms"][f"hnsw_ef{lo}"], q[f"hnsw_ef{lo}"], q[f"hnsw_ef{hi}"]
            w = (q[name] - r_lo) / (r_hi - r_lo) if r_hi > r_lo else 1.0
            hn, how = t_lo + w * (t_hi - t_lo), f"interpolated between efSearch {lo} and {hi}"
        ours_ms = e2e["single_ms"][name]
        hnsw_rows.append(
            (
                f"{label} {hn / ours_ms:.2f}x (ours {ours_ms:.3f} ms at Recall@20 {q[name]:.4f}; "
                f"HNSW {hn:.3f} ms {how})",
                hn / ours_ms >= 1.0,
            )
        )
    rows.append(
        [
            "end to end, single: at least as fast as float HNSW at the same Recall@20",
            "; ".join(t for t, _ in hnsw_rows),
            _status(any(ok for _, ok in hnsw_rows)),
        ]
    )
    g = out.get("gowalla")
    if g:
        best = max(g["overlap"], key=lambda r: r["overlap_at_20"])
        ok = [r["C"] for r in g["overlap"] if r["overlap_at_20"] >= 0.95]
        rows.append(
            [
                "Gowalla: hierarchical top-20 overlaps exact continuous >= 95%",
                f"best {best['overlap_at_20']:.4f} at C={best['C']}; C meeting it: {ok or 'none'}",
                _status(bool(ok)),
            ]
        )
    else:
        rows.append(
            [
                "Gowalla: hierarchical top-20 overlaps exact continuous >= 95%",
                "no trained Gowalla run",
                "not measured",
            ]
        )
    sizes = [s["items"] for s in out["scaling"]]
    rows.append(
        [
            "scaling 100k / 1M / 10M plotted with memory per item",
            ", ".join(f"{n:,}" for n in sizes),
            _status({100_000, 1_000_000, 10_000_000} <= set(sizes)),
        ]
    )
    return rows


def _render(out: dict[str, Any]) -> str:
    """Plot and docs section from a results dict (a fresh run or the saved JSON)."""
    from .report import machine_info

    plot = DOCS / out["plot"]
    out["targets"] = _targets(out)
    _plot(out["scaling"], _memory(out), plot)
    out.setdefault("machine", machine_info())
    md = _markdown(out)
    write_section("retrieval", md)
    return md


def _cmd(args: argparse.Namespace) -> int:
    if args.report_only:  # re-render docs from the saved results: no measurement, same numbers
        saved = json.loads((DOCS / "results" / "retrieval.json").read_text())
        print(_render(saved))
        return 0
    if args.trained_only:  # measure only the trained-run table; keep the saved synthetic measurements
        path = DOCS / "results" / "retrieval.json"
        saved = json.loads(path.read_text())
        g = _gowalla(Path(args.run), args.repeats)
        if g is None:
            log.error("%s: no embeddings.npz: train and evaluate a run first", args.run)
            return 2
        from .report import machine_info

        g["command"] = f"hashrec bench retrieval --trained-only --run {args.run}"
        g["measured"] = machine_info()["date"]
        saved["gowalla"] = g
        saved["run"] = args.run
        saved["targets"] = _targets(saved)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(saved, indent=2, default=float) + "\n")
        tmp.replace(path)
        print(_render(saved))
        return 0
    blas = _prepare_blas()
    import faiss

    from hashrec.index import binary_index, fastscan

    faiss.omp_set_num_threads(1)
    blas["blas_threshold_default"] = int(faiss.cvar.distance_compute_blas_threshold)
    faiss.cvar.distance_compute_blas_threshold = 1024
    quick = args.quick
    n_items = 100_000 if quick else 1_000_000
    sizes = [100_000] if quick else [100_000, 1_000_000] + ([10_000_000] if args.large else [])
    n_single = 30 if quick else args.queries
    repeats = 2 if quick else args.repeats
    out: dict[str, Any] = {
        "command": "hashrec bench retrieval"
        + (" --quick" if quick else "")
        + (" --large" if args.large else ""),
        "items": n_items,
        "bits": BITS,
        "k": K,
        "candidates": C,
        "single_queries": n_single,
        "repeats": repeats,
        "blas": blas,
        "scan_kernel": fastscan.kernel(),
        "run": args.run,
        "scaling": [],
    }
    t_all = time.perf_counter()
    for n in sizes:
        log.info("generating %d items ...", n)
        d = _data(n, 256)
        reps = max(1, repeats // 2) if n > 1_000_000 else repeats
        rs = _recall_stage(
            d, n_single if n <= 1_000_000 else max(10, n_single // 3), reps, max(16, n // 1000)
        )
        out["scaling"].append(rs)
        if n == n_items:
            out["end_to_end"] = _end_to_end(d, rs, n_single, repeats)
        if n == 100_000:  # binary HNSW memory (too slow to build at 1M for a few-minute benchmark)
            from hashrec.data.codes import pack

            h, _ = binary_index.build_index(pack(d["item_z"]), "hnsw", None)
            out["binary_hnsw_bytes_per_item"] = binary_index.memory_bytes(h) / n
        del d
    g = _gowalla(Path(args.run), repeats)
    if g is not None:
        out["gowalla"] = g
    out["seconds"] = time.perf_counter() - t_all
    plot = DOCS / "retrieval_scaling.png"
    out["plot"] = plot.name
    out["targets"] = _targets(out)
    if quick and not args.save:
        print(
            json.dumps(
                {
                    "targets": out["targets"],
                    "scaling": out["scaling"],
                    "end_to_end": out["end_to_end"],
                    "gowalla": out.get("gowalla"),
                },
                indent=2,
                default=float,
            )
        )
        return 0
    path = save_json("retrieval", out)
    out["machine"] = json.loads(path.read_text())["machine"]  # the run's machine and date, as saved
    print(_render(out))
    log.info("saved %s, %s and docs/benchmarks.md (%.0f s)", path, plot, out["seconds"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench retrieval``."""
    p = sub.add_parser("retrieval", help="Hamming recall + re-rank vs float search at 1M items (and scaling)")
    p.add_argument(
        "--quick", action="store_true", help="100k items, seconds: a smoke run (not saved unless --save)"
    )
    p.add_argument("--save", action="store_true", help="save even a --quick run")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="re-render docs/benchmarks.md and the plot from docs/results/retrieval.json (no measurement)",
    )
    p.add_argument("--large", action="store_true", help="add 10M items to the scaling (minutes, ~4 GB RAM)")
    p.add_argument("--queries", type=int, default=100, help="single queries per method (default 100)")
    p.add_argument("--repeats", type=int, default=7, help="batch repeats per method (default 7)")
    p.add_argument(
        "--trained-only",
        action="store_true",
        help="measure only the trained-run overlap table and merge it into docs/results/retrieval.json",
    )
    p.add_argument(
        "--run",
        default=str(GOWALLA_RUN),
        help="trained run for the overlap@20 table (default runs/gowalla-default; skipped when absent)",
    )
    p.set_defaults(func=_cmd)
