"""Errors raised by the data layer. Every message names the file (and line, where there is one)."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset cannot be loaded as asked. ``str(err)`` is a complete, user-facing message."""


class DataFormatError(DataError):
    """A line of a data file does not match the expected format."""

    def __init__(self, path: str | Path, line: int, expected: str, got: str) -> None:
        shown = got if len(got) <= 80 else got[:77] + "..."
        super().__init__(f"{path}:{line}: expected {expected}, got {shown!r}")
        self.path = str(path)
        self.line = line
