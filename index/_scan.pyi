"""Type stub of the compiled module index/_scan.c (called by index/scan.py; see its docstrings)."""

from typing import Any

def topc(
    items: Any,
    queries: Any,
    code_size: int,
    c: int,
    excl_ptr: Any | None,
    excl_ids: Any | None,
    allow: Any | None,
    out_dist: Any,
    out_idx: Any,
) -> None: ...
def use_vector_popcount(enable: bool) -> bool: ...
