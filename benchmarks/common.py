"""What the benchmark scripts share: the test helpers on ``sys.path``, the ``--out`` option, and one way to
report (a markdown table on stdout, the JSON with the machine and date to ``--out``).

The scripts import ``support`` (tests/support: the one server launcher, Redis launcher and bundle maker);
the tests never import benchmarks. Results are printed; a file is written only where ``--out`` says, never
into the source tree by default.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# the datasets that are not ours to redistribute live beside the repository (../shared/data), never in it
DATA = REPO.parent / "shared" / "data"
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from support import machine_info, md_table, save_json  # noqa: E402

__all__ = ["DATA", "REPO", "add_out", "interleaved", "machine_info", "md_table", "report", "setup_logging"]

log = logging.getLogger("benchmarks")


def setup_logging() -> None:
    """Progress on stderr (the table goes to stdout)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise


def add_out(parser: argparse.ArgumentParser) -> None:
    """``--out PATH``: where to write the JSON (default: print only)."""
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON to this file")


def report(title: str, table: str, payload: dict[str, Any], out: Path | None, command: str) -> None:
    """Print ``title``, the machine and date, the command and ``table``; write ``payload`` to ``out``."""
    m = machine_info()
    print(f"## {title}\n")
    cpu = f"{m['cpu']} (family {m['cpu_family']} model {m['cpu_model']}, {m['widest_simd'] or 'no AVX'})"
    print(f"{m['date']}, {cpu}, {m['cores']} cores, Python {m['python']}. Command: `{command}`\n")
    print(table)
    if out is not None:
        save_json(out, {"command": command, **payload})
        log.info("wrote %s", out)


def interleaved(fns: dict[str, Callable[[int], Any]], rounds: int, per_call: int = 1) -> dict[str, float]:
    """Median milliseconds per call (divided by ``per_call``) of each function over ``rounds`` rounds.

    The functions take turns in every round, in an order rotated each round, so machine noise hits them
    all alike and none always runs right after one that evicts the caches; ``fn(i)`` gets the round.
    One warm-up call each first (page faults, lazy initialisation).
    """
    for fn in fns.values():
        fn(0)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name](r)
            times[name].append((time.perf_counter() - t0) / per_call)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
