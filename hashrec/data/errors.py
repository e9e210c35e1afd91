"""Errors for input the user can fix. Every message is complete and names the file (and line) or the field.

The CLI prints the message of a :class:`UserError` and exits with status 2; no traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(ValueError):
    """Input the user can fix (a file, a flag, a config value). ``str(err)`` is a complete message."""


class DataError(UserError):
    """A dataset cannot be loaded as asked."""


class DataFormatError(DataError):
    """A line of a data file does not match the expected format."""

    def __init__(self, path: str | Path, line: int, expected: str, got: str) -> None:
        shown = got if len(got) <= 80 else got[:77] + "..."
        super().__init__(f"{path}:{line}: expected {expected}, got {shown!r}")
        self.path = str(path)
        self.line = line
