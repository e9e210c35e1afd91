"""Candidate export: the NDJSON stream (complete, well-formed, one version) and the offline command."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from harness import ADMIN_TOKEN, HASHREC, ServerProcess, make_bundle

from hashrec.index.bundle import load_bundle
from hashrec.index.retriever import Retriever
from hashrec.data import Dataset

C = 25


@pytest.fixture(scope="module")
def export_server(bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server computing 64 users per export step (several steps for the 600 test users)."""
    with ServerProcess(
        bundles,
        tmp_path_factory.mktemp("exp") / "server.log",
        HASHREC_EXPORT_BATCH="64",
        HASHREC_ADMIN_TOKEN=ADMIN_TOKEN,
    ).start() as srv:
        yield srv


def stream_rows(url: str, body: dict) -> tuple[dict[str, str], list[dict]]:  # type: ignore[type-arg]
    with httpx.stream("POST", url + "/candidates/export", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [line for line in r.iter_lines() if line]
        return dict(r.headers), [json.loads(line) for line in lines]


def check_rows(rows: list[dict], ref: Retriever, users: list[str], c: int) -> None:  # type: ignore[type-arg]
    assert [row["user"] for row in rows] == users
    refs = ref.recommend(users, c, c)
    for row, rec in zip(rows, refs, strict=True):
        assert set(row) == {"user", "version", "items", "scores", "hamming"}
        assert row["version"] == ref.version
        assert len(row["items"]) == len(row["scores"]) == len(row["hamming"]) == c
        assert row["items"] == rec.items and row["hamming"] == rec.hamming
        np.testing.assert_allclose(row["scores"], rec.scores, rtol=0, atol=0)
        assert all(a >= b for a, b in zip(row["scores"], row["scores"][1:], strict=False))


def test_export_all_users_is_complete_and_well_formed(
    export_server: ServerProcess, synth_dataset: Dataset
) -> None:
    ref = Retriever(load_bundle(export_server.bundles))
    headers, rows = stream_rows(export_server.url, {"users": None, "candidates": C})
    assert headers["x-model-version"] == ref.version and headers["x-total-users"] == "600"
    check_rows(rows, ref, [str(u) for u in synth_dataset.users.raw], C)


def test_export_given_users_in_order(export_server: ServerProcess, synth_dataset: Dataset) -> None:
    ref = Retriever(load_bundle(export_server.bundles))
    users = [str(u) for u in synth_dataset.users.raw[[50, 3, 599, 3]]]
    _h, rows = stream_rows(export_server.url, {"users": users, "candidates": 10})
    check_rows(rows, ref, users, 10)


def test_reload_during_export_keeps_one_version(export_server: ServerProcess, synth_dataset: Dataset) -> None:
    before = Retriever(load_bundle(export_server.bundles)).version
    with httpx.stream(
        "POST", export_server.url + "/candidates/export", json={"candidates": 200}, timeout=30
    ) as r:
        it = r.iter_lines()
        first = json.loads(next(it))
        make_bundle(export_server.bundles, synth_dataset, seed=11)
        rr = httpx.post(
            export_server.url + "/admin/reload",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )
        assert rr.status_code == 200 and rr.json()["changed"]
        rest = [json.loads(line) for line in it if line]
    assert 1 + len(rest) == 600
    assert {first["version"]} | {row["version"] for row in rest} == {before}


def test_offline_export_matches_the_endpoint(
    export_server: ServerProcess, tmp_path: Path, synth_dataset: Dataset
) -> None:
    ref = Retriever(load_bundle(export_server.bundles))
    users = [str(u) for u in synth_dataset.users.raw[:120]]
    users_file = tmp_path / "users.txt"
    users_file.write_text("# user ids\n" + "\n".join(users) + "\n")
    out = tmp_path / "cands.ndjson"
    proc = subprocess.run(
        [
            HASHREC,
            "export-candidates",
            "--bundles",
            str(export_server.bundles),
            "--out",
            str(out),
            "--users",
            str(users_file),
            "--candidates",
            str(C),
            "--batch",
            "50",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    check_rows(rows, ref, users, C)
    _h, served = stream_rows(export_server.url, {"users": users, "candidates": C})
    assert rows == served

    pq = pytest.importorskip("pyarrow.parquet")
    pout = tmp_path / "cands.parquet"
    proc = subprocess.run(
        [
            HASHREC,
            "export-candidates",
            "--bundles",
            str(export_server.bundles),
            "--out",
            str(pout),
            "--candidates",
            str(C),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(pout).to_pylist()
    assert len(table) == 600
    check_rows_parquet = table[:120]
    assert [r["user"] for r in check_rows_parquet] == users
    assert [r["items"] for r in check_rows_parquet] == [r["items"] for r in rows]
    np.testing.assert_allclose(
        [r["scores"] for r in check_rows_parquet], [r["scores"] for r in rows], rtol=1e-6
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--out", "x.csv"], "must end in .ndjson"),
        (["--users", "MISSING"], "cannot read users file"),
        (["--candidates", "0"], "--candidates must be >= 1"),
    ],
)
def test_offline_export_bad_input(bundles: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    argv = [HASHREC, "export-candidates", "--bundles", str(bundles), "--out", str(tmp_path / "o.ndjson")]
    argv += [a if a != "MISSING" else str(tmp_path / "missing.txt") for a in args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert needle in proc.stderr


def test_offline_export_unknown_users_named(bundles: Path, tmp_path: Path) -> None:
    users = tmp_path / "u.txt"
    users.write_text("u000\nnot-a-user\n")
    proc = subprocess.run(
        [
            HASHREC,
            "export-candidates",
            "--bundles",
            str(bundles),
            "--out",
            str(tmp_path / "o.ndjson"),
            "--users",
            str(users),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "not-a-user" in proc.stderr and str(users) in proc.stderr
    assert not (tmp_path / "o.ndjson").exists()


def test_parquet_without_pyarrow_says_how_to_get_it(bundles: Path, tmp_path: Path) -> None:
    import os

    shim = tmp_path / "shim" / "pyarrow"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('pyarrow is not installed (test shim)')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shim")}
    out = tmp_path / "c.parquet"
    proc = subprocess.run(
        [HASHREC, "export-candidates", "--bundles", str(bundles), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2
    assert "hashrec[parquet]" in proc.stderr and not out.exists()
