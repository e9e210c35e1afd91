"""load_dataset: id maps, duplicates, thresholds, splits without leakage, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hashrec.data import DataConfig, DataError, Dataset, IdMap, load_dataset


def pairs(users: np.ndarray, items: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(users.tolist(), items.tolist(), strict=True))


@pytest.fixture()
def lightgcn_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    train, test = [], []
    for u in range(50):
        items = rng.choice(80, size=12, replace=False)
        train.append(f"{u} " + " ".join(map(str, items[:9])))
        test.append(f"{u} " + " ".join(map(str, items[9:])))
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    # one test line with an unseen user (99) and one with an unseen item (999)
    (tmp_path / "test.txt").write_text("\n".join(test) + "\n99 1 2\n0 999\n")
    return tmp_path


def test_given_split_counts_and_unseen_ids_dropped_with_count(lightgcn_dir: Path) -> None:
    ds = load_dataset(lightgcn_dir)
    assert ds.n_users == 50
    assert len(ds.train) + len(ds.valid) == 50 * 9
    assert len(ds.test) == 50 * 3
    assert ds.report["test_dropped_unseen_user"] == 2
    assert ds.report["test_dropped_unseen_item"] == 1
    # integer ids keep their value as internal ids
    assert ds.users.raw[7] == "7" and ds.users.get("7") == 7


def test_stats_report_the_load_rate(lightgcn_dir: Path, tmp_path: Path) -> None:
    ds = load_dataset(lightgcn_dir)
    assert ds.interactions_read == 50 * 12 + 3  # both files, before unseen ids are dropped
    stats = ds.stats()
    assert ds.load_seconds is not None and stats["load_seconds"] == round(ds.load_seconds, 3)
    assert stats["interactions_per_s"] == round(603 / ds.load_seconds)
    ds.save(tmp_path / "saved")
    assert "interactions_per_s" not in Dataset.load(tmp_path / "saved").stats()  # not loaded from files


def test_no_leakage_between_splits(lightgcn_dir: Path) -> None:
    ds = load_dataset(lightgcn_dir, valid_ratio=0.2, seed=3)
    tr, va, te = (pairs(p.users, p.items) for p in (ds.train, ds.valid, ds.test))
    assert not tr & va and not tr & te and not va & te
    assert len(ds.valid) > 0
    # every user keeps at least one training interaction
    assert set(np.unique(ds.train.users).tolist()) == set(range(ds.n_users))


def test_random_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lines = [f"u{u},i{i},{rng.integers(1, 6)}" for u in range(40) for i in rng.choice(60, 15, replace=False)]
    p = tmp_path / "r.csv"
    p.write_text("\n".join(lines) + "\n")
    a = load_dataset(p, test_ratio=0.2, seed=5)
    b = load_dataset(p, test_ratio=0.2, seed=5)
    c = load_dataset(p, test_ratio=0.2, seed=6)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert len(a.test) == 40 * 3  # round(0.2 * 15) per user
    tr, va, te = (pairs(x.users, x.items) for x in (a.train, a.valid, a.test))
    assert not tr & te and not va & te and not tr & va
    assert len(tr | va | te) == 600


def test_temporal_leave_last_out(tmp_path: Path) -> None:
    p = tmp_path / "r.tsv"
    rows = []
    for u in range(5):
        for t, i in enumerate(range(u, u + 6)):
            rows.append(f"{u}\t{i}\t5\t{1000 + t}")
    rows.append("9\t1\t5\t5")  # a user with a single interaction keeps it in train
    p.write_text("\n".join(rows) + "\n")
    ds = load_dataset(p, split="temporal", leave_out=2, valid_ratio=0.0)
    test = pairs(ds.test.users, ds.test.items)
    expect = {(ds.users.get(str(u)), ds.items.get(str(i))) for u in range(5) for i in (u + 4, u + 5)}
    assert test == expect
    assert ds.users.get("9") in ds.train.users


def test_temporal_needs_timestamps(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("1,2\n1,3\n")
    with pytest.raises(DataError, match="needs a timestamp column"):
        load_dataset(p, split="temporal")


def test_duplicates_removed_and_counted(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("a,x\na,x\na,y\nb,x\nb,y\nb,z\n")
    ds = load_dataset(p, valid_ratio=0.0, test_ratio=0.3)
    assert ds.report["duplicates_removed"] == 1
    assert len(ds.known) + len(ds.test) == 5


def test_rating_threshold(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("a,x,5\na,y,1\nb,x,4\nb,z,4\nb,y,2\n")
    ds = load_dataset(p, min_rating=4, valid_ratio=0.0, test_ratio=0.3)
    assert ds.report["train_below_min_rating"] == 2
    assert len(ds.known) + len(ds.test) == 3
    with pytest.raises(DataError, match="no rating column"):
        q = tmp_path / "q.csv"
        q.write_text("a,x\n")
        load_dataset(q, min_rating=4)


def test_kcore(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    # users a,b,c all have items x,y; user d has only item w (and w only d): the 2-core drops d and w
    p.write_text("a,x\na,y\nb,x\nb,y\nc,x\nc,y\nd,w\n")
    ds = load_dataset(p, kcore=2, valid_ratio=0.0, test_ratio=0.4)
    assert ds.n_users == 3 and ds.n_items == 2
    assert ds.report["kcore_removed"] == 1
    assert "d" not in ds.users and "w" not in ds.items


def test_missing_paths_and_bad_config(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match=r"must hold train\.txt"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="test_ratio"):
        DataConfig(path="x", test_ratio=1.5)
    with pytest.raises(DataError, match="split"):
        DataConfig(path="x", split="weird")  # type: ignore[arg-type]


def test_split_given_without_test_file(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("1,2\n")
    with pytest.raises(DataError, match="needs a test file"):
        load_dataset(p, split="given")


def test_explicit_test_file_for_delimited(tmp_path: Path) -> None:
    (tmp_path / "base").write_text("1\t1\t5\t1\n1\t2\t5\t1\n2\t1\t5\t1\n2\t3\t5\t1\n")
    (tmp_path / "test").write_text("1\t3\t5\t1\n2\t2\t5\t1\n3\t1\t5\t1\n")
    ds = load_dataset(tmp_path / "base", test_path=str(tmp_path / "test"), valid_ratio=0.0)
    assert len(ds.test) == 2 and ds.report["test_dropped_unseen_user"] == 1


def test_idmap_round_trip() -> None:
    m, internal = IdMap.factorize(np.array(["b", "a", "c", "a"]))
    assert m.to_raw(internal) == ["b", "a", "c", "a"]
    assert m.to_internal(["c", "zz"]).tolist() == [2, -1]
    ints, idx = IdMap.factorize(np.array(["10", "9", "100"]))
    assert list(ints.raw) == ["9", "10", "100"] and idx.tolist() == [1, 0, 2]  # numeric order
    with pytest.raises(IndexError):
        m.to_raw([5])


def test_save_load_round_trip_and_tamper(tmp_path: Path, synth_dataset: Dataset) -> None:
    synth_dataset.save(tmp_path / "ds")
    back = Dataset.load(tmp_path / "ds")
    assert back.fingerprint() == synth_dataset.fingerprint()
    assert back.users == synth_dataset.users and back.config == synth_dataset.config
    meta = (tmp_path / "ds" / "dataset.json").read_text().replace(back.fingerprint(), "0" * 64)
    (tmp_path / "ds" / "dataset.json").write_text(meta)
    with pytest.raises(DataError, match="fingerprint mismatch"):
        Dataset.load(tmp_path / "ds")
