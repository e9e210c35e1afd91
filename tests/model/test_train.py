"""Training end to end on tiny synthetic data: config errors, run dirs, determinism, resume after SIGKILL,
and quality against popularity in the three retrieval modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hashrec.data import DataConfig, Dataset
from hashrec.data.codes import to_bits, unpack
from hashrec.data.synthetic import SyntheticConfig, generate, write_csv
from hashrec.index.retriever import Retriever
from hashrec.model.baselines import popularity_topk
from hashrec.model.config import ConfigError, TrainConfig
from hashrec.model.distributed import Dist
from hashrec.model.evaluate import score_modes
from hashrec.model.metrics import recall_ndcg
from hashrec.model.phase import Budget, Context, Outcome, _plan
from hashrec.model.run import RunError, load_run
from hashrec.model.train import read_selection, train

HASHREC = str(Path(sys.executable).with_name("hashrec"))


def tiny(data: DataConfig, preset: str = "default", **kw: object) -> TrainConfig:
    """A config that trains in about a second on the tiny synthetic data."""
    base: dict[str, object] = dict(
        progress=False, threads=1, valid_every=1, valid_users=0, select_candidates=50, tune=()
    )
    if preset == "default":
        # tau 0.1: the default's 0.05 is tuned for Gowalla's hierarchical recall and gives weak Hamming-only
        # codes on this tiny data (measured: Hamming Recall@20 0.22 vs 0.40 at 0.1).
        base.update(batch_size=1024, shared_negatives=256, epochs=6, softmax_tau=0.1)
    else:
        # lr 0.01: with the paper's 1e-3 a randomly initialised GraphSAGE needs far more steps than a tiny
        # dataset has in a few epochs.
        base.update(batch_size=256, epochs=4, lr=0.01)
    base.update(kw)
    return TrainConfig.preset_config(preset, data, **base)


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = SyntheticConfig(n_users=300, n_items=200, n_communities=6, mean_interactions=15, seed=3)
    return write_csv(generate(cfg), tmp_path_factory.mktemp("small") / "interactions.csv")


# -- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "kw"),
    [
        ("preset", {"preset": "fastest"}),
        ("bits", {"bits": 12}),
        ("bits", {"bits": 0}),
        ("lr", {"lr": -1.0}),
        ("pure_ste_at", {"pure_ste_at": 1.0}),
        ("encoder", {"encoder": "gat"}),
        ("no_such_field", {"no_such_field": 3}),
        ("select_candidates", {"select_candidates": 5}),
        ("cont_tau", {"cont_tau": 0.0}),
        ("cont_weight", {"cont_weight": -1.0}),
        ("code_tau", {"code_tau": 0.0}),
        ("code_tau", {"code_tau": True}),
        ("bit_reg", {"bit_reg": -0.5}),
        ("tune", {"tune": ("bits=32",)}),
        ("tune", {"tune": ("epochs=3",)}),
        ("tune", {"tune": ("softmax_tau=-1",)}),
        ("tune", {"tune": ("softmax_tau",)}),
        ("tune", {"tune": ("no_such_field=3",)}),
        ("tune_max_min", {"tune_max_min": -1.0}),
        ("serve_both", {"serve_both": "maybe"}),
        ("refit", {"refit": 1}),
    ],
)
def test_bad_config_names_the_field(field: str, kw: dict[str, object], tmp_path: Path) -> None:
    data = DataConfig(path=str(tmp_path))
    preset = str(kw.pop("preset", "default"))
    with pytest.raises(ConfigError, match=rf"^{field}"):
        TrainConfig.preset_config(preset, data, **kw)


def test_cli_bad_preset_fails_before_training(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    p = subprocess.run(
        [HASHREC, "train", "--data", str(small_csv), "--out", str(out), "--preset", "best"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert "preset" in p.stderr and "best" in p.stderr
    assert not out.exists()
    p = subprocess.run(
        [HASHREC, "train", "--data", str(small_csv), "--out", str(out), "--bits", "20"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "bits" in p.stderr


def test_existing_run_dir_is_not_overwritten(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    cfg = tiny(DataConfig(path=str(small_csv)), epochs=1)
    with pytest.raises(RunError, match="exists"):
        train(cfg, out)
    assert (out / "precious.txt").read_text() == "keep me"
    train(cfg, out, force=True)
    assert not (out / "precious.txt").exists()
    assert (out / "embeddings.npz").exists()


# -- determinism, layout, resume -------------------------------------------------------------------------


def _strip_times(recs: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    drop = {"elapsed_s", "epoch_s", "edges_per_s"}
    out = []
    for r in recs:
        r = {k: v for k, v in r.items() if k not in drop}
        if r.get("valid"):
            r["valid"] = {k: v for k, v in r["valid"].items() if k != "seconds"}
        out.append(r)
    return out


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_same_seed_same_run(preset: str, small_csv: Path, tmp_path: Path) -> None:
    cfg = tiny(DataConfig(path=str(small_csv)), preset, epochs=3)
    a, b = load_run(train(cfg, tmp_path / "a")), load_run(train(cfg, tmp_path / "b"))
    assert np.array_equal(a.user_z, b.user_z) and np.array_equal(a.item_z, b.item_z)
    assert _strip_times(a.metrics) == _strip_times(b.metrics)
    c = load_run(train(cfg.replace(seed=1), tmp_path / "c"))
    assert not np.array_equal(a.item_z, c.item_z)


def test_run_dir_layout_and_load_run(small_csv: Path, tmp_path: Path) -> None:
    cfg = tiny(DataConfig(path=str(small_csv)), epochs=2, bits=16)
    out = train(cfg, tmp_path / "run")
    for name in (
        "config.json",
        "dataset",
        "last.pt",
        "best.pt",
        "metrics.jsonl",
        "curves.png",
        "embeddings.npz",
        "refit.pt",
        "selection.json",
        "valid_embeddings.npz",
    ):
        assert (out / name).exists(), name
    run = load_run(out)
    assert run.config == cfg
    assert run.dataset.fingerprint() == Dataset.load(out / "dataset").fingerprint()
    assert run.user_z.shape == (run.dataset.n_users, 16) and run.item_z.dtype == np.float32
    assert float(np.abs(run.user_z).max()) < 1.0
    sel = read_selection(out)
    assert sel is not None and 1 <= sel["best_epoch"] <= 2 and sel["refit"]["done"]
    # the selection's epochs with their validation, then the refit's, as many as the selected epoch
    assert [(r["phase"], r["epoch"]) for r in run.metrics] == [("select", 1), ("select", 2)] + [
        ("refit", e) for e in range(1, sel["best_epoch"] + 1)
    ]
    for key in ("losses", "valid", "elapsed_s", "code_prob"):
        assert key in run.metrics[0]
    assert "valid" not in run.metrics[-1]  # the refit trains on the validation edges: nothing to validate
    assert run.foldin is not None
    u = 5
    r = Retriever.from_arrays(
        run.user_z,
        run.item_z,
        foldin=run.foldin,
        item_ids=run.dataset.items.to_raw(range(run.dataset.n_items)),
    )
    new = r.encode_new([run.dataset.items.to_raw(run.dataset.graph("train").items_of(u))])
    # fold-in ignores the user's own ID embedding, so it approximates the trained code of a known user
    assert float(np.mean(unpack(new.codes)[0] == to_bits(run.user_z[u : u + 1])[0])) > 0.6
    assert float(np.mean(np.sign(new.vectors[0]) == np.sign(run.user_vectors[u]))) > 0.6


def test_a_refit_run_serves_the_refit_and_the_selected_model_together(
    small_csv: Path, tmp_path: Path
) -> None:
    cfg = tiny(DataConfig(path=str(small_csv)), epochs=2, bits=16)
    both = load_run(train(cfg, tmp_path / "both"))
    alone = load_run(train(cfg.replace(serve_both=False), tmp_path / "alone"))  # the same training
    d = cfg.rerank_dim
    assert both.user_vectors.shape == (both.dataset.n_users, 2 * d)
    assert both.item_vectors.shape == (both.dataset.n_items, 2 * d)
    assert alone.user_vectors.shape[1] == d
    # first half and codes: the refit model's, as served alone
    assert np.array_equal(both.user_z, alone.user_z) and np.array_equal(both.item_z, alone.item_z)
    assert np.array_equal(both.user_vectors[:, :d], alone.user_vectors)
    assert np.array_equal(both.item_vectors[:, :d], alone.item_vectors)
    # second half: another model (the selected one, trained without the validation edges)
    assert not np.allclose(both.item_vectors[:, d:], alone.item_vectors, atol=1e-3)
    assert both.foldin is not None and both.foldin.vector_weight.shape[0] == 2 * d
    # --split valid keeps scoring the selected model alone, over the training graph
    assert load_run(both.path, "valid_embeddings.npz").user_vectors.shape[1] == d


def test_checkpoint_from_another_config_is_refused(small_csv: Path, tmp_path: Path) -> None:
    data = DataConfig(path=str(small_csv))
    out = train(tiny(data, epochs=1), tmp_path / "run")
    with pytest.raises(RunError, match=r"another config.*bits"):
        train(tiny(data, epochs=1, bits=32), out, resume=True)


def _cli(out: Path, csv: Path, *extra: str) -> list[str]:
    return [
        HASHREC,
        "train",
        "--data",
        str(csv),
        "--out",
        str(out),
        "--threads",
        "1",
        "--no-progress",
        "--time-budget",
        "0",  # no budget: a resumed run must then end exactly as an unbroken one
        "--epochs",
        "8",
        "--set",
        "patience=0",
        "--set",
        "batch_size=256",
        "--set",
        "shared_negatives=64",
        "--set",
        "valid_every=8",  # one validation, at the end: epoch 8 is selected, so the refit runs 8 epochs too
        "--set",
        "select_candidates=50",
        "--set",
        'tune=["lr=0.02"]',  # one settings-search candidate after the run's own
        *extra,
    ]


def _untimed_selection(run_dir: Path) -> dict:  # type: ignore[type-arg]
    sel = read_selection(run_dir)
    assert sel is not None
    for c in sel["candidates"]:
        del c["seconds"]
    return sel


@pytest.mark.parametrize(("phase", "candidate"), [("select", 0), ("select", 1), ("refit", 0)])
def test_resume_after_sigkill_continues_exactly(
    phase: str, candidate: int, small_csv: Path, tmp_path: Path
) -> None:
    """Killed in any phase or search candidate, ``--resume`` ends exactly as an unbroken run (no budget)."""
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_cli(killed, small_csv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            path = killed / "metrics.jsonl"
            records = (
                [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]
                if path.exists()
                else []
            )
            mine = [r for r in records if r["phase"] == phase]
            if sum(phase == "refit" or r["candidate"] == candidate for r in mine) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("training finished before it could be killed: make the run longer")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(killed / "last.pt", weights_only=False)
    # metrics.jsonl gets its line just before last.pt is replaced, so a kill between the two leaves the
    # checkpoint one epoch behind the metrics (resume truncates the extra line): both states are valid.
    assert ckpt["phase"] == phase and (phase == "refit" or ckpt["candidate"] == candidate)
    assert not (killed / "embeddings.npz").exists()
    # --resume continues from the checkpoint; without a time budget it ends exactly as an unbroken run
    p = subprocess.run(_cli(killed, small_csv, "--resume"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"resumed the {ckpt['phase']} phase after epoch {ckpt['outcome']['epochs']}" in p.stderr
    subprocess.run(_cli(clean, small_csv), check=True, capture_output=True, timeout=300)
    a, b = load_run(killed), load_run(clean)
    assert [(r["phase"], r["candidate"]) for r in a.metrics].count(("select", 1)) == 8
    assert _strip_times(a.metrics) == _strip_times(b.metrics)
    assert np.array_equal(a.item_z, b.item_z) and np.array_equal(a.user_vectors, b.user_vectors)
    assert _untimed_selection(killed) == _untimed_selection(clean)
    out = json.loads(p.stdout)
    assert out["run_dir"] == str(killed)


# -- quality ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_trained_model_beats_popularity_in_all_modes(
    preset: str, synth_dataset: Dataset, tmp_path: Path
) -> None:
    assert synth_dataset.config is not None
    # the paper preset's raw inner products (its official code's) learn slowly from few steps: more epochs
    # at a smaller rate, and a lower bar, still far above an untrained model (about 0.05 here). 40 epochs,
    # not 30: on this Intel Xeon (it passed on AMD EPYC) 30 epochs selected an epoch with weak continuous scores (Recall@20
    # 0.27 against a bar of 0.31; 40 epochs: 0.42 / Hamming 0.40 / hierarchical 0.44), the float paths
    # differ between CPU families and 30 left no margin
    kw = dict(epochs=6) if preset == "default" else dict(epochs=40, lr=0.005)
    margin = 1.5 if preset == "default" else 1.3
    run = load_run(train(tiny(synth_dataset.config, preset, bits=32, **kw), tmp_path / "run"))
    ds = run.dataset
    known = ds.graph("known").user_items
    truth = ds.graph("test").user_items
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    r = Retriever.from_arrays(
        run.user_z, run.item_z, known, user_vectors=run.user_vectors, item_vectors=run.item_vectors
    )
    got = score_modes(r, truth, users, 20, [60])
    pop = recall_ndcg(popularity_topk(known, 20, users), truth[users], 20)["recall"]
    for mode in ("continuous", "hamming", "hierarchical"):
        assert got[f"{mode}_recall"] > margin * pop, (mode, got, pop)


def test_early_stopping_waits_for_pure_codes(small_csv: Path, tmp_path: Path) -> None:
    # patience 1 would stop at the first validation without improvement; it must not stop before the
    # schedule has reached pure STE (code probability 1)
    cfg = tiny(DataConfig(path=str(small_csv)), epochs=10, patience=1, lr=0.05)
    recs = [r for r in load_run(train(cfg, tmp_path / "run")).metrics if r["phase"] == "select"]
    assert recs[-1]["code_prob"] == 1.0
    first_pure = next(r["epoch"] for r in recs if r["code_prob"] == 1.0)
    assert all(r["code_prob"] < 1.0 for r in recs if r["epoch"] < first_pure)


# -- the settings search ---------------------------------------------------------------------------------


def test_settings_search_serves_the_validation_winner_with_its_settings(
    small_csv: Path, tmp_path: Path
) -> None:
    # the run's own settings barely train (lr 1e-5); the candidate trains properly and has another re-rank
    # width, so serving it with the run's own settings would fail to load (or give 64-wide vectors)
    cfg = tiny(DataConfig(path=str(small_csv)), epochs=3, lr=1e-5, tune=("lr=0.01,rerank_dim=32",))
    out = train(cfg, tmp_path / "run")
    sel = read_selection(out)
    assert sel is not None and sel["search"] == "all 2 candidate(s) trained"
    first, second = sel["candidates"]
    assert first["tune"] == "" and second["tune"] == "lr=0.01,rerank_dim=32"
    assert second["best_value"] > first["best_value"] and sel["winner"] == 1
    assert sel["tune"] == second["tune"] and sel["best_epoch"] == second["best_epoch"]
    assert sel["refit"]["done"] and sel["refit"]["epochs"] == second["best_epoch"]
    best = torch.load(out / "best.pt", weights_only=False)
    refit = torch.load(out / "refit.pt", weights_only=False)
    assert (best["candidate"], best["epoch"]) == (1, second["best_epoch"]) and refit["candidate"] == 1
    run = load_run(out)
    assert run.user_vectors is not None and run.item_vectors is not None
    # both served models (refit and selected) are the winner's: two 32-wide halves
    assert run.item_vectors.shape[1] == 64 and run.user_vectors.shape[1] == 64
    assert load_run(out, "valid_embeddings.npz").user_vectors.shape[1] == 32
    assert run.config == cfg  # the run's config is kept as asked; selection.json says what won
    records = [(r["phase"], r["candidate"], r["epoch"]) for r in run.metrics]
    assert records == [("select", c, e) for c in (0, 1) for e in (1, 2, 3)] + [
        ("refit", 1, e) for e in range(1, second["best_epoch"] + 1)
    ]


def test_settings_search_keeps_the_first_when_no_candidate_beats_it(small_csv: Path, tmp_path: Path) -> None:
    cfg = tiny(DataConfig(path=str(small_csv)), epochs=2, tune=("lr=1e-6",))
    out = train(cfg, tmp_path / "run")
    sel = read_selection(out)
    assert sel is not None and sel["winner"] == 0 and len(sel["candidates"]) == 2
    assert sel["candidates"][0]["best_value"] > sel["candidates"][1]["best_value"]
    assert torch.load(out / "best.pt", weights_only=False)["candidate"] == 0  # never replaced by a loser


def test_settings_search_is_skipped_when_one_candidate_takes_too_long(
    small_csv: Path, tmp_path: Path
) -> None:
    cfg = tiny(DataConfig(path=str(small_csv)), epochs=1, tune=("lr=0.02",), tune_max_min=0.0)
    sel = read_selection(train(cfg, tmp_path / "run"))
    assert sel is not None and len(sel["candidates"]) == 1
    assert sel["search"].startswith("one candidate took") and "tune_max_min" in sel["search"]


def test_time_budget_plans_the_schedule_and_is_never_overrun(small_csv: Path, tmp_path: Path) -> None:
    budget_s = 12.0
    cfg = tiny(DataConfig(path=str(small_csv)), epochs=500, time_budget_min=budget_s / 60)
    out = train(cfg, tmp_path / "run")
    run, sel = load_run(out), read_selection(out)
    assert sel is not None and sel["stopped"].startswith("time budget")
    select = [r for r in run.metrics if r["phase"] == "select"]
    # the plan shrank to what the time holds, so the schedule ran to its end instead of being cut off
    assert select[-1]["planned_epochs"] < 500 and select[-1]["epoch"] <= select[-1]["planned_epochs"]
    assert sel["progress_at_epoch"][-1] > 0.5
    assert run.metrics[-1]["elapsed_s"] <= budget_s  # selection, validation and refit all inside it


def _plan_after(
    outcome: Outcome, budget_s: float, elapsed: float, refit_edges: float = 0.0, **kw: object
) -> int:
    budget = Budget(budget_s, start=time.perf_counter() - elapsed)
    ctx = Context(
        TrainConfig(DataConfig(path="-")), None, torch.device("cpu"), Dist(), Path("."), budget, refit_edges
    )  # type: ignore[arg-type]
    _plan(ctx, outcome, 10, **kw)  # type: ignore[arg-type]
    return outcome.planned


def test_the_plan_prices_the_latest_epoch_and_grows_only_before_pure_ste() -> None:
    out = Outcome(epochs=1, train_s=[200.0])
    assert _plan_after(out, 1000.0, 190.0, epoch_s=200.0, valid_s=0.0, grow=True) == 5  # 1 + 810 // 200
    out.epochs, out.train_s = 2, [200.0, 100.0]  # the second epoch was cheaper (its heads on pure STE)
    assert _plan_after(out, 1000.0, 290.0, epoch_s=100.0, valid_s=0.0, grow=False) == 5  # past pure STE: kept
    assert _plan_after(out, 1000.0, 290.0, epoch_s=100.0, valid_s=0.0, grow=True) == 9  # 2 + 710 // 100
    assert _plan_after(out, 1000.0, 950.0, epoch_s=100.0, valid_s=0.0, grow=True) == 2  # never below done


def test_the_plan_leaves_room_for_the_refit_and_the_export() -> None:
    out = Outcome(epochs=1, train_s=[90.0], deadline=500.0)  # the selection's half of a 1000 s budget
    # selection alone would fit 1 + 405 // 100 = 5; with the refit (1.1x the edges) of every planned epoch
    # and two validations of export: 4 (1000 - 95 - 99 - 20 = 786 s left, 199 s per planned epoch)
    assert _plan_after(out, 1000.0, 95.0, 1.1, epoch_s=100.0, valid_s=10.0, grow=True) == 4
    assert _plan_after(out, 1000.0, 95.0, 0.0, epoch_s=100.0, valid_s=10.0, grow=True) == 5


_REALLOCATE = """
import resource, sys
import torch
if sys.argv[1] == "kept":
    from hashrec.model.train import _keep_freed_memory
    _keep_freed_memory()
for _ in range(2):  # warm-up: 128 MB allocated, touched and freed
    torch.ones(32 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(32 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _thp_always() -> bool:
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return thp.exists() and "[always]" in thp.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
@pytest.mark.skipif(
    _thp_always(), reason="huge pages for every mapping: 4 KB faults cannot tell the two apart"
)
def test_the_trainer_reuses_freed_memory_instead_of_faulting_it_in_again() -> None:
    # a 128 MB block is 32,768 pages
    faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", _REALLOCATE, mode], capture_output=True, text=True, check=True
            ).stdout
        )
        for mode in ("default", "kept")
    }
    # each of the 10 re-allocations faults its pages in again by default; kept, at most a block or two does
    # (when a small allocation lands in the freed block, the next 128 MB extends the heap once)
    assert faults["default"] > 10 * 30_000
    assert faults["kept"] * 4 < faults["default"]


def test_a_field_added_later_keeps_old_runs_fingerprints(tmp_path: Path) -> None:
    import hashlib

    from hashrec.model.config import RUNTIME_FIELDS

    cfg = TrainConfig(data=DataConfig(path=str(tmp_path)))
    # what a run from before `rerank_ste` existed recorded: the hash of its fields without it
    old = {k: v for k, v in cfg.to_json().items() if k != "rerank_ste" and k not in RUNTIME_FIELDS}
    assert cfg.fingerprint() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert cfg.replace(rerank_ste=False).fingerprint() != cfg.fingerprint()
