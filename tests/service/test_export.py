"""Candidate export: the NDJSON stream in-process (complete, well-formed, ended by its end line, one
version even across a reload, item filters, the token and the cap on concurrent exports) and the offline
command ``hashrec export-candidates`` (the same rows)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import ADMIN_TOKEN, app_client, make_bundle
from support.processes import HASHREC

from hashrec.data import Dataset
from hashrec.index.bundle import load_bundle
from hashrec.index.retriever import Retriever

C = 25


@pytest.fixture(scope="module")
def exporter(bundles: Path) -> Iterator[TestClient]:
    """The app computing 64 users per export step (several steps for the 600 test users)."""
    with app_client(bundles, export_batch=64, admin_token=ADMIN_TOKEN) as c:
        yield c


def stream_rows(
    c: TestClient,
    body: dict,
    unknown: int = 0,
    **kw: object,  # type: ignore[type-arg]
) -> tuple[dict[str, str], list[dict]]:  # type: ignore[type-arg]
    """(headers, rows) of a complete export: the last line is the end line, naming the rows sent (and
    ``unknown`` filter ids)."""
    with c.stream("POST", "/candidates/export", json=body, **kw) as r:  # type: ignore[arg-type]
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
        headers = dict(r.headers)
    *rows, end = lines
    assert end == {
        "end": True,
        "rows": len(rows),
        "version": headers["x-model-version"],
        "unknown_filter_items": unknown,
    }
    return headers, rows


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
    exporter: TestClient, bundles: Path, synth_dataset: Dataset
) -> None:
    ref = Retriever(load_bundle(bundles))
    headers, rows = stream_rows(exporter, {"users": None, "candidates": C})
    assert headers["x-model-version"] == ref.version and headers["x-total-users"] == "600"
    check_rows(rows, ref, [str(u) for u in synth_dataset.users.raw], C)


def test_export_given_users_in_order(exporter: TestClient, bundles: Path, synth_dataset: Dataset) -> None:
    ref = Retriever(load_bundle(bundles))
    users = [str(u) for u in synth_dataset.users.raw[[50, 3, 599, 3]]]
    _h, rows = stream_rows(exporter, {"users": users, "candidates": 10})
    check_rows(rows, ref, users, 10)


def test_reload_during_export_keeps_one_version(
    bundles: Path, tmp_path: Path, synth_dataset: Dataset
) -> None:
    """A reload while a stream is half sent: the stream finishes on the version it started with."""
    own = tmp_path / "bundles"  # this test publishes a version: not in the module's shared directory
    make_bundle(own, synth_dataset, seed=1)
    before = Retriever(load_bundle(own)).version
    with app_client(own, export_batch=64, admin_token=ADMIN_TOKEN) as c:
        with c.stream("POST", "/candidates/export", json={"candidates": 200}) as r:
            it = r.iter_lines()
            first = json.loads(next(it))
            make_bundle(own, synth_dataset, seed=11)  # published: the new `current`
            rr = c.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert rr.status_code == 200 and rr.json()["changed"]
            *rest, end = [json.loads(line) for line in it if line]
        after = c.get("/readyz").json()["version"]
    assert 1 + len(rest) == 600 and end["rows"] == 600 and end["version"] == before
    assert {first["version"]} | {row["version"] for row in rest} == {before} and after != before


def test_item_filters_apply_to_every_row(exporter: TestClient, bundles: Path, synth_dataset: Dataset) -> None:
    ref = Retriever(load_bundle(bundles))
    users = [str(u) for u in synth_dataset.users.raw[:30]]
    exclude = ["i001", "i002", "i003", "no-such-item"]
    include = [f"i{j:03d}" for j in range(0, 400, 3)]  # i003 is in both: excluded wins
    body = {"users": users, "candidates": 10, "exclude_items": exclude, "include_items": include}
    _h, rows = stream_rows(exporter, body, unknown=1)
    ex, _ = ref.item_index(exclude)
    inc, _ = ref.item_index(include)
    expected = ref.recommend(users, 10, 10, exclude_items=ex, include_items=inc)
    assert [row["items"] for row in rows] == [rec.items for rec in expected if rec is not None]
    served = {item for row in rows for item in row["items"]}
    assert served <= set(include) - set(exclude) and len(served) > 10


def test_export_token(bundles: Path) -> None:
    token = "export-token-0123456789"
    with app_client(bundles, export_token=token) as c:
        r = c.post("/candidates/export", json={"users": ["u000"]})
        assert r.status_code == 401 and r.json()["error"]["field"] == "header.authorization"
        assert r.headers["www-authenticate"] == "Bearer"
        _h, rows = stream_rows(c, {"users": ["u000"]}, headers={"Authorization": f"Bearer {token}"})
        assert [row["user"] for row in rows] == ["u000"]
        assert c.get("/recommend/u000").status_code == 200  # the export token guards the export only


def test_concurrent_exports_are_capped(bundles: Path) -> None:
    """Past ``max_exports`` streams, 503 with Retry-After at once; the slot frees when a stream ends."""
    with app_client(bundles, max_exports=1, export_batch=16, retry_after_s=3) as c:
        with c.stream("POST", "/candidates/export", json={"candidates": 50}) as first:
            assert first.status_code == 200
            lines = first.iter_lines()
            next(lines)  # streaming now
            r = c.post("/candidates/export", json={"users": ["u000"]})
            assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_exports"
            assert r.headers["retry-after"] == "3"
            assert c.get("/recommend/u000").status_code == 200  # online requests are not held up
            *_rows, end = [json.loads(line) for line in lines if line]
            assert end["end"] and end["rows"] == 600
        _h, rows = stream_rows(c, {"users": ["u000"]})
        assert len(rows) == 1


def test_offline_export_matches_the_endpoint(
    exporter: TestClient, bundles: Path, tmp_path: Path, synth_dataset: Dataset
) -> None:
    ref = Retriever(load_bundle(bundles))
    users = [str(u) for u in synth_dataset.users.raw[:120]]
    users_file = tmp_path / "users.txt"
    users_file.write_text("# user ids\n" + "\n".join(users) + "\n")
    out = tmp_path / "cands.ndjson"
    proc = subprocess.run(
        [
            HASHREC,
            "export-candidates",
            "--bundles",
            str(bundles),
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
    _h, served = stream_rows(exporter, {"users": users, "candidates": C})
    assert rows == served

    pq = pytest.importorskip("pyarrow.parquet")
    pout = tmp_path / "cands.parquet"
    proc = subprocess.run(
        [
            HASHREC,
            "export-candidates",
            "--bundles",
            str(bundles),
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
