"""The demo end to end, as a user runs it: data -> train -> evaluate -> export -> serve -> HTTP answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import free_port


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hashrec.cli",
            "demo",
            "--exit",
            "--epochs",
            "4",
            "--workdir",
            str(tmp_path),
            "--port",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 6/6" in out.stderr
    # the HTTP answer is printed as JSON after the curl line
    body = out.stdout.split(f"curl -s 'http://127.0.0.1:{port}/recommend/", 1)[1].split("\n", 1)[1]
    answer = json.loads(body[: body.rindex("}") + 1])
    assert answer["source"] == "model" and len(answer["items"]) == 5
    assert (tmp_path / "bundles" / "current").exists()
    assert (tmp_path / "run" / "eval.json").exists()
