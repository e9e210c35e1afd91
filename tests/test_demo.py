"""The demo end to end, as a user runs it: data -> train -> evaluate -> export -> serve -> HTTP answer, the
service left running (`make demo`) until a SIGTERM stops the demo and its server with it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from support import free_port


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_runs_end_to_end_and_sigterm_stops_its_server(tmp_path: Path) -> None:
    port = free_port()
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "hashrec.cli", "demo", "--epochs", "4", "--workdir", str(tmp_path / "w")]
    with out.open("w") as o, err.open("w") as e:
        # its own process group: the cleanup below can kill the server too, whatever the test saw
        proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=o, stderr=e, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while "demo finished" not in err.read_text():
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "the demo did not finish in 10 minutes"
            time.sleep(0.5)
        assert "step 6/6" in err.read_text()
        # the HTTP answer is printed as JSON after the curl line
        body = out.read_text().split(f"curl -s 'http://127.0.0.1:{port}/recommend/", 1)[1].split("\n", 1)[1]
        answer = json.loads(body[: body.rindex("}") + 1])
        assert answer["source"] == "model" and len(answer["items"]) == 5
        assert (tmp_path / "w" / "bundles" / "current").exists()
        assert (tmp_path / "w" / "run" / "eval.json").exists()
        assert _accepts(port)  # still serving, as `make demo` leaves it
        proc.send_signal(signal.SIGTERM)  # to the demo alone: it must stop its server itself
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        assert not _accepts(port), "the demo's server outlived the demo"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
