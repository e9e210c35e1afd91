"""How fast is Hamming recall + re-rank against exact float search, at 1M items and at Gowalla's catalogue?

    .venv/bin/python benchmarks/retrieval.py                         # 1M items + Gowalla, a few minutes
    .venv/bin/python benchmarks/retrieval.py --quick                 # 100k items + Gowalla, seconds
    .venv/bin/python benchmarks/retrieval.py --out /tmp/retrieval.json

Catalogues:

- **synthetic** (``--items``, 1M by default): 64-d embeddings ``tanh(centre + 0.8 noise)`` around 1,000
  centres (codes cluster, as learned ones do, so an IVF has structure to use), 256 query users from the
  same mixture, 50 random seen items each;
- **gowalla** (``--gowalla``, ../shared/data/gowalla): the real catalogue, 29,858 users x 40,981 items,
  with its known interactions (each query user's seen items are excluded, as in serving) and embeddings
  from the same mixture: speed depends on the shapes and the seen lists, not on the values.

Per catalogue, on one thread (FAISS OpenMP = 1), the methods interleaved (:func:`common.interleaved`):

- **recall stage**: Hamming top-C (C = 1000) with our compiled scan (index/_scan.c, what the Retriever
  uses for flat indexes; also its baseline build, what CPUs without AVX-512 VPOPCNTDQ run), FAISS ``IndexBinaryFlat`` in heap mode and in counting mode (``use_heap =
  False``), and ``IndexBinaryIVF`` at the smallest ``nprobe`` whose recall of the exact top-C (ties
  counted) reaches 0.99; against exact float top-k (``IndexFlatIP``);
- **end to end** (k = 20, C = 1000, seen items excluded): the Retriever on the flat index (our scan), the
  same Retriever with FAISS's flat search instead (the kernel's end-to-end gain over the library), and on
  that IVF, against the Retriever's exact float search (every item scored, :meth:`Retriever.exact`), which
  is also the truth of the Recall@20 column.

Single = median ms of one-user calls; batch = median ms per user of 256-user calls. Float search runs at
its best: FAISS's bundled OpenBLAS is pointed at this CPU (``OPENBLAS_CORETYPE``, set before FAISS loads)
and its BLAS threshold lowered to 1024, so a 256-query batch uses BLAS; the JSON records both.
"""

from __future__ import annotations

import os
from pathlib import Path


def _cpu_coretype() -> str | None:
    """SKYLAKEX with AVX-512, HASWELL with AVX2, else None (OpenBLAS's own choice)."""
    try:
        flags = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), ""
        )
    except OSError:
        return None
    return "SKYLAKEX" if " avx512f" in flags else "HASWELL" if " avx2" in flags else None


# before FAISS is imported (common imports the test helpers, which import it): its OpenBLAS reads this once
_CORETYPE_BEFORE = os.environ.get("OPENBLAS_CORETYPE")
if _cpu_coretype() and _CORETYPE_BEFORE is None:
    os.environ["OPENBLAS_CORETYPE"] = str(_cpu_coretype())

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import common  # noqa: E402
import faiss  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from hashrec.data import load_dataset  # noqa: E402
from hashrec.data.codes import pack  # noqa: E402
from hashrec.index import binary_index, scan  # noqa: E402
from hashrec.index.retriever import Retriever  # noqa: E402

log = logging.getLogger("benchmarks.retrieval")

K, C, BITS, SEEN, QUERIES = 20, 1000, 64, 50, 256
GOWALLA = common.DATA / "gowalla"


def mixture(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows of ``tanh(centre + 0.8 noise)`` (float32), built in blocks to bound the memory."""
    out = np.empty((n, centres.shape[1]), np.float32)
    for s in range(0, n, 1 << 20):
        m = min(1 << 20, n - s)
        noise = rng.standard_normal((m, centres.shape[1]), dtype=np.float32)
        out[s : s + m] = np.tanh(centres[rng.integers(0, len(centres), m)] + 0.8 * noise)
    return out


def synthetic_catalogue(n_items: int, seed: int = 0) -> dict[str, Any]:
    """256 query users and ``n_items`` items from one mixture; 50 random seen items per user."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, BITS)).astype(np.float32)
    item_z, user_z = mixture(n_items, centres, rng), mixture(QUERIES, centres, rng)
    cols = np.concatenate([rng.choice(n_items, SEEN, replace=False) for _ in range(QUERIES)])
    rows = np.repeat(np.arange(QUERIES), SEEN)
    seen = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(QUERIES, n_items))
    name = f"synthetic {n_items:,} items"
    return {"name": name, "item_z": item_z, "user_z": user_z, "seen": seen, "queries": np.arange(QUERIES)}


def gowalla_catalogue(folder: Path, seed: int = 0) -> dict[str, Any]:
    """Gowalla's users, items and known interactions; mixture embeddings; 256 query users drawn at random."""
    ds = load_dataset(folder)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, BITS)).astype(np.float32)
    return {
        "name": f"Gowalla ({ds.n_users:,} users x {ds.n_items:,} items)",
        "item_z": mixture(ds.n_items, centres, rng),
        "user_z": mixture(ds.n_users, centres, rng),
        "seen": ds.graph("known").user_items,
        "queries": np.sort(rng.choice(ds.n_users, QUERIES, replace=False)),
    }


def smallest_nprobe(
    ivf: Any, qcodes: np.ndarray, exact_d: np.ndarray, target: float = 0.99
) -> tuple[int, list[dict[str, float]]]:
    """The smallest power-of-two ``nprobe`` whose recall of the exact top-C reaches ``target``, and the sweep."""
    sweep, chosen = [], None
    nprobe = 1
    while nprobe <= ivf.nlist:
        ivf.nprobe = nprobe
        d, i = binary_index.search(ivf, qcodes, C)
        rec = binary_index.recall_against_exact(d, i, exact_d)
        sweep.append({"nprobe": nprobe, "recall": rec})
        if rec >= target:
            chosen = nprobe
            break
        nprobe *= 2
    chosen = chosen or ivf.nlist
    ivf.nprobe = chosen
    return chosen, sweep


def baseline_build(fn: Callable[[int], Any]) -> Callable[[int], Any]:
    """``fn`` run with the kernel's baseline distance loop (one popcnt per word): what a CPU without
    AVX-512 VPOPCNTDQ runs (on such a CPU both builds are this one)."""

    def call(r: int) -> Any:
        scan.use_vector_popcount(False)
        try:
            return fn(r)
        finally:
            scan.use_vector_popcount(True)

    return call


def recall_stage(cat: dict[str, Any], single: int, repeats: int) -> dict[str, Any]:
    """Hamming top-C (heap, counting, IVF) vs float top-k, per query and per batch."""
    item_z, q = cat["item_z"], cat["user_z"][cat["queries"]]
    codes, qcodes = pack(item_z), pack(q)
    n = len(item_z)
    flat_ip = faiss.IndexFlatIP(BITS)
    flat_ip.add(item_z)
    heap, _ = binary_index.build_index(codes, "flat", {"use_heap": True})
    counting, _ = binary_index.build_index(codes, "flat", {"use_heap": False})
    t0 = time.perf_counter()
    ivf, params = binary_index.build_index(codes, "ivf")
    build_s = time.perf_counter() - t0
    exact_d, _ = binary_index.search(counting, qcodes, C)
    nprobe, sweep = smallest_nprobe(ivf, qcodes, exact_d)
    one = [q[i : i + 1] for i in range(len(q))]
    one_codes = [qcodes[i : i + 1] for i in range(len(q))]
    indexes = {"binary_flat_heap": heap, "binary_flat_counting": counting, "binary_ivf": ivf}
    single_fns = {"float_flat_ip": lambda r: flat_ip.search(one[r % len(q)], K)}
    batch_fns = {"float_flat_ip": lambda r: flat_ip.search(q, K)}
    for name, index in indexes.items():
        single_fns[name] = lambda r, ix=index: ix.search(one_codes[r % len(q)], C)
        batch_fns[name] = lambda r, ix=index: ix.search(qcodes, C)
    single_fns["scan_kernel"] = lambda r: scan.topc(codes, one_codes[r % len(q)], C)
    batch_fns["scan_kernel"] = lambda r: scan.topc(codes, qcodes, C)
    single_fns["scan_kernel_baseline"] = baseline_build(single_fns["scan_kernel"])
    batch_fns["scan_kernel_baseline"] = baseline_build(batch_fns["scan_kernel"])
    return {
        "single_ms": common.interleaved(single_fns, single),
        "batch_ms": common.interleaved(batch_fns, repeats, per_call=len(q)),
        "ivf": {"nlist": params["nlist"], "nprobe": nprobe, "sweep": sweep, "build_s": round(build_s, 2)},
        "bytes_per_item": {
            "float_flat_ip": 4 * BITS,
            "binary_flat": BITS // 8,
            "binary_ivf": binary_index.memory_bytes(ivf) / n,
        },
    }


def end_to_end(cat: dict[str, Any], ivf: dict[str, Any], single: int, repeats: int) -> dict[str, Any]:
    """The Retriever (flat and IVF) vs its exact float search, seen items excluded; Recall@20 vs exact."""
    qs = cat["queries"]
    flat = Retriever.from_arrays(cat["user_z"], cat["item_z"], cat["seen"])
    approx = Retriever.from_arrays(
        cat["user_z"],
        cat["item_z"],
        cat["seen"],
        index_type="ivf",
        index_params={"nlist": ivf["nlist"], "nprobe": ivf["nprobe"]},
    )
    # the same flat Retriever with its scan switched off: recall falls to FAISS's flat search (the path the
    # Retriever takes for approximate indexes), so the two differ only in the recall engine
    library = Retriever.from_arrays(cat["user_z"], cat["item_z"], cat["seen"])
    library._flat_codes = None
    users = [str(u) for u in qs]
    _codes, vectors = flat.user_rows(qs)
    exclude = [flat.seen_items(int(u)) for u in qs]
    _scores, truth = flat.exact(vectors, K, exclude)

    def recall_at_k(r: Retriever) -> float:
        got = [{int(x) for x in rec.items} for rec in r.recommend(users, K, C) if rec is not None]
        return float(np.mean([len(g & set(t[t >= 0].tolist())) / K for g, t in zip(got, truth, strict=True)]))

    single_fns = {
        "exact_float": lambda r: flat.exact(
            vectors[r % len(qs) : r % len(qs) + 1], K, exclude[r % len(qs) : r % len(qs) + 1]
        ),
        "retriever_flat": lambda r: flat.recommend([users[r % len(qs)]], K, C),
        "retriever_faiss_flat": lambda r: library.recommend([users[r % len(qs)]], K, C),
        "retriever_ivf": lambda r: approx.recommend([users[r % len(qs)]], K, C),
    }
    single_fns["retriever_flat_baseline"] = baseline_build(single_fns["retriever_flat"])
    batch_fns = {
        "exact_float": lambda r: flat.exact(vectors, K, exclude),
        "retriever_flat": lambda r: flat.recommend(users, K, C),
        "retriever_faiss_flat": lambda r: library.recommend(users, K, C),
        "retriever_ivf": lambda r: approx.recommend(users, K, C),
    }
    batch_fns["retriever_flat_baseline"] = baseline_build(batch_fns["retriever_flat"])
    return {
        "single_ms": common.interleaved(single_fns, single),
        "batch_ms": common.interleaved(batch_fns, repeats, per_call=len(qs)),
        "recall_at_20": {
            "exact_float": 1.0,
            "retriever_flat": recall_at_k(flat),
            "retriever_flat_baseline": recall_at_k(flat),
            "retriever_faiss_flat": recall_at_k(library),
            "retriever_ivf": recall_at_k(approx),
        },
    }


RECALL_LABELS = {
    "float_flat_ip": f"float IndexFlatIP, exact top-{K}",
    "scan_kernel": f"our scan (index/_scan.c, bundles' flat default), top-{C}",
    "scan_kernel_baseline": f"our scan, baseline build (no vector popcount), top-{C}",
    "binary_flat_heap": f"FAISS IndexBinaryFlat, heap, top-{C}",
    "binary_flat_counting": f"FAISS IndexBinaryFlat, counting, top-{C}",
    "binary_ivf": f"FAISS IndexBinaryIVF, top-{C}",
}
E2E_LABELS = {
    "exact_float": "exact float: every item scored (Retriever.exact)",
    "retriever_flat": "Retriever, binary flat (our scan) + re-rank",
    "retriever_flat_baseline": "Retriever, binary flat (our scan, baseline build) + re-rank",
    "retriever_faiss_flat": "Retriever, binary flat (FAISS counting search) + re-rank",
    "retriever_ivf": "Retriever, binary IVF + re-rank",
}


def table(results: list[dict[str, Any]]) -> str:
    """One markdown table: per catalogue, the recall stage then end to end, speed-ups against float."""
    rows = []
    for res in results:
        rs, e2e = res["recall_stage"], res["end_to_end"]
        ivf = f" (nlist {rs['ivf']['nlist']}, nprobe {rs['ivf']['nprobe']})"
        for stage, part, labels, base in (
            ("recall", rs, RECALL_LABELS, "float_flat_ip"),
            ("end to end", e2e, E2E_LABELS, "exact_float"),
        ):
            s0, b0 = part["single_ms"][base], part["batch_ms"][base]
            for key, label in labels.items():
                s, b = part["single_ms"][key], part["batch_ms"][key]
                recall = part.get("recall_at_20", {}).get(key)
                rows.append(
                    [
                        res["catalogue"],
                        stage,
                        label + (ivf if "ivf" in key else ""),
                        f"{s:.3f}",
                        f"{s0 / s:.1f}x",
                        f"{b:.4f}",
                        f"{b0 / b:.1f}x",
                        "-" if recall is None else f"{recall:.4f}",
                    ]
                )
    headers = [
        "catalogue",
        "stage",
        "method",
        "single ms",
        "vs float",
        "batch ms/user",
        "vs float",
        "Recall@20",
    ]
    return common.md_table(headers, rows)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--items", type=int, default=1_000_000, help="items of the synthetic catalogue (default 1M)"
    )
    p.add_argument("--gowalla", type=Path, default=GOWALLA, help="Gowalla folder (train.txt.gz + test.txt)")
    p.add_argument("--no-gowalla", action="store_true", help="only the synthetic catalogue")
    p.add_argument("--single", type=int, default=100, help="one-user calls per method (default 100)")
    p.add_argument("--repeats", type=int, default=7, help="256-user calls per method (default 7)")
    p.add_argument("--quick", action="store_true", help="100k items, 20 single calls, 2 batches: a smoke run")
    common.add_out(p)
    args = p.parse_args()
    common.setup_logging()
    if args.quick:
        args.items, args.single, args.repeats = 100_000, 20, 2
    faiss.omp_set_num_threads(1)
    blas = {
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "openblas_coretype_before": _CORETYPE_BEFORE,
        "blas_threshold_default": int(faiss.cvar.distance_compute_blas_threshold),
        "blas_threshold": 1024,
    }
    faiss.cvar.distance_compute_blas_threshold = 1024
    makers = [lambda: synthetic_catalogue(args.items)]
    if not args.no_gowalla:
        makers.append(lambda: gowalla_catalogue(args.gowalla))
    results = []
    for make in makers:
        cat = make()
        log.info("%s: recall stage", cat["name"])
        rs = recall_stage(cat, args.single, args.repeats)
        log.info("%s: end to end", cat["name"])
        e2e = end_to_end(cat, rs["ivf"], args.single, args.repeats)
        results.append(
            {"catalogue": cat["name"], "items": len(cat["item_z"]), "recall_stage": rs, "end_to_end": e2e}
        )
        del cat
    command = "python benchmarks/retrieval.py " + " ".join(sys.argv[1:])
    payload = {
        "k": K,
        "candidates": C,
        "bits": BITS,
        "queries": QUERIES,
        "single": args.single,
        "repeats": args.repeats,
        "blas": blas,
        "vector_popcount": scan.use_vector_popcount(True),  # this CPU runs the kernel's AVX-512 build
        "results": results,
    }
    common.report(
        "Retrieval: Hamming recall + re-rank vs exact float search",
        table(results),
        payload,
        args.out,
        command,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
