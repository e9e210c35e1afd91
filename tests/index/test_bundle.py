"""Bundles: round trip, refusal of damaged bundles (naming the file), atomic publish, pruning, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from support import random_z

from hashrec.data import Dataset
from hashrec.index.bundle import (
    CURRENT,
    FORMAT_VERSION,
    BundleError,
    list_versions,
    load_bundle,
    resolve_bundle_dir,
)
from hashrec.index.publish import build_bundle, prune, publish
from hashrec.index.retriever import Retriever
from hashrec.model.export import export_run


@pytest.fixture()
def bundle_dir(tmp_path: Path, run_dir: Path) -> Path:
    """A bundles directory holding one exported version of ``run_dir``."""
    out = tmp_path / "bundles"
    export_run(run_dir, out)
    return out


def test_round_trip_same_arrays_and_answers(run_dir: Path, bundle_dir: Path, synth_dataset: Dataset) -> None:
    b = load_bundle(bundle_dir)
    emb = np.load(run_dir / "embeddings.npz")
    np.testing.assert_array_equal(b.user_vectors, emb["user_z"])  # one head: the vectors are z
    np.testing.assert_array_equal(b.item_vectors, emb["item_z"])
    assert b.users == synth_dataset.users and b.items == synth_dataset.items
    known = synth_dataset.graph("known").user_items
    assert (b.seen != (known != 0)).nnz == 0
    np.testing.assert_array_equal(b.popularity, synth_dataset.item_popularity())
    assert b.manifest["dataset_fingerprint"] == synth_dataset.fingerprint()
    assert b.manifest["format_version"] == FORMAT_VERSION and b.bits == 32
    assert b.foldin is not None and b.foldin.power == pytest.approx(0.5)
    assert not isinstance(b.user_vectors, np.memmap)
    assert isinstance(load_bundle(bundle_dir, mmap=True).user_vectors, np.memmap)  # memory-mapped when asked
    # same answers as an in-memory Retriever over the same arrays
    mem = Retriever.from_arrays(
        emb["user_z"], emb["item_z"], known, user_ids=list(b.users.raw), item_ids=list(b.items.raw)
    )
    users = [str(u) for u in b.users.raw[:50]]
    assert Retriever(b).recommend(users, 10, 50) == mem.recommend(users, 10, 50)


def test_float16_bundle_is_served_as_float32(tmp_path: Path, run_dir: Path) -> None:
    path = export_run(run_dir, tmp_path / "b16", dtype="float16")
    b = load_bundle(path)
    assert b.item_vectors.dtype == np.float32 and b.manifest["vector_dtype"] == "float16"
    emb = np.load(run_dir / "embeddings.npz")
    np.testing.assert_allclose(b.item_vectors, emb["item_z"], atol=1e-3)
    assert np.load(path / "item_vectors.npy", mmap_mode="r").dtype == np.float16


def _version(bundle_dir: Path) -> Path:
    return resolve_bundle_dir(bundle_dir)


def test_corrupted_file_is_refused_naming_it(bundle_dir: Path) -> None:
    v = _version(bundle_dir)
    data = bytearray((v / "item_vectors.npy").read_bytes())
    data[-5] ^= 0xFF
    (v / "item_vectors.npy").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"item_vectors\.npy: sha256 does not match"):
        load_bundle(bundle_dir)


def test_truncated_file_without_checksums_still_refused(bundle_dir: Path) -> None:
    v = _version(bundle_dir)
    raw = (v / "user_codes.npy").read_bytes()
    (v / "user_codes.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BundleError, match=r"user_codes\.npy"):
        load_bundle(bundle_dir, verify_checksums=False)


def test_wrong_checksum_in_manifest_is_refused(bundle_dir: Path) -> None:
    v = _version(bundle_dir)
    m = json.loads((v / "manifest.json").read_text())
    m["files"]["popularity.npy"] = "0" * 64
    (v / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"popularity\.npy: sha256 does not match"):
        load_bundle(v)


def test_missing_file_is_refused(bundle_dir: Path) -> None:
    v = _version(bundle_dir)
    (v / "items.faissbin").unlink()
    with pytest.raises(BundleError, match=r"items\.faissbin: missing"):
        load_bundle(v)


def test_other_format_version_is_refused(bundle_dir: Path) -> None:
    v = _version(bundle_dir)
    m = json.loads((v / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (v / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"manifest\.json: bundle format version 3 is not supported"):
        load_bundle(v)
    m["format_version"] = 1  # the format before re-rank vectors were their own arrays
    (v / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"version 1 is not supported .* export the run again"):
        load_bundle(v)


def test_version_must_be_the_directory_name(bundle_dir: Path) -> None:
    v = _version(bundle_dir)
    copy = v.parent / (v.name[:-1] + ("0" if v.name[-1] != "0" else "1"))
    v.rename(copy)
    with pytest.raises(BundleError, match="is not its directory's name"):
        load_bundle(copy)


def test_unlisted_file_is_refused(bundle_dir: Path) -> None:
    """Every file the loader reads must be in the manifest's checksums."""
    v = _version(bundle_dir)
    m = json.loads((v / "manifest.json").read_text())
    del m["files"]["popularity.npy"]
    (v / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"popularity\.npy: read by the loader but not listed"):
        load_bundle(v)


def test_nan_vectors_are_refused(bundle_dir: Path) -> None:
    v = _version(bundle_dir)
    a = np.load(v / "item_vectors.npy")
    a[3, 1] = np.inf
    np.save(v / "item_vectors.npy", a)
    with pytest.raises(BundleError, match=r"item_vectors\.npy: contains NaN or infinite values"):
        load_bundle(v, verify_checksums=False)


def test_shape_mismatch_is_refused(bundle_dir: Path) -> None:
    v = _version(bundle_dir)
    m = json.loads((v / "manifest.json").read_text())
    m["counts"]["items"] += 1
    (v / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"item_codes\.npy: shape .* does not match the manifest"):
        load_bundle(v, verify_checksums=False)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle"):
        resolve_bundle_dir(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="neither a bundle version"):
        load_bundle(tmp_path / "empty")


def test_bad_inputs_are_refused(tmp_path: Path, synth_dataset: Dataset) -> None:
    z = random_z(10, 16, 0)
    with pytest.raises(ValueError, match="dataset has 600 users"):
        build_bundle(tmp_path, user_z=z, item_z=z, dataset=synth_dataset)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_bundle(tmp_path, user_z=z[:, :12], item_z=z[:, :12])
    with pytest.raises(ValueError, match="index parameter 'nprob'"):
        build_bundle(tmp_path, user_z=z, item_z=z, index_type="ivf", index_params={"nprob": 3})
    bad = z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_bundle(tmp_path, user_z=bad, item_z=z)
    assert list_versions(tmp_path) == []  # nothing half-written was left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_keep_prunes_old_versions_never_current(tmp_path: Path) -> None:
    out = tmp_path / "b"
    paths = [
        build_bundle(out, user_z=random_z(5, 8, s), item_z=random_z(7, 8, s + 100), keep=2) for s in range(4)
    ]
    assert list_versions(out) == [p.name for p in paths[-2:]]
    assert resolve_bundle_dir(out) == paths[-1].resolve()
    # point current back at the older one (a rollback): pruning to 1 keeps the newest and the current
    publish(out, paths[-2].name)
    assert prune(out, 1) == []
    assert list_versions(out) == [p.name for p in paths[-2:]]
    publish(out, paths[-1].name)
    assert prune(out, 1) == [paths[-2].name]
    with pytest.raises(BundleError, match="not a bundle version"):
        publish(out, "nope")


def test_atomic_publish_reader_sees_old_or_new_never_a_mix(tmp_path: Path) -> None:
    """A reader loading `current` in a loop while versions are published and pruned never fails."""
    out = tmp_path / "b"
    n_pub = 12

    def make(s: int) -> Path:
        uz, iz = random_z(40, 16, s), random_z(300, 16, s + 1000)
        uz[0, 0] = iz[0, 0] = float(s)  # marker: every array of one version carries the same number
        return build_bundle(out, user_z=uz, item_z=iz, model_version=f"m{s}", keep=2)

    make(0)
    seen_markers: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                b = load_bundle(out)
                marker = int(b.user_vectors[0, 0])
                assert int(b.item_vectors[0, 0]) == marker
                assert b.manifest["model_version"] == f"m{marker}"
                seen_markers.append(marker)
            except BaseException as err:  # the test's point: nothing may escape
                errors.append(err)
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for s in range(1, n_pub):
            make(s)
    finally:
        stop.set()
        t.join(timeout=60)
    assert not errors, errors[0]
    assert seen_markers and seen_markers == sorted(seen_markers)  # never goes back to an older version
    assert len(list_versions(out)) == 2
    assert os.readlink(out / CURRENT) == list_versions(out)[-1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # the installed entry point (as users run it; `python -m hashrec.cli` would duplicate the module)
        [str(Path(sys.executable).parent / "hashrec"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_export_and_verify(tmp_path: Path, run_dir: Path) -> None:
    out = tmp_path / "cli"
    r = _cli("export", str(run_dir), "--out", str(out), "--index", "ivf", "--index-param", "nprobe=4")
    assert r.returncode == 0, r.stderr
    vdir = Path(r.stdout.strip())
    assert vdir.parent == out and (vdir / "manifest.json").is_file()
    r = _cli("bundle", "verify", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["index"]["type"] == "ivf" and summary["index"]["params"]["nprobe"] == 4
    assert summary["users"] == 600 and summary["self_check"]["users_checked"] == 8
    # damage it: verify exits 1 and names the file
    (vdir / "seen_indices.npy").write_bytes(b"garbage")
    r = _cli("bundle", "verify", str(out))
    assert r.returncode == 1
    assert "seen_indices.npy: sha256 does not match" in r.stderr


def test_cli_export_bad_input_exit_2(tmp_path: Path, run_dir: Path) -> None:
    r = _cli("export", str(tmp_path / "missing-run"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "missing-run" in r.stderr
    r = _cli("export", str(run_dir), "--out", str(tmp_path / "o"), "--index-param", "nlist")
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr
