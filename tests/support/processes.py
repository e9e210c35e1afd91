"""Real processes for the tests and benchmarks that need them: ``hashrec serve`` on a free port and a
private ``redis-server``. Everything binds 127.0.0.1 only; nothing touches a Redis the tests did not start.

    with ServerProcess(bundles, log_path, env={"HASHREC_REDIS_URL": redis.url}).start() as srv:
        ...             # leaving the block: SIGTERM, then SIGKILL after a grace period
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HASHREC = str(Path(sys.executable).parent / "hashrec")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux ``/proc/<pid>/status`` VmRSS); 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from ``/proc`` (Linux)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


class ServerProcess:
    """A ``hashrec serve`` subprocess on 127.0.0.1 and a free port; ``start`` waits for ``/readyz``.

    ``env`` adds or overrides ``HASHREC_*`` variables (for example the Redis URL or the admin token).
    One worker process unless ``workers`` says otherwise (the service's own default depends on the
    machine's cores). The access log is on, as deployed, unless asked otherwise (a load benchmark may
    turn it off). ``cpus`` (a ``taskset -c`` list such as ``"0"``) confines the server, its workers and
    their children to those CPUs, so that a load generator can have the others to itself.
    """

    def __init__(
        self,
        bundles: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        compute_threads: int = 2,
        access_log: bool = True,
        workers: int = 1,
        command: list[str] | None = None,
        cpus: str | None = None,
    ) -> None:
        self.command = command or [HASHREC, "serve"]  # another checkout's ``hashrec serve`` (before/after)
        if cpus is not None:  # taskset execs the command: the pid stays the server's
            self.command = ["taskset", "-c", cpus, *self.command]
        self.bundles = Path(bundles)
        self.workers = workers
        self.port = free_port()
        self.log_path = Path(log_path)
        self.env = {
            **os.environ,
            "HASHREC_BUNDLES": str(self.bundles),
            "HASHREC_HOST": "127.0.0.1",
            "HASHREC_PORT": str(self.port),
            "HASHREC_WORKERS": str(workers),
            "HASHREC_COMPUTE_THREADS": str(compute_threads),
            "HASHREC_ACCESS_LOG": "true" if access_log else "false",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        """Base URL, no trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The ``hashrec serve`` process id: with one worker, the process that answers; with several, their
        supervisor (see :meth:`worker_pids`)."""
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start and wait until ``/readyz`` answers 200; raises RuntimeError with the log tail otherwise."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (lives as long as the process)
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1.0) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready in {timeout:.0f} s:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        """Send a signal to the server process (SIGTERM for a graceful shutdown test)."""
        assert self.proc is not None, "server not started"
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; returns its exit code (raises TimeoutExpired)."""
        assert self.proc is not None, "server not started"
        return self.proc.wait(timeout=timeout)

    def rss(self) -> int:
        """The server's resident memory in bytes: every process of it together (the main process, its
        workers, and their children, such as the export processes)."""
        return sum(rss_bytes(p) for p in [self.pid, *descendants(self.pid)])

    def worker_pids(self) -> list[int]:
        """The worker processes' ids: with several workers, the children of :attr:`pid` that
        multiprocessing spawned to serve (not its resource tracker); ``[pid]`` with one worker, which is
        the process itself. Linux: read from ``/proc``."""
        if self.workers == 1:
            return [self.pid]
        try:
            children = [
                int(c) for c in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            ]
        except OSError:
            return []
        out = []
        for child in children:
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    out.append(child)
            except OSError:
                continue
        return out

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of the server's log (for error messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def log_text(self) -> str:
        """The whole server log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class RedisProcess:
    """A private ``redis-server`` on a free port (no persistence; ``DEBUG`` enabled for ``DEBUG SLEEP``)."""

    def __init__(self, workdir: Path, extra_args: list[str] | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(
                "redis-server is not installed (apt-get install redis-server, or `make services`)"
            )
        self.exe = exe
        self.workdir = Path(workdir)
        self.port = free_port()
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        """Start (or restart on the same port) and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), "--enable-debug-command", "local", *self.extra_args]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.command("PING", timeout=0.2)
            if reply == "PONG" or (reply or "").startswith("NOAUTH"):  # up (with --requirepass: NOAUTH)
                return self
            time.sleep(0.05)
        self.stop()  # never leave a half-started server behind
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def command(self, *args: str, timeout: float = 2.0) -> str | None:
        """Send one command (RESP) and return the first reply line without its type byte; None on error."""
        return redis_command(self.port, *args, timeout=timeout)

    def stop(self) -> None:
        """SIGKILL (a crash, not a clean shutdown); idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def redis_command(port: int, *args: str, timeout: float = 2.0) -> str | None:
    """One Redis command over a raw socket: the first reply line without its type byte, None on failure.

    A tiny client on purpose: fault scripts must reach Redis even when the service's client library is the
    thing under test, and ``DEBUG SLEEP`` blocks the connection it is sent on.
    """
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(payload)
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return line[1:] if line else None


HAPROXY_CFG = Path(__file__).resolve().parents[2] / "docker" / "haproxy.cfg"


def local_haproxy_conf(
    upstream_port: int,
    port: int,
    workdir: Path,
    recommend_maxconn: int | None = None,
    recommend_queue: int | None = None,
) -> str:
    """docker/haproxy.cfg as shipped, pointed at one local replica: every backend's replicas become
    ``127.0.0.1:upstream_port`` (no DNS), the frontend binds 127.0.0.1:``port``, a stats socket in
    ``workdir`` (for :meth:`HAProxyProcess.stat`); everything else (health checks, admission, retries,
    timeouts, error bodies) unchanged, except the recommendation backend's ``maxconn`` and the queue
    bound when ``recommend_maxconn`` / ``recommend_queue`` are given.

    Raises RuntimeError when the shipped file no longer has a line this rewrites (so that what runs here
    never silently drifts from what is shipped).
    """
    subs: list[tuple[str, str, int]] = [
        (r"^resolvers docker\n(?:[ \t]+\S.*\n)+", "", 1),  # Docker's DNS: the local replica is an address
        (r"^(\s*)bind :8000$", rf"\g<1>bind 127.0.0.1:{port}", 1),
        (r"^global\n", f"global\n    stats socket {workdir}/haproxy.sock\n", 1),
        (
            r"^(\s*)server-template api \d+ api:8000( maxconn \d+)? resolvers docker init-addr none(.*)$",
            rf"\g<1>server api 127.0.0.1:{upstream_port}\g<2>\g<3>",
            3,
        ),
    ]
    if recommend_maxconn is not None:
        subs.append((r"^(\s*server api \S+ )maxconn \d+", rf"\g<1>maxconn {recommend_maxconn}", 1))
    if recommend_queue is not None:
        subs.append((r"\{ queue\(recommend\) ge \d+ \}", f"{{ queue(recommend) ge {recommend_queue} }}", 1))
    text = HAPROXY_CFG.read_text()
    for pattern, repl, count in subs:
        text, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
        if n != count:
            raise RuntimeError(
                f"{HAPROXY_CFG}: {n} line(s) match {pattern!r}, expected {count}; update local_haproxy_conf"
            )
    return text


class HAProxyProcess:
    """HAProxy (Debian's ``haproxy`` package) with :func:`local_haproxy_conf` in front of one replica
    port, on a free port of its own; ``start`` waits until it accepts connections (HAProxy counts a
    checked replica up until its checks fail). ``cpus``: as for :class:`ServerProcess`. Its log
    (warnings: replicas going down or up) goes to ``workdir/haproxy.log``."""

    def __init__(
        self,
        upstream_port: int,
        workdir: Path,
        recommend_maxconn: int | None = None,
        recommend_queue: int | None = None,
        cpus: str | None = None,
    ) -> None:
        exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
        if exe is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy, or `make services`)")
        self.workdir = Path(workdir)
        self.port = free_port()
        self.conf = self.workdir / "haproxy.cfg"
        self.text = local_haproxy_conf(
            upstream_port, self.port, self.workdir, recommend_maxconn, recommend_queue
        )
        self.command = [exe, "-db", "-f", str(self.conf)]  # -db: stay in the foreground
        if cpus is not None:
            self.command = ["taskset", "-c", cpus, *self.command]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, no trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """HAProxy's process id (one process; its threads are inside it)."""
        assert self.proc is not None, "haproxy not started"
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> HAProxyProcess:
        """Write the configuration, start HAProxy and wait for its port; RuntimeError with its log
        otherwise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.text)
        with (self.workdir / "haproxy.log").open("ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"haproxy did not listen on {self.port} in {timeout:.0f} s:\n{self.log_text()[-4000:]}"
        )

    def stop(self) -> None:
        """SIGUSR1 (a soft stop: open requests finish), SIGKILL after 10 s; idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> HAProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stat(self, proxy: str, server: str, field: str) -> int:
        """One counter of HAProxy's ``show stat`` (for example the queue of a backend: ``recommend``,
        ``BACKEND``, ``qcur``), read from its stats socket; 0 when empty."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.workdir / "haproxy.sock"))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        header, *rows = data.decode().lstrip("# ").splitlines()
        names = header.split(",")
        for row in rows:
            values = dict(zip(names, row.split(","), strict=False))
            if values.get("pxname") == proxy and values.get("svname") == server:
                return int(values.get(field) or 0)
        raise KeyError(f"haproxy has no stats row {proxy}/{server}")

    def log_text(self) -> str:
        """HAProxy's log so far."""
        try:
            return (self.workdir / "haproxy.log").read_text(errors="replace")
        except OSError:
            return ""
