"""Writing results of long runs and benchmarks: the machine they ran on, a markdown table, a JSON file.

Nothing here knows a path of the source tree: callers say where results go (``--out``, ``--e2e-out`` or
pytest's tmp path).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU model (with its family and model numbers, which tell CPU
    generations apart where the model name does not, and its widest SIMD extension of those our kernel
    cares about), core count, Python, platform, date (UTC)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first processor's fields
            key, _, value = (part.strip() for part in line.partition(":"))
            info.setdefault(key, value)
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name") or platform.processor(),
        "cpu_family": info.get("cpu family", ""),
        "cpu_model": info.get("model", ""),
        "widest_simd": next((f for f in ("avx512_vpopcntdq", "avx512f", "avx2") if f in flags), ""),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def save_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with ``machine`` (:func:`machine_info`) added to ``path`` (atomically); returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"machine": machine_info(), **payload}, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats shown with 4 decimals."""

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)
