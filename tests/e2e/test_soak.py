"""The soak (``soak.py``), opt-in: ``--run-soak [--soak-minutes M] [--e2e-out DIR]`` runs it and writes
soak.md and soak.json; by default only its window arithmetic is checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import soak
from support import save_json


def _probe(latency: dict[float, float], gc2: float) -> dict[str, object]:
    return {
        "latency": latency,
        "loop_lag": {0.05: 10.0, float("inf"): 12.0},
        "gc_count": {"2": gc2},
        "gc_sum": {"2": gc2 / 100},
    }


def test_probe_window_turns_cumulative_scrapes_into_window_figures() -> None:
    inf = float("inf")
    cpu0 = dict.fromkeys(soak._CPU_FIELDS, 0)
    cpu1 = {**cpu0, "user": 60, "idle": 30, "iowait": 5, "steal": 5}
    p0 = (100.0, cpu0, _probe({0.005: 10.0, 0.25: 10.0, inf: 10.0}, 1.0))
    p1 = (110.0, cpu1, _probe({0.005: 100.0, 0.25: 109.0, inf: 110.0}, 3.0))
    w = soak.probe_window([p0, p1], 100.0, 110.0)
    # 100 answers in the window: 90 under 5 ms, 99 under 250 ms, 1 over
    assert w["server_p99_le_ms"] == 250.0 and w["server_over_250ms"] == 1
    assert w["gc2_collections"] == 2 and w["gc_ms"] == 20.0
    assert w["cpu_busy_pct"] == 65.0 and w["cpu_iowait_pct"] == 5.0 and w["cpu_steal_pct"] == 5.0
    assert soak.probe_window([p0], 100.0, 110.0) == {}  # one probe: no window


@pytest.mark.soak
@pytest.mark.timeout(0)  # as long as --soak-minutes says
def test_soak(request: pytest.FixtureRequest, e2e_out: Path, tmp_path: Path) -> None:
    """Steady load at 70% of measured capacity: no failed answer, stable p99, RSS growth under 5%."""
    minutes = float(request.config.getoption("--soak-minutes"))
    result = soak.run_soak(minutes, workdir=tmp_path / "work")
    save_json(e2e_out / "soak.json", result)
    (e2e_out / "soak.md").write_text(soak.markdown(result) + "\n")
    failed = [name for name, ok in result["checks"].items() if not ok]
    assert not failed, (failed, result["total"])
