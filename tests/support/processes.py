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


NGINX_CONF = Path(__file__).resolve().parents[2] / "docker" / "nginx.conf"
_NGINX_TEMPS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def local_nginx_conf(
    upstream_port: int, port: int, workdir: Path, recommend_inflight: int | None = None
) -> str:
    """docker/nginx.conf as shipped, pointed at one local upstream: the upstream address, the listen
    address, the pid file and error log in ``workdir``; everything else (admission, timeouts, keep-alive)
    unchanged, except the in-flight limit of ``/recommend`` when ``recommend_inflight`` is given.

    Raises RuntimeError when the shipped file no longer has a line this rewrites (so that what runs here
    never silently drifts from what is shipped).
    """
    subs = [
        (r"^\s*resolver .*;\n", ""),  # Docker's DNS: the local upstream is an address
        (r"^(\s*)server api:8000 resolve", rf"\g<1>server 127.0.0.1:{upstream_port}"),
        (r"^(\s*)listen 8000;", rf"\g<1>listen 127.0.0.1:{port};"),
        (
            r"^worker_processes",
            f"pid {workdir}/nginx.pid;\nerror_log {workdir}/error.log warn;\nworker_processes",
        ),
        # temporary files in the work directory too: the package's own need root (or its user)
        (
            r"^http \{\n",
            "http {\n" + "".join(f"    {k}_temp_path {workdir}/{k}_temp;\n" for k in _NGINX_TEMPS),
        ),
    ]
    if recommend_inflight is not None:
        subs.append(
            (
                r"^(\s*)limit_conn recommend_inflight \d+;",
                rf"\g<1>limit_conn recommend_inflight {recommend_inflight};",
            )
        )
    text = NGINX_CONF.read_text()
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text, count=1, flags=re.MULTILINE)
        if n != 1:
            raise RuntimeError(f"{NGINX_CONF}: no line matches {pattern!r}; update local_nginx_conf")
    return text


class NginxProcess:
    """nginx (Debian's ``nginx`` package) with :func:`local_nginx_conf` in front of one upstream port, on a
    free port of its own; ``start`` waits until it accepts connections. ``cpus``: as for
    :class:`ServerProcess`."""

    def __init__(
        self,
        upstream_port: int,
        workdir: Path,
        recommend_inflight: int | None = None,
        cpus: str | None = None,
    ) -> None:
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if exe is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx, or `make services`)")
        self.workdir = Path(workdir)
        self.port = free_port()
        self.conf = self.workdir / "nginx.conf"
        self.text = local_nginx_conf(upstream_port, self.port, self.workdir, recommend_inflight)
        self.command = [exe, "-e", str(self.workdir / "error.log"), "-c", str(self.conf), "-g", "daemon off;"]
        if cpus is not None:
            self.command = ["taskset", "-c", cpus, *self.command]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, no trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The nginx master's process id (its workers are its children)."""
        assert self.proc is not None, "nginx not started"
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> NginxProcess:
        """Write the configuration, start nginx and wait for its port; RuntimeError with its log otherwise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.text)
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"nginx did not listen on {self.port} in {timeout:.0f} s:\n{self.log_text()[-4000:]}"
        )

    def stop(self) -> None:
        """SIGQUIT (finish the open requests), SIGKILL after 10 s; idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> NginxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        """nginx's error log so far."""
        try:
            return (self.workdir / "error.log").read_text(errors="replace")
        except OSError:
            return ""
