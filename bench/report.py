"""Saving benchmark results: JSON files under ``docs/results/`` and one section of ``docs/benchmarks.md``.

Each benchmark owns one section of docs/benchmarks.md, delimited by ``<!-- BEGIN name -->`` and
``<!-- END name -->``; :func:`write_section` replaces only that section (appending it when missing), under a
file lock, so benchmarks can be rerun in any order without clobbering each other.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, core count, Python, date (UTC)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def save_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``docs/results/<name>.json`` (pretty, with machine info added) and return its path."""
    d = out_dir or DOCS / "results"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.json"
    body = {"machine": machine_info(), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path


def write_section(name: str, markdown: str, doc: Path | None = None) -> Path:
    """Replace the ``name`` section of docs/benchmarks.md with ``markdown`` (atomic, locked)."""
    path = doc or DOCS / "benchmarks.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        text = (
            pattern.sub(lambda _: block, text)
            if pattern.search(text)
            else text.rstrip() + "\n\n" + block + "\n"
        )
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats shown with 4 decimals."""

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)
