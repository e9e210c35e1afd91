"""The vectorised readers: same results as the line-by-line reference, bad lines named through the fast path,
block boundaries invisible, and no Python call per interaction (the robust form of the 1M/s rate check;
the rate itself is measured by benchmarks/data_loading.py)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hashrec.data import DataError, DataFormatError, lineparse, load_dataset, textio
from hashrec.data import bytescan as bs
from hashrec.data.readers import RawInteractions, read_adjacency_lists, read_delimited

IDS = ["0", "7", "12", "007", "-3", "u1", "abc", "é", "日本", "x_y"]
NUMBERS = ["5", "4.5", "-1", "3.", ".5", "0.25", "881250949", "1e3", "nan", "+2", "123456789012345678"]


def as_lists(raw: RawInteractions) -> tuple[object, ...]:
    cols = (raw.users, raw.items, raw.ratings, raw.timestamps)
    return (
        *[None if c is None else (c.dtype.kind, np.asarray(c).astype(str).tolist()) for c in cols],
        raw.skipped_lines,
    )


def outcome(read: Callable[[], RawInteractions]) -> tuple[object, ...]:
    try:
        return as_lists(read())
    except DataError as err:
        return ("error", str(err))


def spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[textio.TextBlock]:
    """Record the blocks given to the line-by-line parser ``lineparse.<name>``."""
    blocks: list[textio.TextBlock] = []
    real = getattr(lineparse, name)

    def recording(path: Path, block: textio.TextBlock, *rest: Any) -> lineparse.BlockPart:
        blocks.append(block)
        return real(path, block, *rest)

    monkeypatch.setattr(lineparse, name, recording)
    return blocks


def line_by_line(monkeypatch: pytest.MonkeyPatch, read: Callable[[], RawInteractions]) -> tuple[object, ...]:
    """The outcome of ``read`` with every block declared not plain: the reference parsers do all the work."""
    with monkeypatch.context() as m:
        m.setattr(bs, "is_plain", lambda data: False)
        return outcome(read)


def random_delimited(rng: np.random.Generator, sep: str) -> tuple[str, bool]:
    """A valid file, and whether every number in it is plain (so the vectorised path reads all of it)."""
    ncols = int(rng.integers(2, 5))
    lines = [sep.join(["user_id", "item_id", "rating", "ts"][:ncols])] if rng.random() < 0.3 else []
    numbers = NUMBERS if rng.random() < 0.2 else NUMBERS[:7]  # sometimes spellings only float() reads
    for _ in range(int(rng.integers(1, 60))):
        fields = [str(rng.choice(IDS)) for _ in range(2)] + [
            str(rng.choice(numbers)) for _ in range(ncols - 2)
        ]
        pad = " " if sep != " " and rng.random() < 0.2 else ""
        line = sep.join(pad + f + pad for f in fields)
        if len(lines) > 1:  # the first data line decides the columns: keep it plain
            line = str(rng.choice([line] * 8 + ["", "   ", "# a comment", line + sep + "extra"]))
        lines.append(line)
    return "\n".join(lines) + str(rng.choice(["", "\n", "\r\n"])), numbers is not NUMBERS


@pytest.mark.parametrize("seed", range(40))
def test_delimited_vectorised_equals_line_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    sep = [",", "\t", "::", ";", "|", " ", " ; "][seed % 7]
    p = tmp_path / "r.csv"
    text, plain = random_delimited(rng, sep)
    p.write_text(text)
    kw: dict[str, Any] = {"sep": sep} if seed % 2 else {}
    monkeypatch.setattr(textio, "BLOCK_BYTES", int(rng.choice([16, 100, 1 << 20])))
    fallbacks = spy(monkeypatch, "delimited_block")
    fast = outcome(lambda: read_delimited(p, **kw))
    assert fast[0] != "error"  # the generated files are valid
    assert not plain or not fallbacks  # plain files never need the line-by-line parser
    assert fast == line_by_line(monkeypatch, lambda: read_delimited(p, **kw))


@pytest.mark.parametrize("seed", range(20))
def test_adjacency_vectorised_equals_line_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(int(rng.integers(1, 50))):
        ids = rng.integers(0, 10 ** int(rng.integers(1, 18)), int(rng.integers(1, 12)))
        lines.append(str(rng.choice([" ", "\t", "  "])).join(map(str, ids)))
        lines.append(str(rng.choice(["", "  ", "# 1 2 x"] + [""] * 3)))
    p = tmp_path / "train.txt"
    p.write_text("\n".join(lines))
    monkeypatch.setattr(textio, "BLOCK_BYTES", int(rng.choice([8, 64, 1 << 20])))
    fallbacks = spy(monkeypatch, "adjacency_block")
    fast = outcome(lambda: read_adjacency_lists(p))
    assert fast[0] != "error" and not fallbacks
    assert fast == line_by_line(monkeypatch, lambda: read_adjacency_lists(p))


def big_csv(path: Path, n: int, bad_line: int | None = None, bad: str = "1,2,x") -> Path:
    rows = [f"u{k % 997},i{k % 1009},{k % 5 + 1},{1_600_000_000 + k}" for k in range(n)]
    if bad_line is not None:
        rows[bad_line - 2] = bad  # line 1 is the header
    path.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("u1,i1,x,5", "expected a numeric rating, got 'x'"),
        ("u1,i1,5", "expected 4 fields separated by ','"),
        ("u1,,5,5", "expected non-empty user and item ids"),
        ("u1,i1,5,2020-01-01", "expected a numeric timestamp, got '2020-01-01'"),
    ],
)
def test_first_bad_line_of_a_big_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str, message: str
) -> None:
    p = big_csv(tmp_path / "big.csv", 300_000, bad_line=234_567, bad=bad)
    assert p.stat().st_size > 3 * textio.BLOCK_BYTES  # several blocks: the bad one is not the first
    slow_blocks = spy(monkeypatch, "delimited_block")
    with pytest.raises(DataFormatError, match=rf"big\.csv:234567: {message}") as err:
        read_delimited(p)
    assert err.value.line == 234_567
    # only the block holding the bad line was parsed again line by line
    assert len(slow_blocks) == 1 and slow_blocks[0].first_line <= 234_567 < slow_blocks[0].first_line + 10**5


def test_first_bad_token_of_a_big_adjacency_file_is_named(tmp_path: Path) -> None:
    lines = [f"{u} " + " ".join(str((u * 7 + k) % 5000) for k in range(20)) for u in range(60_000)]
    lines[45_678] = "45678 1 2 -3 4"
    lines[50_000] = "50000 1 x"
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"train\.txt:45679: expected non-negative integer ids"):
        read_adjacency_lists(tmp_path / "train.txt")


def test_block_size_does_not_change_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = big_csv(tmp_path / "r.csv", 5_000)
    text = p.read_text().replace("\n", "\r\n", 100).replace("\n", "\n# comment\n\n", 50)
    p.write_text(text)
    whole = as_lists(read_delimited(p))
    for size in (1, 37, 4096):
        monkeypatch.setattr(textio, "BLOCK_BYTES", size)
        assert as_lists(read_delimited(p)) == whole


def test_line_endings_are_universal_newlines(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_bytes(b"1,2,5\r\n3,4,5\r5,6,5\n\r7,8,x\n")  # a lone \r ends a line, as in Python's text files
    with pytest.raises(DataFormatError, match=r"r\.csv:5: expected a numeric rating, got 'x'"):
        read_delimited(p)
    p.write_bytes(b"1,2\r\n3,4\r5,6\n\r7,8")
    raw = read_delimited(p)
    assert raw.users.tolist() == [1, 3, 5, 7] and raw.skipped_lines == 1


def test_not_utf8_names_the_line_after_earlier_bad_lines(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_bytes(b"1,2\n" * 1000 + b"\xff,3\n")
    with pytest.raises(DataError, match=r"r\.csv:1001: not UTF-8"):
        read_delimited(p)
    p.write_bytes(b"1,2\n" * 10 + b"1\n" + b"\xff,3\n")  # the short line comes first, so it is reported
    with pytest.raises(DataFormatError, match=r"r\.csv:11: expected 2 fields"):
        read_delimited(p)


def count_python_calls(fn: Callable[[], object]) -> int:
    """Python and builtin function calls made while ``fn`` runs (numpy's own loops are not calls)."""
    count = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    # log records cost calls that depend on which handlers earlier tests left installed, not on the loader
    logging.disable(logging.CRITICAL)
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
        logging.disable(logging.NOTSET)
    return count


def csv_of(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, n // 10, n), rng.integers(0, 5000, n)
    rows = [f"u{a:06d},i{b:05d},{a % 5 + 1}.5,{1_600_000_000 + b}" for a, b in zip(u, i, strict=True)]
    path.write_text("user_id,item_id,rating,timestamp\n" + "\n".join(rows) + "\n")
    return path


def adjacency_of(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    lines = [f"{u} " + " ".join(map(str, rng.integers(10_000, 99_999, 10))) for u in range(n // 10)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("make", [csv_of, adjacency_of])
def test_loading_makes_no_python_call_per_interaction(
    tmp_path: Path, make: Callable[[Path, int], Path]
) -> None:
    """Ten times the interactions (in one block), about the same number of Python calls: the per-interaction
    work is all in numpy. A per-line or per-id Python step would add 18,000 calls here."""
    suffix = ".csv" if make is csv_of else ".txt"  # train*.txt is read as adjacency lists
    small, large = (
        make(tmp_path / f"train_small{suffix}", 2_000),
        make(tmp_path / f"train_large{suffix}", 20_000),
    )
    for load in (read_delimited if make is csv_of else read_adjacency_lists, load_dataset):
        n_small = count_python_calls(lambda: load(small))  # noqa: B023
        n_large = count_python_calls(lambda: load(large))  # noqa: B023
        assert n_large <= n_small + 100, (load.__name__, n_small, n_large)


def test_unicode_spaces_lists_every_non_ascii_space() -> None:
    every = "".join(chr(c) for c in range(0x80, sys.maxunicode + 1) if chr(c).isspace())
    assert every == bs.UNICODE_SPACES


def test_unicode_whitespace_strips_and_blanks_as_str_does(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("u1\xa0, i1\n\u3000\nu2,i2\u2003\n")
    raw = read_delimited(p)
    assert raw.users.tolist() == ["u1", "u2"] and raw.items.tolist() == ["i1", "i2"]
    assert raw.skipped_lines == 1  # the line holding only an ideographic space is blank
