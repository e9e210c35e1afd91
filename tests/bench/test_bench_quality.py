"""``hashrec bench quality`` end to end on synthetic data (into a temporary docs folder), and its targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hashrec.bench.quality import check_targets, run_info
from hashrec.cli import main
from hashrec.model.baselines import svd_embeddings
from hashrec.data import Dataset


def make_run(ds: Dataset, out: Path, preset: str, elapsed: float, epochs: int, done: int) -> Path:
    """A finished run dir: dataset/, embeddings.npz (SVD), config.json and metrics.jsonl."""
    u, v = svd_embeddings(ds.graph("known").user_items, 16)
    s = 1.0 / float(np.abs(v).max())
    out.mkdir(parents=True)
    ds.save(out / "dataset")
    np.savez(out / "embeddings.npz", user_z=np.tanh(u * s), item_z=np.tanh(v * s))
    cfg = {"preset": preset, "continuous": False, "encoder": "lightgcn", "epochs": epochs, "bits": 16}
    (out / "config.json").write_text(json.dumps({"config": cfg}))
    lines = [json.dumps({"epoch": e, "elapsed_s": elapsed * e / done}) for e in range(1, done + 1)]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n{torn")
    return out


def test_bench_quality_end_to_end(
    synth_dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    default = make_run(synth_dataset, tmp_path / "runs" / "d", "default", 90.0, 10, 10)
    paper = make_run(synth_dataset, tmp_path / "runs" / "p", "paper", 30.0, 20, 4)
    docs = tmp_path / "docs"
    assert synth_dataset.config is not None
    argv = ["bench", "quality", "--data", synth_dataset.config.path, "--runs", str(default), str(paper)]
    argv += ["--docs-dir", str(docs), "--svd-dim", "8", "--candidates", "50,100", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [b["model"] for b in out["baselines"]] == ["popularity", "item-item filter", "truncated SVD (8-d)"]
    pop, filt = out["baselines"][0], out["baselines"][1]
    assert filt["recall"] > 1.5 * pop["recall"]  # planted structure: the filter must find it
    run = out["runs"][0]
    assert run["preset"] == "default" and run["train_time_s"] == 90.0 and run["completed"] is True
    assert out["runs"][1]["completed"] is False and out["runs"][1]["epochs_done"] == 4
    assert [r["candidates"] for r in run["eval"]["rows"]] == [None, None, 50, 100]
    names = [t["target"] for t in out["targets"]]
    assert "default: Hamming-only Recall@20 >= 0.130" in names
    paper_t = next(t for t in out["targets"] if t["target"] == "paper preset runs to completion")
    assert paper_t["met"] is False

    saved = json.loads((docs / "results" / "quality.json").read_text())
    assert saved["machine"]["cores"] and saved["baselines"] == out["baselines"]
    md = (docs / "benchmarks.md").read_text()
    assert md.count("<!-- BEGIN quality -->") == 1
    assert "| item-item filter | baseline |" in md and "| d (default) | hierarchical | 16 | 50 |" in md
    assert "![Recall@20 against C](results/quality_recall_vs_c.png)" in md
    assert (docs / "results" / "quality_recall_vs_c.png").read_bytes()[:4] == b"\x89PNG"
    # rerunning replaces the section instead of appending a second one
    assert main([*argv[:-1], "--svd-dim", "0"]) == 0
    assert (docs / "benchmarks.md").read_text().count("<!-- BEGIN quality -->") == 1


def test_bench_quality_refuses_unfinished_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "r").mkdir()
    assert main(["bench", "quality", "--data", str(tmp_path), "--runs", str(tmp_path / "r")]) == 2
    assert "not a finished run directory" in caplog.text


def _run(recall: dict[str, float], ndcg: float, hamming: float, minutes: float) -> dict[str, Any]:
    rows = [{"mode": "continuous", "candidates": None, "recall": recall["cont"], "ndcg": 0.15}]
    rows.append({"mode": "hamming", "candidates": None, "recall": hamming, "ndcg": 0.1})
    for c in (100, 1000, 2000):
        rows.append({"mode": "hierarchical", "candidates": c, "recall": recall[str(c)], "ndcg": ndcg})
    return {
        "run": "x",
        "preset": "default",
        "continuous": False,
        "train_time_s": minutes * 60,
        "eval_wall_s": 20.0,
        "eval": {"rows": rows},
    }


def test_targets_met_and_gaps() -> None:
    good = _run({"cont": 0.170, "100": 0.150, "1000": 0.168, "2000": 0.2}, 0.14, 0.135, 29.0)
    t = {x["target"]: x for x in check_targets([good], [{"model": "item-item filter", "recall": 0.146}])}
    hier = t["default: hierarchical Recall@20 >= 0.160 (C = 1000)"]  # C = 2000 is beyond the target's C
    assert hier["met"] and hier["value"] == 0.168
    assert t["default: hierarchical within 3% of its continuous Recall@20 (relative drop)"]["met"]
    assert t["default: Hamming-only Recall@20 >= 0.130"]["met"]
    assert t["default: training wall time <= 30 min"]["met"]
    assert t["default: hierarchical Recall@20 beats the item-item filter"]["met"]
    goal = t["goal: hierarchical Recall@20 >= 0.180"]
    assert not goal["met"] and goal["gap"] == pytest.approx(0.012)

    bad = _run({"cont": 0.170, "100": 0.120, "1000": 0.150, "2000": 0.2}, 0.10, 0.1, 45.0)
    t = {x["target"]: x for x in check_targets([bad], [])}
    assert t["default: hierarchical Recall@20 >= 0.160 (C = 1000)"]["gap"] == pytest.approx(0.010)
    assert t["default: hierarchical NDCG@20 >= 0.135 (C = 1000)"]["gap"] == pytest.approx(0.035)
    rel = t["default: hierarchical within 3% of its continuous Recall@20 (relative drop)"]
    assert not rel["met"] and rel["value"] == pytest.approx(0.02 / 0.17)
    assert not t["default: training wall time <= 30 min"]["met"]


def test_run_info_reads_a_bare_run(tmp_path: Path) -> None:
    info = run_info(tmp_path)
    assert info["preset"] is None and info["train_time_s"] is None and info["completed"] is None
