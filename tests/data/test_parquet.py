"""Parquet interaction tables: the same ids and splits as the CSV of the same rows, column aliases, and clear
errors (missing columns, nulls, unsupported types, pyarrow not installed)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from hashrec.data import DataError, load_dataset
from hashrec.data.parquet import read_parquet
from hashrec.data.synthetic import SyntheticConfig, generate, write_csv

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def write(path: Path, columns: Mapping[str, object], row_group_size: int | None = None) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_same_dataset_as_the_csv_of_the_same_rows(tmp_path: Path) -> None:
    data = generate(SyntheticConfig(n_users=80, n_items=60, n_communities=4, seed=3))
    csv = write_csv(data, tmp_path / "r.csv")
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:]]
    user, item, rating, ts = (list(col) for col in zip(*rows, strict=True))
    p = write(
        tmp_path / "r.parquet",
        {"userId": user, "movieId": item, "rating": np.array(rating, float), "timestamp": np.array(ts, int)},
        row_group_size=500,  # several chunks
    )
    assert load_dataset(p).fingerprint() == load_dataset(csv).fingerprint()
    raw = read_parquet(p)
    assert raw.users[:2].tolist() == user[:2] and raw.ratings is not None and raw.timestamps is not None


def test_integer_ids_and_the_canonical_integer_rule(tmp_path: Path) -> None:
    raw = read_parquet(
        write(tmp_path / "a.parquet", {"user": [3, 1, 2], "item_id": np.array([7, 8, 9], np.uint16)})
    )
    assert raw.users.dtype == np.int64 and raw.users.tolist() == [3, 1, 2] and raw.items.tolist() == [7, 8, 9]
    assert raw.ratings is None and raw.timestamps is None
    raw = read_parquet(write(tmp_path / "b.parquet", {"user": ["10", "9"], "item": ["007", "7"]}))
    assert raw.users.tolist() == [10, 9]  # canonical integers written as text become ints, as in CSV
    assert raw.items.tolist() == ["007", "7"]  # "007" stays distinct from "7"


def test_dictionary_large_string_and_timestamp_columns(tmp_path: Path) -> None:
    users = pa.array(["b", "a", "b"]).dictionary_encode()
    items = pa.array(["x", "ü", "日本"], type=pa.large_string())
    stamps = pa.array([0, 1_500, 2_000], type=pa.timestamp("ms"))
    raw = read_parquet(write(tmp_path / "d.parquet", {"uid": users, "iid": items, "ts": stamps}))
    assert raw.users.tolist() == ["b", "a", "b"] and raw.items.tolist() == ["x", "ü", "日本"]
    assert raw.timestamps is not None and raw.timestamps.tolist() == [0.0, 1.5, 2.0]


def test_auto_format_by_suffix_and_explicit_format(tmp_path: Path) -> None:
    cols = {"user": ["a", "a", "b", "b"], "item": ["x", "y", "x", "z"]}
    ds = load_dataset(write(tmp_path / "r.pq", cols), test_ratio=0.5, valid_ratio=0.0)
    assert ds.n_users == 2 and ds.n_items == 3
    named = write(tmp_path / "interactions.bin", cols)
    assert (
        load_dataset(named, fmt="parquet", test_ratio=0.5, valid_ratio=0.0).fingerprint() == ds.fingerprint()
    )


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"user": ["a"], "rating": [1.0]},
            r"a user and an item column are required, got columns \['user', 'rating'\]",
        ),
        (
            {"user": ["a", None, None], "item": ["x", "y", "z"]},
            r"column 'user' has 2 missing values \(the first at row 1\)",
        ),
        ({"user": ["a", ""], "item": ["x", "y"]}, r"column 'user': empty id at row 1"),
        (
            {"user": [1.0, 2.0], "item": [1, 2]},
            r"column 'user' has type double; expected integer or string ids",
        ),
        (
            {"user": [1, 2], "item": [1, 2], "rating": ["good", "bad"]},
            r"column 'rating' has type string; expected numbers",
        ),
    ],
)
def test_bad_tables_name_file_and_column(tmp_path: Path, columns: dict[str, object], message: str) -> None:
    p = write(tmp_path / "bad.parquet", columns)
    with pytest.raises(DataError, match=rf"bad\.parquet: {message}"):
        load_dataset(p)


def test_not_parquet_is_a_data_error(tmp_path: Path) -> None:
    p = tmp_path / "fake.parquet"
    p.write_text("user,item\n1,2\n")
    with pytest.raises(DataError, match=r"fake\.parquet: cannot be read as Parquet"):
        read_parquet(p)


def test_without_pyarrow_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write(tmp_path / "r.parquet", {"user": [1], "item": [2]})
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(
        DataError, match=r"r\.parquet: reading Parquet needs pyarrow: pip install 'hashrec\[parquet\]'"
    ):
        load_dataset(p)
