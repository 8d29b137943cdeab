"""Start, watch and stop one server process tree, pinned to a CPU with taskset.

Memory and CPU are read from /proc for the whole tree (the spawned process and
every descendant), because granian and fastserve serve from a worker process
under a parent. The RSS sum counts pages shared between those processes once per
process, so it is an upper bound of what the tree holds.
"""

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

# Fine enough to catch a peak in a 2 s run, coarse enough that the sampler's
# cost on the load-generator CPU is negligible.
RSS_SAMPLE_INTERVAL_S = 0.1

# How long SIGTERM may take before the tree gets SIGKILL. Servers under test
# drain an idle server in well under a second.
STOP_GRACE_S = 10.0

READY_POLL_INTERVAL_S = 0.005


class ServerStartError(RuntimeError):
    """Raised when a server exits, or returns no 200 before its start timeout."""


def child_pids(pid: int) -> list[int]:
    """Return the direct children of `pid` from /proc, across all its threads."""
    children: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return children
    for task in tasks:
        try:
            children.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return children


def tree_pids(root: int) -> list[int]:
    """Return `root` and all its descendants that are alive now."""
    pids = [root]
    index = 0
    while index < len(pids):
        pids.extend(child_pids(pids[index]))
        index += 1
    return pids


def status_kib(pid: int, field: str) -> int:
    """Return a kB field of /proc/PID/status (VmRSS, VmHWM), 0 if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Return the Pss of /proc/PID/smaps_rollup in kB, 0 if the process is gone.

    PSS splits each shared page among the processes that map it, so summed over a
    process tree it counts the pages the tree's processes share with each other
    (the binary, libpython) once, where summed VmRSS counts them once per process.
    """
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """Return user plus system CPU time of one process, 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name may contain spaces, so split after its closing bracket.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_SECOND


def cpu_busy_seconds(cpu: int) -> tuple[float, float]:
    """Return (busy, steal) seconds of one CPU since boot, from /proc/stat.

    Busy is user + nice + system + irq + softirq; idle and iowait are left out.
    """
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == f"cpu{cpu}":
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
            busy = user + nice + system + irq + softirq
            return busy / CLOCK_TICKS_PER_SECOND, steal / CLOCK_TICKS_PER_SECOND
    raise ValueError(f"cpu{cpu} not found in /proc/stat")


class RssSampler:
    """Background thread that records the maximum of the tree's summed VmRSS."""

    def __init__(self, root: int) -> None:
        self._root = root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_kib = 0
        self.samples = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            total = sum(status_kib(pid, "VmRSS") for pid in tree_pids(self._root))
            self.peak_kib = max(self.peak_kib, total)
            self.samples += 1
            self._stop.wait(RSS_SAMPLE_INTERVAL_S)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


class ServerProcess:
    """One server under test: spawned pinned to a CPU, killed after `max_lifetime_s`."""

    def __init__(
        self,
        argv: list[str],
        *,
        cpu: int,
        cwd: Path,
        env: dict[str, str],
        log_path: Path,
        max_lifetime_s: float,
    ) -> None:
        self.argv = ["taskset", "-c", str(cpu), *argv]
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._known_pids: set[int] = {self.proc.pid}
        # Hard bound: the timer kills the tree even if the harness loop hangs.
        self._deadline = threading.Timer(max_lifetime_s, self._kill_tree)
        self._deadline.daemon = True
        self._deadline.start()

    @property
    def pid(self) -> int:
        """PID of the spawned process (taskset execs the server in place)."""
        return self.proc.pid

    def pids(self) -> list[int]:
        """Return the live tree and remember every PID seen, so stop() can reach them."""
        pids = tree_pids(self.proc.pid) if self.proc.poll() is None else []
        self._known_pids.update(pids)
        return pids

    def rss_kib(self) -> int:
        """Return the summed VmRSS of the tree."""
        return sum(status_kib(pid, "VmRSS") for pid in self.pids())

    def pss_kib(self) -> int:
        """Return the summed PSS of the tree."""
        return sum(pss_kib(pid) for pid in self.pids())

    def hwm_kib(self) -> tuple[int, int]:
        """Return (sum of VmHWM over the tree, largest single VmHWM)."""
        values = [status_kib(pid, "VmHWM") for pid in self.pids()]
        return sum(values), max(values, default=0)

    def cpu_seconds(self) -> float:
        """Return CPU time used so far by the live tree."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the server's combined stdout and stderr."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_first_200(
        self, host: str, port: int, path: str, timeout_s: float, any_status: bool = False
    ) -> float:
        """Poll GET `path` until it returns 200, or any status with `any_status`.

        Returns the seconds from spawn to that response.
        """
        deadline = self.spawned_at + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"server exited with code {self.proc.returncode} before returning 200; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            status = probe_status(host, port, path)
            if status == 200 or (any_status and status is not None):
                elapsed = time.monotonic() - self.spawned_at
                self.pids()
                return elapsed
            time.sleep(READY_POLL_INTERVAL_S)
        raise ServerStartError(
            f"no 200 from http://{host}:{port}{path} within {timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> int | None:
        """Send SIGTERM, wait up to STOP_GRACE_S, then SIGKILL what is left of the tree."""
        self._deadline.cancel()
        self.pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        self._kill_tree()
        self._log.close()
        return self.proc.returncode

    def _kill_tree(self) -> None:
        """SIGKILL every process of this tree that is still alive, then reap the root."""
        for pid in sorted(self._known_pids | set(self.pids())):
            if not self._owns(pid):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass

    def _owns(self, pid: int) -> bool:
        """Return True when `pid` is alive in the session this harness created for the server.

        The check keeps a recycled PID of some other process from being killed.
        """
        if pid == self.proc.pid:
            return self.proc.poll() is None
        try:
            return os.getsid(pid) == self.proc.pid and _is_alive(pid)
        except OSError:
            return False


def _is_alive(pid: int) -> bool:
    """Return True when /proc still lists `pid` and it is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def probe_status(host: str, port: int, path: str, timeout_s: float = 1.0) -> int | None:
    """Send one GET with `Connection: close` and return the status code, None on failure."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(request.encode())
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return None
    try:
        return int(parts[1])
    except ValueError:
        return None


def free_port(host: str) -> int:
    """Return a TCP port that was free a moment ago (the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
