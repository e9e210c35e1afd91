"""Distributed training with torchrun (2 processes, gloo, this machine's CPU): each known way for a DDP run
to go wrong, checked for real."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hashrec.data.synthetic import SyntheticConfig, generate, write_csv
from hashrec.model.run import load_run
from hashrec.model.sampling import epoch_batches
from hashrec.model.train import read_selection

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
WORKER = str(Path(__file__).with_name("ddp_worker.py"))


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = SyntheticConfig(n_users=300, n_items=200, n_communities=6, mean_interactions=15, seed=3)
    return write_csv(generate(cfg), tmp_path_factory.mktemp("ddp") / "interactions.csv")


def torchrun(*args: str) -> list[str]:
    # a free rendezvous port of its own: tests may run beside other torchrun jobs
    return [TORCHRUN, "--standalone", "--nproc-per-node=2", *args]


def train_cmd(out: Path, csv: Path, *extra: str) -> list[str]:
    return torchrun(
        "-m",
        "hashrec",
        "train",
        "--data",
        str(csv),
        "--out",
        str(out),
        "--no-progress",
        "--time-budget",
        "0",
        "--epochs",
        "4",
        "--set",
        "batch_size=512",
        "--set",
        "shared_negatives=64",
        "--set",
        "select_candidates=50",
        "--set",
        "tune=[]",
        *extra,
    )


def _untimed(records: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    """Metrics records without their wall times (which differ between any two runs)."""
    out = []
    for m in records:
        m = {k: v for k, v in m.items() if not k.endswith("_s")}
        if m.get("valid"):
            m["valid"] = {k: v for k, v in m["valid"].items() if k != "seconds"}
        out.append(m)
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, deepest first (found through /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))

    def kill(p: int) -> None:
        for c in children.get(p, []):
            kill(c)
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)

    kill(pid)


def why(r: subprocess.CompletedProcess[str]) -> str:
    """A failed torchrun's story: every line that names a cause (a rank's own error is often far above
    the tail, which torchrun fills with its summary), then the tail."""
    causes = [
        ln for ln in r.stderr.splitlines() if any(w in ln for w in ("Error", "error", "malloc", "terminate"))
    ]
    return "\n".join([*causes[:40], "...", r.stderr[-2000:]])


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_edge_once_and_equal_steps(world: int) -> None:
    n, batch = 1003, 100
    per_rank = [epoch_batches(n, batch, np.random.default_rng(5), r, world) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
    edges = np.concatenate([np.concatenate(b) for b in per_rank])
    assert np.array_equal(np.sort(edges), np.arange(n))  # every edge exactly once
    # a step's global batch is one process's batch: the parts of step s together are its edges
    one = epoch_batches(n, batch, np.random.default_rng(5))
    for s, idx in enumerate(one):
        assert np.array_equal(np.sort(np.concatenate([b[s] for b in per_rank])), np.sort(idx))
    assert all(len(b[s]) > 0 for b in per_rank for s in range(len(b)))


@pytest.mark.parametrize("mode", ["sync", "bypass", "sage"])
def test_replicas_stay_equal_only_through_the_ddp_forward(mode: str, csv: Path, tmp_path: Path) -> None:
    """Ranks start from different seeds; through DDP their parameters are equal after every epoch. A loss
    computed around DDP trains diverging replicas with no error from torch: the trainer's check catches it.
    ``sage``: GraphSAGE's sparse ID tables, which the trainer broadcasts and reduces itself, over ~300 steps
    (two sparse all-reduces in flight at once aborted such a run within a few thousand steps)."""
    out = tmp_path / mode
    out.mkdir()
    r = run(torchrun(WORKER, mode, str(out), str(csv)))
    assert r.returncode == 0, why(r)
    results = [(out / f"rank{k}.txt").read_text() for k in (0, 1)]
    if mode != "bypass":
        assert results == [f"ok {3 if mode == 'sage' else 2}\n"] * 2
    else:
        assert all(
            x.startswith("error select phase: the replicas' parameters differ after epoch 1") for x in results
        )


def test_two_processes_train_a_run_like_one(csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    r = run(train_cmd(out, csv, "--set", 'tune=["lr=0.02"]'))  # with the settings search
    assert r.returncode == 0, why(r)
    # threads per process = cores / processes on this node, said once (rank 0 alone logs at INFO)
    cores = len(os.sched_getaffinity(0))
    assert r.stderr.count(f"{max(1, cores // 2)} thread(s) x 2 process(es)") == 1
    run_ = load_run(out)
    sel = read_selection(out)
    assert sel is not None and sel["refit"]["done"] and len(sel["candidates"]) == 2
    # only rank 0 wrote: one record per epoch, candidate and phase, not two
    phases = [(m["phase"], m["candidate"], m["epoch"]) for m in run_.metrics]
    assert phases == [("select", c, e) for c in (0, 1) for e in range(1, 5)] + [
        ("refit", sel["winner"], e) for e in range(1, sel["best_epoch"] + 1)
    ]
    assert run_.user_z.shape[0] == run_.dataset.n_users
    # the run directory works with evaluate and export like any other
    r = run([str(Path(sys.executable).with_name("hashrec")), "evaluate", str(out), "--json", "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"][0]["recall"] > 0.1
    r = run(
        [str(Path(sys.executable).with_name("hashrec")), "export", str(out), "--out", str(tmp_path / "b")]
    )
    assert r.returncode == 0, r.stderr


def test_graphsage_sparse_gradients_and_unused_parameters(csv: Path, tmp_path: Path) -> None:
    """The paper preset: sparse ID-embedding gradients through gloo, hop layers unused by one side."""
    r = run(
        train_cmd(tmp_path / "sage", csv, "--preset", "paper", "--set", "epochs=2", "--set", "batch_size=256")
    )
    assert r.returncode == 0, why(r)
    assert len(load_run(tmp_path / "sage").metrics) == 2


def test_time_budget_is_decided_once_and_no_rank_hangs(csv: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = run(train_cmd(tmp_path / "budget", csv, "--epochs", "200", "--time-budget", "0.1"), timeout=300)
    assert r.returncode == 0, why(r)
    assert time.monotonic() - t0 < 240  # both ranks stopped at rank 0's word (a hang would time out)
    assert (tmp_path / "budget" / "embeddings.npz").exists()


def test_only_rank_zero_deletes_with_force(csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "forced"
    out.mkdir()
    (out / "old.txt").write_text("a previous run")
    r = run(train_cmd(out, csv, "--epochs", "1", "--force"))
    assert r.returncode == 0, why(r)
    assert not (out / "old.txt").exists() and (out / "embeddings.npz").exists()
    # a refused start is refused on every rank, with one message, and no rank hangs
    r = run(train_cmd(out, csv, "--epochs", "1"), timeout=300)
    assert r.returncode != 0 and "exists and is not empty" in r.stderr


def test_kill_after_an_epoch_then_resume_equals_an_unbroken_run(csv: Path, tmp_path: Path) -> None:
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    extra = ("--set", "valid_every=4")  # selection at epoch 4: the refit runs 4 epochs too
    proc = subprocess.Popen(
        train_cmd(killed, csv, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            path = killed / "metrics.jsonl"
            if path.exists() and len(path.read_text().splitlines()) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("training finished before it could be killed")
            time.sleep(0.05)
        _kill_tree(proc.pid)  # the workers first (torchrun starts them in sessions of their own), then it
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
    r = run(train_cmd(killed, csv, *extra, "--resume"))
    assert r.returncode == 0, why(r)
    assert "resumed the select phase after epoch" in r.stderr
    assert run(train_cmd(clean, csv, *extra)).returncode == 0
    a, b = load_run(killed), load_run(clean)
    assert _untimed(a.metrics) == _untimed(b.metrics)
    assert np.array_equal(a.item_z, b.item_z) and np.array_equal(a.user_vectors, b.user_vectors)
