"""``hashrec evaluate``: JSON shape, reports, the three modes against brute-force references, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from hashrec.cli import main
from hashrec.data import Dataset
from hashrec.data.codes import distances, pack
from hashrec.index.retriever import Retriever
from hashrec.logs import setup_logging
from hashrec.model.baselines import svd_embeddings
from hashrec.model.config import TrainConfig
from hashrec.model.evaluate import EvalConfig, evaluate_arrays, rank_modes
from hashrec.model.run import save_config

BITS = 16


def make_run(ds: Dataset, out: Path, bits: int = BITS) -> Path:
    """A run directory as training leaves it (config, dataset/, embeddings.npz over the known graph and
    valid_embeddings.npz over the training graph), with SVD embeddings."""
    out.mkdir(parents=True)
    assert ds.config is not None
    save_config(out, TrainConfig.preset_config("default", ds.config, bits=bits))
    ds.save(out / "dataset")
    for name, graph in (("embeddings.npz", "known"), ("valid_embeddings.npz", "train")):
        u, v = svd_embeddings(ds.graph(graph).user_items, bits)  # type: ignore[arg-type]
        # scale so that tanh keeps the ranking information (z must look like the hash layer's outputs)
        s = 1.0 / float(np.abs(v).max())
        np.savez(out / name, user_z=np.tanh(u * s), item_z=np.tanh(v * s))
    return out


@pytest.fixture(scope="module")
def run_dir(synth_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(synth_dataset, tmp_path_factory.mktemp("runs") / "svd")


def arrays(run: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(run / "embeddings.npz") as z:
        return z["user_z"].astype(np.float32), z["item_z"].astype(np.float32)


def test_cli_json_shape_and_reports(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", str(run_dir), "--json", "--no-progress", "--candidates", "100,50,400"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    rows = out["rows"]
    assert [(r["mode"], r["candidates"]) for r in rows] == [
        ("continuous", None),
        ("hamming", None),
        ("hierarchical", 50),
        ("hierarchical", 100),
        ("hierarchical", 400),
    ]
    for r in rows:
        assert r["k"] == 20
        assert 0.0 <= r["recall"] <= 1.0 and 0.0 <= r["ndcg"] <= 1.0
    assert out["users"] > 0 and out["bits"] == BITS and out["items"] == 400
    assert set(out["timing"]) >= {"continuous_s", "hamming_stage_s", "rerank_s", "total_s"}
    # the continuous model must be much better than chance on planted data (an untrained/broken run is not)
    assert rows[0]["recall"] > 0.3
    assert json.loads((run_dir / "eval.json").read_text())["rows"] == rows
    md = (run_dir / "eval.md").read_text()
    assert "| hierarchical | 400 |" in md
    assert (run_dir / "eval_recall_vs_c.png").read_bytes()[:4] == b"\x89PNG"


def test_hierarchical_with_all_items_equals_continuous(run_dir: Path, synth_dataset: Dataset) -> None:
    user_z, item_z = arrays(run_dir)
    known = synth_dataset.graph("known").user_items
    truth = synth_dataset.graph("test").user_items
    res = evaluate_arrays(
        user_z, item_z, known, truth, EvalConfig(candidates=(synth_dataset.n_items,), progress=False)
    )
    cont, hier = res["rows"][0], res["rows"][2]
    assert hier["candidates"] == synth_dataset.n_items
    assert hier["recall"] == cont["recall"] and hier["ndcg"] == cont["ndcg"]
    assert hier["overlap_at_k"] == 1.0
    users = np.flatnonzero(np.diff(truth.indptr))
    tops, _ = rank_modes(Retriever.from_arrays(user_z, item_z, known), users, 20, [synth_dataset.n_items])
    np.testing.assert_array_equal(tops[f"hierarchical@{synth_dataset.n_items}"], tops["continuous"])


def test_hamming_and_hierarchical_match_brute_force(run_dir: Path, synth_dataset: Dataset) -> None:
    user_z, item_z = arrays(run_dir)
    known = synth_dataset.graph("known").user_items
    users = np.arange(0, synth_dataset.n_users, 7)
    k, c = 20, 60
    tops, _ = rank_modes(Retriever.from_arrays(user_z, item_z, known), users, k, [c, 200], batch_size=33)
    dist = distances(
        pack(user_z[users])[:, None, :], pack(item_z)[None, :, :]
    )  # byte-wise popcount reference
    scores = user_z[users] @ item_z.T
    dense_known = known.toarray() != 0
    ties = 0
    for row, u in enumerate(users):
        allowed = [i for i in range(synth_dataset.n_items) if not dense_known[u, i]]
        by_code = sorted(allowed, key=lambda i: (dist[row, i], i))
        assert tops["hamming"][row].tolist() == by_code[:k]
        ties += int(dist[row, by_code[k - 1]] == dist[row, by_code[k]])
        pool = by_code[:c]
        want = sorted(pool, key=lambda i: (-scores[row, i], i))[:k]
        got = tops[f"hierarchical@{c}"][row].tolist()
        assert sorted(got) == sorted(want)  # the same set; order may differ only on float near-ties
        assert np.all(np.diff(scores[row, got]) <= 1e-6)
    assert ties > 0  # the tie rule was actually exercised


def test_valid_split_writes_separate_reports(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "evaluate",
        str(run_dir),
        "--split",
        "valid",
        "--no-progress",
        "--candidates",
        "50",
        "--index",
        "ivf",
    ]
    assert main(argv) == 0
    assert "| hierarchical | 50 |" in capsys.readouterr().out
    saved = json.loads((run_dir / "eval_valid.json").read_text())
    assert saved["split"] == "valid" and saved["index_type"] == "ivf"
    assert "FAISS ivf index" in (run_dir / "eval_valid.md").read_text()


def test_bad_input_is_refused_with_a_clear_message(
    run_dir: Path, synth_dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The CLI's first set-up in a process replaces the root handlers (pytest's capture handler with them):
    # do that first, then attach the capture handler again, so the test passes whichever test ran before.
    setup_logging()
    logging.getLogger().addHandler(caplog.handler)
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in caplog.text

    assert main(["evaluate", str(run_dir), "--candidates", "50,abc"]) == 2
    assert "'abc' is not an integer" in caplog.text
    assert main(["evaluate", str(run_dir), "--candidates", "10"]) == 2
    assert "must be >= k" in caplog.text

    bad = tmp_path / "bad"
    bad.mkdir()
    assert synth_dataset.config is not None
    save_config(bad, TrainConfig.preset_config("default", synth_dataset.config, bits=16))
    synth_dataset.save(bad / "dataset")
    assert main(["evaluate", str(bad)]) == 2
    assert "embeddings.npz: missing" in caplog.text
    np.savez(bad / "embeddings.npz", user_z=np.zeros((3, 16), np.float32), item_z=np.zeros((400, 16)))
    assert main(["evaluate", str(bad)]) == 2
    assert "embeddings.npz: user_z has shape (3, 16), expected (600, K)" in caplog.text
    u = np.zeros((synth_dataset.n_users, 12), np.float32)
    np.savez(bad / "embeddings.npz", user_z=u, item_z=np.zeros((400, 12), np.float32))
    assert main(["evaluate", str(bad)]) == 2
    assert "multiple of 8" in caplog.text
    (bad / "embeddings.npz").write_bytes(b"not a zip")
    assert main(["evaluate", str(bad)]) == 2
    assert "embeddings.npz: cannot read" in caplog.text


def test_data_option_must_match_the_runs_dataset(
    run_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hashrec.data.synthetic import SyntheticConfig, generate, write_csv

    other = write_csv(generate(SyntheticConfig(n_users=600, n_items=400, seed=99)), tmp_path / "o.csv")
    assert main(["evaluate", str(run_dir), "--data", str(other)]) == 2
    assert "fingerprints differ" in caplog.text
