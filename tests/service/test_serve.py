"""``hashrec serve`` as a process: a missing or corrupt bundle, or a bad setting, stops it with the reason
and exit code 2; with two worker processes, an admin reload moves both (a pin, then following `current`)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from support import ADMIN_TOKEN, ServerProcess, free_port, make_bundle
from support.processes import HASHREC

from hashrec.data import Dataset


def serve(bundles: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HASHREC_")}
    full.update({"HASHREC_PORT": str(free_port()), **env})
    return subprocess.run(
        [HASHREC, "serve", "--bundles", str(bundles)], env=full, capture_output=True, text=True, timeout=120
    )


def test_missing_bundles_dir(tmp_path: Path) -> None:
    proc = serve(tmp_path / "nope")
    assert proc.returncode == 2
    assert str(tmp_path / "nope") in proc.stderr and "no such bundle" in proc.stderr


@pytest.mark.parametrize(
    ("victim", "damage", "needle"),
    [
        ("manifest.json", b"{not json", "not valid JSON"),
        ("user_codes.npy", None, "user_codes.npy"),
        ("items.faissbin", b"", "items.faissbin"),
    ],
)
def test_corrupt_bundle(
    tmp_path: Path, synth_dataset: Dataset, victim: str, damage: bytes | None, needle: str
) -> None:
    vdir = make_bundle(tmp_path / "b", synth_dataset, seed=1)
    target = vdir / victim
    if damage is None:
        target.unlink()
    else:
        target.write_bytes(damage)
    proc = serve(tmp_path / "b")
    assert proc.returncode == 2
    assert needle in proc.stderr and "cannot serve" in proc.stderr


def test_bad_setting_names_the_variable(tmp_path: Path, synth_dataset: Dataset) -> None:
    make_bundle(tmp_path / "b", synth_dataset, seed=1)
    proc = serve(tmp_path / "b", HASHREC_MAX_K="0")
    assert proc.returncode == 2 and "max_k" in proc.stderr and "HASHREC_MAX_K" in proc.stderr


def _served(url: str, n: int = 16) -> set[str]:
    """The versions named by ``n`` answers, each on a new connection (so that every worker takes some)."""
    return {httpx.get(url + "/recommend/u000", timeout=30).json()["version"] for _ in range(n)}


def _wait_served(url: str, version: str, timeout_s: float = 90.0) -> None:
    """Wait until every answer names ``version`` (a worker verifies and loads before it switches)."""
    deadline = time.monotonic() + timeout_s
    while (served := _served(url)) != {version}:
        assert time.monotonic() < deadline, f"still serving {served}, expected {version}"
        time.sleep(0.2)


def test_two_workers_follow_an_admin_reload(tmp_path: Path, synth_dataset: Dataset) -> None:
    """A pin reaches both workers; a reload without a version makes both follow `current` again; the
    second answer to the same reload counts both workers on the version."""
    bundles = tmp_path / "b"
    first = make_bundle(bundles, synth_dataset, seed=1).name
    second = make_bundle(bundles, synth_dataset, seed=2).name  # `current`
    env = {"HASHREC_ADMIN_TOKEN": ADMIN_TOKEN, "HASHREC_BUNDLE_POLL_S": "0.2"}
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with ServerProcess(bundles, tmp_path / "server.log", env=env, workers=2).start(timeout=120) as srv:
        assert len(srv.worker_pids()) == 2, srv.log_tail()
        assert _served(srv.url) == {second}
        for body, version in (({"version": first}, first), ({}, second)):
            r = httpx.post(srv.url + "/admin/reload", json=body, headers=auth, timeout=60)
            assert r.status_code == 200 and r.json()["version"] == version and r.json()["workers"] == 2, (
                r.text
            )
            _wait_served(srv.url, version)
            again = httpx.post(srv.url + "/admin/reload", json=body, headers=auth, timeout=60).json()
            assert again["workers_on_version"] == 2 and again["pinned"] == bool(body), again
