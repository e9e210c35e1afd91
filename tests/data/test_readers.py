"""Readers: each format, gzip, headers, separators, and malformed lines naming file and line."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from hashrec.data import DataError, DataFormatError
from hashrec.data.readers import read_adjacency_lists, read_delimited, sniff_separator


def write(path: Path, text: str, gz: bool = False) -> Path:
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_adjacency_lists_plain_and_gz(tmp_path: Path, gz: bool) -> None:
    p = write(tmp_path / ("train.txt.gz" if gz else "train.txt"), "0 1 2 3\n1 2\n\n2\n3 0 0\n", gz)
    raw = read_adjacency_lists(p)
    assert raw.users.tolist() == [0, 0, 0, 1, 3, 3]
    assert raw.items.tolist() == [1, 2, 3, 2, 0, 0]
    assert raw.skipped_lines == 1  # the blank line; "2" alone is a user without items


def test_adjacency_bad_token_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path / "train.txt", "0 1 2\n1 x 3\n")
    with pytest.raises(DataFormatError, match=r"train\.txt:2: expected integer ids .* got 'x'"):
        read_adjacency_lists(p)


def test_adjacency_negative_id(tmp_path: Path) -> None:
    p = write(tmp_path / "train.txt", "0 1\n1 -3\n")
    with pytest.raises(DataFormatError, match=r":2: expected non-negative"):
        read_adjacency_lists(p)


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    p = write(tmp_path / "train.txt.gz", "0 1 2\n" * 5000, gz=True)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"train\.txt\.gz: cannot be read"):
        read_adjacency_lists(p)


@pytest.mark.parametrize(
    ("sep", "text"),
    [
        ("\t", "1\t10\t5\t100\n2\t10\t3\t200\n"),
        ("::", "1::10::5::100\n2::10::3::200\n"),
        (",", "1,10,5,100\n2,10,3,200\n"),
        (" ", "1 10 5 100\n2  10 3 200\n"),
    ],
)
def test_delimited_separators_are_sniffed(tmp_path: Path, sep: str, text: str) -> None:
    raw = read_delimited(write(tmp_path / "r.dat", text))
    assert raw.users.tolist() == [1, 2]
    assert raw.items.tolist() == [10, 10]
    assert raw.ratings is not None and raw.ratings.tolist() == [5.0, 3.0]
    assert raw.timestamps is not None and raw.timestamps.tolist() == [100.0, 200.0]
    assert sniff_separator(text.splitlines()[0]) == sep


def test_delimited_header_and_string_ids(tmp_path: Path) -> None:
    p = write(tmp_path / "r.csv", "userId,movieId,rating,timestamp\nalice,m1,4.5,1\nbob,m2,2,2\n")
    raw = read_delimited(p)
    assert raw.users.tolist() == ["alice", "bob"]
    assert raw.items.tolist() == ["m1", "m2"]
    assert raw.ratings is not None and raw.ratings.tolist() == [4.5, 2.0]


def test_header_columns_in_another_order(tmp_path: Path) -> None:
    p = write(tmp_path / "r.csv", "item_id,rating,user_id\nx,5,u1\ny,1,u2\n")
    raw = read_delimited(p)
    assert raw.users.tolist() == ["u1", "u2"] and raw.items.tolist() == ["x", "y"]


def test_leading_zero_ids_stay_strings(tmp_path: Path) -> None:
    raw = read_delimited(write(tmp_path / "r.csv", "007,1\n7,2\n"))
    assert raw.users.tolist() == ["007", "7"]


def test_two_columns_only(tmp_path: Path) -> None:
    raw = read_delimited(write(tmp_path / "r.tsv", "a\tb\nc\td\n"))
    assert raw.ratings is None and raw.timestamps is None and len(raw) == 2


def test_non_numeric_rating_names_line(tmp_path: Path) -> None:
    p = write(tmp_path / "r.csv", "1,2,5\n1,3,five\n")
    with pytest.raises(DataFormatError, match=r"r\.csv:2: expected a numeric rating, got 'five'"):
        read_delimited(p)


def test_short_line_names_line_and_expectation(tmp_path: Path) -> None:
    p = write(tmp_path / "r.csv", "1,2,5\n1,3,4\n7\n")
    with pytest.raises(DataFormatError, match=r"r\.csv:3: expected 3 fields separated by ','"):
        read_delimited(p)


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        read_delimited(write(tmp_path / "e.csv", "\n\n"))
    with pytest.raises(DataError, match="only a header"):
        read_delimited(write(tmp_path / "h.csv", "user,item\n"))


def test_missing_item_column(tmp_path: Path) -> None:
    p = write(tmp_path / "r.csv", "1,2\n")
    with pytest.raises(DataError, match="a user and an item column are required"):
        read_delimited(p, columns=["user", "rating"])


def test_unknown_column_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown column name 'colour'"):
        read_delimited(write(tmp_path / "r.csv", "1,2\n"), columns=["user", "colour"])


def test_explicit_columns_with_skip(tmp_path: Path) -> None:
    raw = read_delimited(write(tmp_path / "r.csv", "x,1,2\ny,3,4\n"), columns=["-", "user", "item"])
    assert raw.users.tolist() == [1, 3] and raw.items.tolist() == [2, 4]


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_bytes(b"1,2\n\xff\xfe,3\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_delimited(p)


def test_ids_are_int64_arrays(tmp_path: Path) -> None:
    raw = read_delimited(write(tmp_path / "r.csv", "1,2\n3,4\n"))
    assert raw.users.dtype == np.int64
