"""The `hashrec data ...` commands, run as a user would (a real subprocess)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path


def hashrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hashrec", *args], capture_output=True, text=True, timeout=120
    )


def test_stats_on_gzipped_lightgcn_folder(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "train.txt.gz", "wt") as fh:
        fh.write("0 1 2 3\n1 0 2\n2 3 4\n")
    (tmp_path / "test.txt").write_text("0 4\n1 1\n2 0\n")
    out = hashrec("data", "stats", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert (stats["users"], stats["items"], stats["train"], stats["test"]) == (3, 5, 7, 3)
    assert stats["interactions_per_s"] > 0  # the load rate of issue 14, from Dataset.stats()


def test_stats_human_table_and_threshold(tmp_path: Path) -> None:
    p = tmp_path / "u.data"
    p.write_text("1\t10\t5\t1\n1\t11\t2\t2\n2\t10\t4\t3\n2\t12\t1\t4\n3\t11\t5\t5\n")
    out = hashrec("data", "stats", str(p), "--min-rating", "4")
    assert out.returncode == 0, out.stderr
    assert "5 before rating >= 4" in out.stdout
    assert "interactions   3" in out.stdout


def test_bad_line_exits_2_with_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("1,2,5\n1,3,oops\n")
    out = hashrec("data", "stats", str(p))
    assert out.returncode == 2
    assert "r.csv:2: expected a numeric rating" in out.stderr
    assert "Traceback" not in out.stderr


def test_synth_then_stats(tmp_path: Path) -> None:
    csv = tmp_path / "s.csv"
    assert (
        hashrec("data", "synth", str(csv), "--users", "50", "--items", "40", "--communities", "4").returncode
        == 0
    )
    out = hashrec("data", "stats", str(csv), "--json")
    assert json.loads(out.stdout)["users"] == 50


def test_every_subcommand_has_help() -> None:
    out = hashrec("--help")
    assert out.returncode == 0
    for cmd in ("data", "train", "evaluate", "export", "bundle", "serve", "export-candidates", "demo"):
        assert cmd in out.stdout
        assert hashrec(cmd, "--help").returncode == 0
