"""Candidate exports: one per-batch path for files, HTTP and Ray; the Ray Data engine against one process
on a bundle of Gowalla's shape, with a real local Ray (2 workers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from support import make_bundle

from hashrec.index.bundle import load_bundle
from hashrec.index.candidates import candidates_for, iter_batches, to_arrow, write_candidates
from hashrec.index.ray_export import ACTORS, SUCCESS
from hashrec.index.retriever import Retriever

HASHREC = str(Path(sys.executable).with_name("hashrec"))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    return Retriever(
        load_bundle(make_bundle(tmp_path_factory.mktemp("b"), n_users=120, n_items=300, bits=32))
    )


def test_rows_are_the_retrievers_answers(small: Retriever) -> None:
    users = np.arange(0, 120, 7)
    cb = candidates_for(small, users, 40)
    recs = small.recommend([str(u) for u in small.bundle.users.raw[users]], 40, 40)
    for r, rec in enumerate(recs):
        assert rec is not None
        m = int(cb.lengths[r])
        assert cb.items[r, :m].tolist() == rec.items and cb.hamming[r, :m].tolist() == rec.hamming
        np.testing.assert_array_equal(cb.scores[r, :m], np.asarray(rec.scores, np.float32))
    table = to_arrow(cb)
    assert table.column("user").to_pylist() == cb.users
    assert [len(x) for x in table.column("items").to_pylist()] == cb.lengths.tolist()


@pytest.mark.parametrize("suffix", [".ndjson", ".parquet"])
def test_file_export_round_trip_and_atomicity(small: Retriever, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"c{suffix}"
    assert write_candidates(small, out, None, 25, batch=16, progress=False) == 120
    if suffix == ".ndjson":
        rows = [json.loads(x) for x in out.read_text().splitlines()]
    else:
        rows = pq.read_table(out).to_pylist()
    first = next(iter_batches(small, None, 25, batch=1))
    assert (
        rows[0]["user"] == first.users[0] and rows[0]["items"] == first.items[0, : first.lengths[0]].tolist()
    )
    assert [r["user"] for r in rows] == [str(u) for u in small.bundle.users.raw]
    # a failure half-way leaves nothing under the name, and no temporary file behind
    bad = tmp_path / f"broken{suffix}"
    with pytest.raises(IndexError):  # an internal user id out of range, met in the second batch
        write_candidates(small, bad, np.array([0, 10_000]), 25, batch=1, progress=False)
    assert not bad.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_ray_export_equals_one_process_on_gowallas_shape(tmp_path: Path) -> None:
    """29,858 users x 40,981 items (seeded random vectors): 2 Ray actors write what one process writes."""
    bundles = make_bundle(
        tmp_path / "b", n_users=29_858, n_items=40_981, bits=64, seen_per_user=27, foldin=False
    )
    one = tmp_path / "one.parquet"
    r = subprocess.run(
        [
            HASHREC,
            "export-candidates",
            "--bundles",
            str(bundles),
            "--out",
            str(one),
            "--candidates",
            "50",
            "--batch",
            "2048",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "ray"
    r = subprocess.run(
        [
            HASHREC,
            "export-candidates",
            "--bundles",
            str(bundles),
            "--out",
            str(out),
            "--candidates",
            "50",
            "--engine",
            "ray",
            "--workers",
            "2",
            "--batch",
            "2048",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert (out / SUCCESS).exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".ray")]
    a = pq.read_table(one).sort_by("user").to_pylist()
    b = pq.read_table(out).sort_by("user").to_pylist()  # the directory: files in any order
    assert len(b) == 29_858 and len({x["user"] for x in b}) == 29_858  # every user exactly once
    assert a == b  # items, scores and distances, bit for bit
    actors = json.loads((out / ACTORS).read_text())
    # two actors ran (how the batches split between them is up to Ray's scheduling and the machine's load)
    assert len(actors) == 2 and sum(x["batches"] for x in actors) == -(-29_858 // 2048)
    # each actor maps the bundle and holds one batch: its peak memory stays far below the bundle's size
    # times the actors (stated in docs/benchmarks.md; the bound here is loose for a busy machine)
    assert all(x["peak_rss_mb"] < 1500 for x in actors), actors
    assert summary["users"] == 29_858
    # an export never replaces another
    r = subprocess.run(
        [HASHREC, "export-candidates", "--bundles", str(bundles), "--out", str(out), "--engine", "ray"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "already exists" in r.stderr
