"""The built-in /health endpoint and the `fastserve health` probe command.

The worker serves /health without running Python: 200 when ready,
503 while starting, draining or while the event loop is blocked. uvicorn has
no such endpoint, so every test here is fastserve_only.
"""

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import Launch
from rawhttp import Response
from servers import Server, fastserve_binary, free_port, read_record, server_env

APP = "supervisor_apps:app"
# Seconds `fastserve health` gets in these tests. Every probe must finish within it.
PROBE_TIMEOUT_S = 2.0

# Seconds /health may stay 503 after a blocked loop runs again: the 200 ms
# heartbeat interval of the worker, with room for a loaded machine.
HEARTBEAT_RECOVERY_S = 0.5

pytestmark = pytest.mark.fastserve_only


def request(server: Server, method: str, target: str, timeout: float = 5.0) -> Response:
    """Send one request on a new connection and return the response."""
    with server.open(timeout=timeout) as conn:
        return conn.request(method, target, [("connection", "close")])


def run_probe(*args: str, env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Run `fastserve health ARGS` and return its exit code, its duration and its output."""
    argv = [str(fastserve_binary()), "health", "--timeout", str(PROBE_TIMEOUT_S), *args]
    started = time.monotonic()
    result = subprocess.run(
        argv,
        env=server_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S + 10,
    )
    return result.returncode, time.monotonic() - started, result.stdout + result.stderr


def test_health_returns_ok_json(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    response = request(server, "GET", "/health")
    assert response.status == 200
    assert json.loads(response.body) == {"status": "ok"}
    assert response.header("content-type") == b"application/json"
    assert response.header("cache-control") == b"no-store"


def test_health_head_has_no_body(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    with server.open() as conn:
        response = conn.request("HEAD", "/health")
        # A body sent after a HEAD response would be read as the next response.
        follow_up = conn.request("GET", "/ok", [("connection", "close")])
    assert response.status == 200
    assert response.body == b""
    assert follow_up.status == 200
    assert follow_up.body == b"ok"


def test_health_post_gets_405(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    response = request(server, "POST", "/health")
    assert response.status == 405
    allowed = {method.strip() for method in (response.header("allow") or b"").split(b",")}
    assert allowed == {b"GET", b"HEAD"}


def test_no_health_hands_path_to_app(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--no-health")
    response = request(server, "GET", "/health")
    assert response.status == 200
    assert response.body == b"served by the app"


def test_health_path_option_moves_endpoint(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--health-path", "/ready")
    moved = request(server, "GET", "/ready")
    assert moved.status == 200
    assert json.loads(moved.body) == {"status": "ok"}
    old_path = request(server, "GET", "/health")
    assert old_path.body == b"served by the app"


def test_health_503_while_starting(kind: str, launch: Launch) -> None:
    server = launch(kind, "supervisor_apps:slow_startup", start=False)
    seen: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            response = request(server, "GET", "/health", timeout=2)
        except OSError:
            time.sleep(0.05)
            continue
        seen.append((response.status, response.body))
        if response.status == 200:
            break
        time.sleep(0.05)
    statuses = [status for status, _ in seen]
    assert 503 in statuses, seen
    assert statuses[-1] == 200, seen
    starting = [body for status, body in seen if status == 503]
    assert json.loads(starting[0]) == {"status": "starting"}


def test_health_blocked_loop_reports_503(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--health-loop-timeout", "1")
    assert request(server, "GET", "/health").status == 200
    outcome: list[Response] = []
    blocker = threading.Thread(
        target=lambda: outcome.append(request(server, "GET", "/block?ms=3000", timeout=20)),
        daemon=True,
    )
    blocker.start()
    read_record(server.record_dir, "block-started")
    time.sleep(1.6)

    started = time.monotonic()
    during = request(server, "GET", "/health")
    # The worker returns it from the tokio side while the Python thread is blocked.
    assert time.monotonic() - started < 0.5
    assert during.status == 503
    assert json.loads(during.body)["status"] == "blocked"

    blocker.join(timeout=15)
    unblocked_at = time.monotonic()
    assert outcome and outcome[0].status == 200
    # The loop records its next heartbeat within one interval after it runs again.
    after = request(server, "GET", "/health")
    while after.status != 200 and time.monotonic() - unblocked_at < HEARTBEAT_RECOVERY_S:
        time.sleep(0.02)
        after = request(server, "GET", "/health")
    assert after.status == 200, f"still {after.body!r} {HEARTBEAT_RECOVERY_S} s after unblocking"
    assert json.loads(after.body) == {"status": "ok"}


def test_probe_exits_0_when_healthy(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    code, elapsed, output = run_probe("--port", str(server.port))
    assert code == 0, output
    assert elapsed < PROBE_TIMEOUT_S


def test_probe_reads_port_env(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    code, elapsed, output = run_probe(env={"PORT": str(server.port)})
    assert code == 0, output
    assert elapsed < PROBE_TIMEOUT_S


def test_probe_over_unix_socket(kind: str, launch: Launch, tmp_path: Path) -> None:
    path = tmp_path / "server.sock"
    launch(kind, APP, uds=path, port_flag=False)
    code, _, output = run_probe("--uds", str(path))
    assert code == 0, output


def test_probe_exits_1_while_draining(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--shutdown-delay", "3")
    server.signal(signal.SIGTERM)
    time.sleep(0.3)
    code, elapsed, output = run_probe("--port", str(server.port))
    assert code == 1, output
    assert "503" in output
    assert elapsed < PROBE_TIMEOUT_S
    assert server.proc is not None and server.proc.poll() is None


def test_probe_exits_1_on_closed_port(kind: str) -> None:
    code, elapsed, output = run_probe("--port", str(free_port()))
    assert code == 1, output
    assert elapsed < PROBE_TIMEOUT_S


def test_probe_times_out_on_silent_listener(kind: str) -> None:
    # The kernel completes the handshake, but nothing ever reads or writes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        code, elapsed, output = run_probe("--port", str(listener.getsockname()[1]))
    assert code == 1, output
    assert elapsed < PROBE_TIMEOUT_S + 1.0
    assert elapsed >= PROBE_TIMEOUT_S - 0.2
