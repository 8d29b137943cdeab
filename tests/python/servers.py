"""Start fastserve or uvicorn as a real process and stop it again.

A `Server` owns one process listening on 127.0.0.1 (or a unix socket). Its
stdout and stderr go to files, so a chatty server can never block on a full
pipe, and tests read them back with `stderr_text()`.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from rawhttp import Connection

REPO_ROOT = Path(__file__).resolve().parents[2]
APPS_DIR = REPO_ROOT / "tests" / "apps"
DEFAULT_BINARY = REPO_ROOT / "target" / "release" / "fastserve"

FASTSERVE = "fastserve"
UVICORN = "uvicorn"
SERVER_KINDS = (FASTSERVE, UVICORN)

# Seconds a server may take from exec to its first response. Importing FastAPI
# takes about a second on a loaded 2-core machine (an estimate, not a measurement).
READY_TIMEOUT_S = 15.0
# How long a server may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT_S = 10.0
# Environment variable through which apps write what they observed.
RECORD_DIR_ENV = "TEST_RECORD_DIR"


def fastserve_binary() -> Path:
    """Return the fastserve binary to test, or fail the calling test saying how to get one."""
    configured = os.environ.get("FASTSERVE_BIN")
    path = Path(configured) if configured else DEFAULT_BINARY
    if not path.is_file() or not os.access(path, os.X_OK):
        source = "FASTSERVE_BIN" if configured else "the default path"
        pytest.fail(
            f"fastserve binary not found at {path} (from {source}); build it with "
            "`PYO3_PYTHON=<venv python> cargo build --release` or set FASTSERVE_BIN",
            pytrace=False,
        )
    return path


def server_command(kind: str) -> list[str]:
    """Return the argv prefix that starts a server of `kind`, before APP and options."""
    if kind == FASTSERVE:
        return [str(fastserve_binary())]
    if kind == UVICORN:
        # The fastest uvicorn configuration, which is what fastserve is compared to.
        return [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools"]
    raise ValueError(f"unknown server kind {kind!r}: expected one of {SERVER_KINDS}")


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a server process: this one, the test venv active, `extra`."""
    env = dict(os.environ)
    # fastserve takes the app's packages from the active virtual environment.
    env.setdefault("VIRTUAL_ENV", sys.prefix)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for name in ("PORT", "FASTSERVE_PORT", "FASTSERVE_HOST"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """Return the PIDs of all descendants of `pid`, read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name in field 2 may contain spaces, so parse after its ')'.
        fields = stat.rsplit(")", 1)[1].split()
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found.extend(children)
        pending.extend(children)
    return found


def status_kib(pid: int, field: str) -> int:
    """Return a kB field such as VmRSS or VmHWM from /proc/PID/status, 0 if the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def tree_rss_kib(pid: int) -> int:
    """Return the summed resident set size of `pid` and its descendants, in KiB."""
    return sum(status_kib(each, "VmRSS") for each in [pid, *child_pids(pid)])


class Server:
    """One server process with files for its output, started by `start()` and ended by `stop()`."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        port: int | None = None,
        uds: Path | None = None,
        pass_fds: Iterable[int] = (),
        record_dir: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.record_dir = record_dir
        record_env = {RECORD_DIR_ENV: str(record_dir)} if record_dir else {}
        self.env = server_env({**record_env, **(env or {})})
        self.cwd = cwd or REPO_ROOT
        self.port = port
        self.uds = uds
        self.pass_fds = tuple(pass_fds)
        log_dir.mkdir(parents=True, exist_ok=True)
        stem = f"server-{time.monotonic_ns()}"
        self.stdout_path = log_dir / f"{stem}.stdout"
        self.stderr_path = log_dir / f"{stem}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """Return the address the server listens on."""
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """Return the base URL, such as http://127.0.0.1:PORT (http://localhost for --uds)."""
        if self.port is None:
            return "http://localhost"
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """Return the PID of the server process."""
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def stdout_text(self) -> str:
        """Return everything the server wrote to stdout so far."""
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr_text(self) -> str:
        """Return everything the server wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stderr_size(self) -> int:
        """Return the current size of the stderr file, a mark for `stderr_since`."""
        return self.stderr_path.stat().st_size if self.stderr_path.exists() else 0

    def stderr_since(self, mark: int) -> str:
        """Return what the server wrote to stderr after `mark` (from `stderr_size`)."""
        with self.stderr_path.open("rb") as stream:
            stream.seek(mark)
            return stream.read().decode(errors="replace")

    def spawn(self) -> "Server":
        """Start the process without waiting for it to listen."""
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.cwd,
                pass_fds=self.pass_fds,
            )
        return self

    def start(self, timeout: float = READY_TIMEOUT_S) -> "Server":
        """Start the process and wait until it responds to an HTTP request."""
        self.spawn()
        self.wait_ready(timeout)
        return self

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """Open a client socket to the server."""
        if self.uds is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(str(self.uds))
        else:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        return sock

    def open(self, timeout: float = 10.0) -> Connection:
        """Open a raw HTTP connection to the server."""
        return Connection(self.connect(timeout))

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until a request gets a status line, failing with stderr if the process exits."""
        assert self.proc is not None, "server not started"
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                pytest.fail(
                    f"server exited with code {code} before it accepted connections\n"
                    f"argv: {self.argv}\nstderr:\n{self.stderr_text()}",
                    pytrace=False,
                )
            try:
                if self._probe(deadline - time.monotonic()):
                    return
            except OSError as error:
                last_error = error
            time.sleep(0.05)
        pytest.fail(
            f"server did not answer within {timeout} s (last error: {last_error!r})\n"
            f"argv: {self.argv}\nstderr:\n{self.stderr_text()}",
            pytrace=False,
        )

    def _probe(self, remaining: float) -> bool:
        """Send one request and report whether a status line came back."""
        with self.connect(timeout=max(0.1, remaining)) as sock:
            sock.sendall(b"GET /__ready__ HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/")

    def signal(self, signum: int) -> None:
        """Send `signum` to the server process."""
        assert self.proc is not None, "server not started"
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and return its exit code."""
        assert self.proc is not None, "server not started"
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Send SIGTERM, wait up to `timeout`, then SIGKILL it and its children by PID."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            descendants = child_pids(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for pid in [*descendants, *child_pids(self.proc.pid), self.proc.pid]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait(timeout=timeout)
        return self.proc.returncode


def read_record(folder: Path, name: str, timeout: float = 5.0) -> Any:
    """Wait for the JSON record `name` that an app wrote into `folder` and return it."""
    path = folder / f"{name}.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the app wrote no record {path} within {timeout} s", pytrace=False)
        time.sleep(0.02)
    return json.loads(path.read_text())
