"""Start-up: a missing or corrupt bundle, or a bad setting, stops ``hashrec serve`` with the reason."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from harness import HASHREC, free_port, make_bundle

from hashrec.data import Dataset


def serve(bundles: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HASHREC_")}
    full.update({"HASHREC_PORT": str(free_port()), **env})
    return subprocess.run(
        [HASHREC, "serve", "--bundles", str(bundles)], env=full, capture_output=True, text=True, timeout=60
    )


def test_missing_bundles_dir(tmp_path: Path) -> None:
    proc = serve(tmp_path / "nope")
    assert proc.returncode == 2
    assert str(tmp_path / "nope") in proc.stderr and "no such bundle" in proc.stderr


@pytest.mark.parametrize(
    ("victim", "damage", "needle"),
    [
        ("manifest.json", b"{not json", "not valid JSON"),
        ("user_z.npy", None, "user_z.npy"),
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
