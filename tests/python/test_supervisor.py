"""The supervisor and its workers: draining, PID 1 duties, restarts, signals and its log.

Tests whose names end in `as_pid1` run the server under `unshare --pid --fork --mount-proc`,
so it is the init process of a fresh PID namespace, as in a container. The
server is then the only child of the `unshare` process, and every process of
the namespace is a descendant of `unshare` as seen from the host.
"""

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from conftest import Launch, build_argv
from rawhttp import IncompleteResponseError, Response
from servers import APPS_DIR, Server, child_pids, free_port, read_record, server_command

APP = "supervisor_apps:app"
# The name the kernel shows for a worker (and the supervisor): the binary's file name.
WORKER_COMM = "fastserve"
# Seconds a server may take to exit after its last response when nothing else is open.
EXIT_AFTER_RESPONSE_S = 1.5
# Seconds a supervisor may take to replace a worker or change the number of workers.
WORKER_CHANGE_TIMEOUT_S = 10.0
# The failure message of `lifespan_apps:failing_startup` (tests/apps is not importable here).
STARTUP_FAILURE_MESSAGE = "database unreachable during startup"
# Seconds a server whose app cannot start (import error, failed lifespan) may take to exit.
START_FAILURE_EXIT_S = 6.0

T = TypeVar("T")


@dataclass
class NamespacedServer:
    """A server running as PID 1 of its own PID namespace under `unshare`."""

    server: Server
    init_pid: int
    """Host PID of the server process, which is PID 1 inside the namespace."""


@dataclass
class LoadResult:
    """Outcome of the requests that one load loop sent."""

    sent: int = 0
    failures: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)


def proc_stat(pid: int) -> tuple[str, str, int] | None:
    """Return (comm, state, ppid) of `pid` from /proc, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The comm in field 2 may contain spaces and brackets, so split at the last ')'.
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return comm, fields[0], int(fields[1])


def direct_children(pid: int) -> list[int]:
    """Return the PIDs whose parent is `pid`."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_stat(int(entry))
            if info is not None and info[2] == pid:
                children.append(int(entry))
    return children


def worker_pids(supervisor_pid: int) -> set[int]:
    """Return the PIDs of the supervisor's worker processes (children running fastserve)."""
    workers = set()
    for child in direct_children(supervisor_pid):
        info = proc_stat(child)
        if info is not None and info[0] == WORKER_COMM and info[1] != "Z":
            workers.add(child)
    return workers


def wait_for(check: Callable[[], T], timeout: float, interval: float = 0.05) -> T | None:
    """Call `check` until it returns a true value or `timeout` seconds pass, then return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_worker_count(server: Server, count: int) -> set[int]:
    """Wait until the supervisor has `count` workers and return their PIDs."""
    wait_for(lambda: len(worker_pids(server.pid)) == count, WORKER_CHANGE_TIMEOUT_S)
    workers = worker_pids(server.pid)
    assert len(workers) == count, f"workers {sorted(workers)}\nstderr:\n{server.stderr_text()}"
    return workers


def get(server: Server, target: str, timeout: float = 10.0) -> Response:
    """Send GET `target` on a new connection (closed after the response) and return the response."""
    with server.open(timeout=timeout) as conn:
        return conn.request("GET", target, [("connection", "close")])


def health_ok(server: Server) -> bool:
    """Return whether GET /health returns 200 now. A failed connection counts as unhealthy."""
    try:
        return get(server, "/health", timeout=2).status == 200
    except (OSError, IncompleteResponseError):
        return False


def get_in_thread(
    server: Server, target: str, timeout: float = 40.0
) -> tuple[threading.Thread, list[Response | Exception], list[float]]:
    """Send GET `target` from a thread that stores the response (or the error) and its end time."""
    outcome: list[Response | Exception] = []
    ended_at: list[float] = []

    def run() -> None:
        try:
            outcome.append(get(server, target, timeout=timeout))
        except (OSError, IncompleteResponseError) as error:
            outcome.append(error)
        ended_at.append(time.monotonic())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome, ended_at


def run_load(
    server: Server, duration: float, target: str = "/pid", pause: float = 0.01
) -> LoadResult:
    """Send GET `target` sequentially, each on a new connection, for `duration` seconds."""
    result = LoadResult()
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        result.sent += 1
        try:
            response = get(server, target, timeout=10)
        except (OSError, IncompleteResponseError) as error:
            result.failures.append(repr(error))
        else:
            if response.status != 200:
                result.failures.append(f"status {response.status}: {response.body!r}")
            elif target == "/pid":
                result.pids.append(json.loads(response.body)["pid"])
        time.sleep(pause)
    return result


def wait_exit(server: Server, timeout: float) -> tuple[int, float]:
    """Wait for the server to exit and return its exit code and the time it was seen gone."""
    code = server.wait(timeout=timeout)
    return code, time.monotonic()


def kill_if_alive(pid: int) -> None:
    """Send SIGKILL to `pid` unless it already exited."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def launch_as_pid1(tmp_path: Path, record_dir: Path) -> Iterator[Callable[..., NamespacedServer]]:
    """Return `launch_as_pid1(kind, app, *args)`, which starts a server as PID 1 of a namespace.

    At the end of the test the namespace's init gets SIGKILL, which ends every
    process in the namespace, and `unshare` is waited for.
    """
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is required for the PID namespace tests", pytrace=False)
    started: list[NamespacedServer] = []

    def start(kind: str, app: str, *args: str) -> NamespacedServer:
        port = free_port()
        # --kill-child: if unshare itself dies, the whole namespace goes with it.
        argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
        argv += build_argv(kind, app, args, port, APPS_DIR)
        server = Server(argv, log_dir=tmp_path / "logs", port=port, record_dir=record_dir)
        server.start()
        children = direct_children(server.pid)
        assert len(children) == 1, f"unshare should have one child, found {children}"
        namespaced = NamespacedServer(server=server, init_pid=children[0])
        started.append(namespaced)
        return namespaced

    yield start
    for namespaced in started:
        kill_if_alive(namespaced.init_pid)
        namespaced.server.stop()


def namespace_processes(unshare_pid: int) -> dict[int, tuple[str, str, int]]:
    """Return (comm, state, ppid) of every process in the namespace below `unshare_pid`."""
    processes = {}
    for pid in child_pids(unshare_pid):
        info = proc_stat(pid)
        if info is not None:
            processes[pid] = info
    return processes


def test_sigterm_drains_request_as_pid1(
    kind: str, launch_as_pid1: Callable[..., NamespacedServer]
) -> None:
    namespaced = launch_as_pid1(kind, APP)
    server = namespaced.server
    thread, outcome, ended_at = get_in_thread(server, "/sleep?ms=2000")
    read_record(server.record_dir, "sleep-started")
    signalled_at = time.monotonic()
    os.kill(namespaced.init_pid, signal.SIGTERM)

    code, exited_at = wait_exit(server, timeout=15)
    thread.join(timeout=5)
    assert len(outcome) == 1
    response = outcome[0]
    assert isinstance(response, Response), f"{response!r}\nstderr:\n{server.stderr_text()}"
    assert response.status == 200
    assert response.body == b"slept 2000 ms"
    assert code == 0, server.stderr_text()
    # The exit follows the response, not a timeout.
    assert exited_at - ended_at[0] < EXIT_AFTER_RESPONSE_S, server.stderr_text()
    assert exited_at - signalled_at < 2.0 + EXIT_AFTER_RESPONSE_S


@pytest.mark.uvicorn_differs(reason="re-raises SIGTERM after draining, exit -15")
def test_idle_keep_alive_does_not_delay_exit(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--timeout-keep-alive", "30")
    with server.open(timeout=10) as idle:
        assert idle.request("GET", "/ok").status == 200
        signalled_at = time.monotonic()
        server.signal(signal.SIGTERM)
        code, exited_at = wait_exit(server, timeout=15)
        assert exited_at - signalled_at < 1.0, server.stderr_text()
        assert code == 0, server.stderr_text()
        assert idle.wait_closed(timeout=1)


def new_connection_outcome(server: Server) -> str:
    """Open a new connection, send a request, and return "refused" or what happened instead."""
    try:
        sock = server.connect(timeout=1)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        try:
            answer = sock.recv(64)
        except TimeoutError:
            return "accepted by the kernel, then no response within 1 s"
        except ConnectionResetError:
            return "accepted by the kernel, then reset"
    return f"accepted by the kernel, then received {answer!r}"


def test_drain_refuses_new_connections(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    thread, outcome, _ = get_in_thread(server, "/sleep?ms=3000")
    read_record(server.record_dir, "sleep-started")
    server.signal(signal.SIGTERM)
    time.sleep(0.3)

    assert server.proc is not None and server.proc.poll() is None, "exited before the request"
    assert new_connection_outcome(server) == "refused"
    thread.join(timeout=10)
    assert isinstance(outcome[0], Response), outcome[0]
    assert outcome[0].status == 200


@pytest.mark.fastserve_only
def test_shutdown_delay_fails_health_but_serves(kind: str, launch: Launch) -> None:
    delay_s = 1.5
    server = launch(kind, APP, "--shutdown-delay", str(delay_s))
    # A request in flight past the delay keeps the server draining, so the
    # refusal below comes from the drain and not from an exited process.
    thread, outcome, _ = get_in_thread(server, "/sleep?ms=3500")
    read_record(server.record_dir, "sleep-started")
    signalled_at = time.monotonic()
    server.signal(signal.SIGTERM)
    time.sleep(0.3)

    health = get(server, "/health")
    assert health.status == 503
    assert json.loads(health.body) == {"status": "draining"}
    during_delay = get(server, "/ok")
    assert during_delay.status == 200
    assert during_delay.body == b"ok"

    time.sleep(max(0.0, signalled_at + delay_s + 0.4 - time.monotonic()))
    assert server.proc is not None and server.proc.poll() is None, "exited before the request"
    after_delay = new_connection_outcome(server)
    thread.join(timeout=10)
    assert after_delay == "refused"
    assert isinstance(outcome[0], Response), outcome[0]
    assert outcome[0].status == 200
    assert wait_exit(server, timeout=10)[0] == 0


@pytest.mark.uvicorn_differs(reason="does not reap orphans when it is PID 1")
def test_double_fork_leaves_no_zombie_as_pid1(
    kind: str, launch_as_pid1: Callable[..., NamespacedServer]
) -> None:
    namespaced = launch_as_pid1(kind, APP)
    server = namespaced.server
    grandchildren = []
    for _ in range(5):
        response = get(server, "/double-fork?ms=200")
        assert response.status == 200
        grandchildren.append(json.loads(response.body)["grandchild"])
    assert len(set(grandchildren)) == 5

    def zombies() -> dict[int, tuple[str, str, int]]:
        processes = namespace_processes(server.pid)
        return {pid: info for pid, info in processes.items() if info[1] == "Z"}

    # The sleeps end after 0.2 s, and the reaper gets a moment after that.
    time.sleep(0.6)
    left = wait_for(lambda: not zombies(), timeout=2.0)
    assert left, f"zombies in the namespace: {zombies()}"
    sleeps = [pid for pid, info in namespace_processes(server.pid).items() if info[0] == "sleep"]
    assert sleeps == []
    assert server.proc is not None and server.proc.poll() is None


@pytest.mark.parametrize("mode", ["run", "thread", "asyncio"])
def test_subprocess_status_kept_as_pid1(
    kind: str, launch_as_pid1: Callable[..., NamespacedServer], mode: str
) -> None:
    namespaced = launch_as_pid1(kind, APP)
    server = namespaced.server
    target = f"/exit-status?mode={mode}"
    for _ in range(5):
        response = get(server, target)
        assert response.status == 200, response.body
        assert json.loads(response.body) == {"mode": mode, "returncode": 7}

    # Orphans that the server reaps at the same time must not take the app's status.
    with ThreadPoolExecutor(max_workers=8) as pool:
        forks = [pool.submit(get, server, "/double-fork?ms=50") for _ in range(4)]
        runs = [pool.submit(get, server, target) for _ in range(12)]
        responses = [future.result(timeout=20) for future in runs]
        assert all(future.result(timeout=20).status == 200 for future in forks)
    for response in responses:
        assert response.status == 200, response.body
        assert json.loads(response.body) == {"mode": mode, "returncode": 7}


@pytest.mark.fastserve_only
def test_killed_worker_replaced_under_load(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    old = wait_worker_count(server, 1)
    (old_pid,) = old

    with ThreadPoolExecutor(max_workers=1) as pool:
        during = pool.submit(run_load, server, 2.0)
        time.sleep(0.5)
        os.kill(old_pid, signal.SIGKILL)
        new = wait_for(lambda: worker_pids(server.pid) - old, timeout=WORKER_CHANGE_TIMEOUT_S)
        assert new, f"no replacement worker appeared\nstderr:\n{server.stderr_text()}"
        recovered = wait_for(lambda: health_ok(server), timeout=WORKER_CHANGE_TIMEOUT_S)
        assert recovered, server.stderr_text()
        load = during.result(timeout=30)

    assert server.proc is not None and server.proc.poll() is None
    assert load.sent > 0
    after = run_load(server, 0.5)
    assert after.sent > 0
    assert after.failures == []
    assert set(after.pids) == new
    assert old_pid not in worker_pids(server.pid)


@pytest.mark.parametrize(
    ("app", "message"),
    [
        pytest.param(
            "broken_import:app",
            "Traceback",
            id="import-error",
            marks=pytest.mark.uvicorn_differs(reason="restarts workers that fail to import"),
        ),
        pytest.param(
            "lifespan_apps:failing_startup",
            STARTUP_FAILURE_MESSAGE,
            id="startup-failed",
            marks=pytest.mark.uvicorn_differs(reason="every worker fails, then exits 0"),
        ),
    ],
)
def test_start_failure_exits_3_once(kind: str, tmp_path: Path, app: str, message: str) -> None:
    argv = server_command(kind) + [app, "--workers", "3"]
    argv += ["--host", "127.0.0.1", "--port", str(free_port()), "--app-dir", str(APPS_DIR)]
    server = Server(argv, log_dir=tmp_path / "logs")
    server.spawn()
    started = time.monotonic()
    try:
        code = server.wait(timeout=START_FAILURE_EXIT_S)
    except subprocess.TimeoutExpired:
        for pid in [*child_pids(server.pid), server.pid]:
            kill_if_alive(pid)
        server.wait(timeout=5)
        pytest.fail(
            f"still running {START_FAILURE_EXIT_S} s after start; stderr:\n{server.stderr_text()}"
        )
    elapsed = time.monotonic() - started
    stderr = server.stderr_text()
    assert code == 3, stderr
    assert elapsed < START_FAILURE_EXIT_S
    # Printed by the first worker only: the others are not started.
    assert stderr.count(message) == 1, stderr


@pytest.mark.fastserve_only
def test_sighup_replaces_workers_without_errors(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--workers", "2")
    old = wait_worker_count(server, 2)
    load_s = 4.0

    with ThreadPoolExecutor(max_workers=4) as pool:
        loads = [pool.submit(run_load, server, load_s) for _ in range(4)]
        time.sleep(0.5)
        server.signal(signal.SIGHUP)
        results = [future.result(timeout=load_s + 30) for future in loads]

    def replaced() -> set[int] | None:
        current = worker_pids(server.pid)
        return current if len(current) == 2 and not current & old else None

    new = wait_for(replaced, timeout=WORKER_CHANGE_TIMEOUT_S)
    assert new, f"workers before {old}, now {worker_pids(server.pid)}\n{server.stderr_text()}"
    failures = [failure for result in results for failure in result.failures]
    sent = sum(result.sent for result in results)
    assert failures == [], f"{len(failures)} of {sent} requests failed: {failures[:5]}"
    served_last = {result.pids[-1] for result in results if result.pids}
    assert served_last <= new
    assert server.proc is not None and server.proc.poll() is None


@pytest.mark.fastserve_only
def test_ttin_ttou_change_worker_count(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--workers", "2")
    wait_worker_count(server, 2)
    for expected in (3, 4):
        server.signal(signal.SIGTTIN)
        wait_worker_count(server, expected)
    for expected in (3, 2, 1):
        server.signal(signal.SIGTTOU)
        wait_worker_count(server, expected)
    # The last worker stays.
    server.signal(signal.SIGTTOU)
    time.sleep(0.5)
    assert len(worker_pids(server.pid)) == 1
    assert get(server, "/ok").status == 200


@pytest.mark.fastserve_only
def test_limit_max_requests_replaces_worker(kind: str, launch: Launch) -> None:
    limit = 20
    server = launch(kind, APP, "--limit-max-requests", str(limit))
    pids: list[int] = []
    failures: list[str] = []
    deadline = time.monotonic() + 20
    while len(pids) < 60 or (len(set(pids)) < 3 and time.monotonic() < deadline):
        try:
            response = get(server, "/pid")
        except (OSError, IncompleteResponseError) as error:
            failures.append(repr(error))
            continue
        assert response.status == 200, response.body
        pids.append(json.loads(response.body)["pid"])
        time.sleep(0.02)

    changes = sum(1 for before, after in zip(pids, pids[1:], strict=False) if before != after)
    assert failures == []
    assert changes >= 2, f"pid changes in {len(pids)} requests: {changes}\n{server.stderr_text()}"
    # Each worker serves at least its limit before it is replaced.
    assert pids.count(pids[0]) >= limit
    assert len(pids) <= 120, f"the second replacement needed {len(pids)} requests"


@pytest.mark.uvicorn_differs(reason="only a second SIGINT forces the exit, not SIGTERM")
def test_second_sigterm_ends_stuck_drain(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--timeout-graceful-shutdown", "20")
    thread, outcome, _ = get_in_thread(server, "/sleep?ms=30000")
    read_record(server.record_dir, "sleep-started")
    server.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert server.proc is not None and server.proc.poll() is None, "exited on the first signal"

    signalled_at = time.monotonic()
    server.signal(signal.SIGTERM)
    try:
        code, exited_at = wait_exit(server, timeout=5)
    except subprocess.TimeoutExpired:
        # Kill the stuck server now, because the fixture's SIGTERM would wait out the drain.
        for pid in [*child_pids(server.pid), server.pid]:
            kill_if_alive(pid)
        pytest.fail(f"still running 5 s after the second SIGTERM\n{server.stderr_text()}")
    assert exited_at - signalled_at < 1.5, server.stderr_text()
    assert code != 0
    thread.join(timeout=5)
    assert not isinstance(outcome[0], Response) or outcome[0].status != 200


@pytest.mark.fastserve_only
def test_web_concurrency_sets_worker_count(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, env={"WEB_CONCURRENCY": "3"})
    wait_worker_count(server, 3)


def lines_with(text: str, message: str, pid: int | None = None) -> list[str]:
    """Return the log lines of `text` that contain `message` and, if given, the field pid=PID."""
    return [
        line
        for line in text.splitlines()
        if message in line and (pid is None or f"pid={pid}" in line.split())
    ]


@pytest.mark.fastserve_only
def test_supervisor_logs_worker_lifecycle(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    (first,) = wait_worker_count(server, 1)
    os.kill(first, signal.SIGKILL)
    replaced = wait_for(lambda: worker_pids(server.pid) - {first}, WORKER_CHANGE_TIMEOUT_S)
    assert replaced, server.stderr_text()
    (second,) = replaced
    ready = wait_for(lambda: lines_with(server.stderr_text(), "worker ready", second), 10)
    assert ready, server.stderr_text()
    server.signal(signal.SIGTERM)
    assert wait_exit(server, timeout=15)[0] == 0
    log = server.stderr_text()

    for pid in (first, second):
        assert len(lines_with(log, "worker started", pid)) == 1, log
        assert len(lines_with(log, "worker ready", pid)) == 1, log
    exited = lines_with(log, "exited", first)
    assert len(exited) == 1, log
    assert "SIGKILL" in exited[0]
    assert "restarting" in exited[0]
    assert len(lines_with(log, "stopping workers")) == 1, log
    stopped = lines_with(log, "worker stopped", second)
    assert len(stopped) == 1, log
    assert "exit code 0" in stopped[0]
