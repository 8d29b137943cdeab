"""The server as a process: signals and draining, exit codes, --version, ports and listeners."""

import json
import platform
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import Launch
from rawhttp import IncompleteResponseError, Response
from servers import APPS_DIR, Server, free_port, read_record, server_command, server_env

# Seconds a command that should exit at once (bad option, bad app) may take.
CLI_TIMEOUT_S = 20


def run_cli(
    kind: str, *args: str, app_dir: Path | None = APPS_DIR, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess:
    """Run the server with `args` until it exits and return the result, output as text."""
    argv = server_command(kind) + list(args)
    if app_dir is not None:
        argv += ["--app-dir", str(app_dir)]
    return subprocess.run(
        argv,
        env=server_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    """Return the non-empty lines of `stderr`."""
    return [line for line in stderr.splitlines() if line.strip()]


def request_in_thread(
    server: Server, target: str
) -> tuple[threading.Thread, list[Response | OSError | IncompleteResponseError]]:
    """Send GET `target` from a thread that appends the response, or the error, to a list."""
    responses: list[Response | OSError | IncompleteResponseError] = []

    def run() -> None:
        try:
            with server.open(timeout=20) as conn:
                responses.append(conn.request("GET", target))
        except (OSError, IncompleteResponseError) as error:
            responses.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, responses


@pytest.mark.parametrize(
    "signum",
    [
        pytest.param(
            signal.SIGTERM,
            id="sigterm",
            marks=pytest.mark.uvicorn_differs(reason="re-raises SIGTERM after draining, exit -15"),
        ),
        pytest.param(signal.SIGINT, id="sigint"),
    ],
)
def test_signal_drains_in_flight_request(kind: str, launch: Launch, signum: int) -> None:
    server = launch(kind, "lifespan_apps:app")
    thread, responses = request_in_thread(server, "/sleep?ms=2000")
    read_record(server.record_dir, "sleep-started")
    server.signal(signum)
    thread.join(timeout=15)
    code = server.wait(timeout=15)
    assert len(responses) == 1
    response = responses[0]
    assert isinstance(response, Response), f"{response!r}\nstderr:\n{server.stderr_text()}"
    assert response.status == 200
    assert response.body == b"slept 2000 ms"
    assert code == 0, server.stderr_text()
    assert read_record(server.record_dir, "lifespan-shutdown") == {"ran": True}


def test_sigterm_stops_accepting(kind: str, launch: Launch) -> None:
    server = launch(kind, "lifespan_apps:app")
    thread, _ = request_in_thread(server, "/sleep?ms=1500")
    read_record(server.record_dir, "sleep-started")
    server.signal(signal.SIGTERM)
    thread.join(timeout=15)
    server.wait(timeout=15)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_bad_option_exits_2(kind: str) -> None:
    result = run_cli(kind, "raw_apps:hello", "--no-such-option")
    assert result.returncode == 2
    assert "--no-such-option" in result.stderr


@pytest.mark.uvicorn_differs(reason="exits 1 when importing the app module raises")
def test_import_error_exits_3_with_traceback(kind: str) -> None:
    result = run_cli(kind, "broken_import:app")
    assert result.returncode == 3
    assert "Traceback" in result.stderr
    assert "broken_import raises on purpose during import" in result.stderr


@pytest.mark.uvicorn_differs(reason="names the module but does not list sys.path")
def test_missing_module_exits_3_listing_sys_path(kind: str) -> None:
    result = run_cli(kind, "no_such_module_here:app")
    assert result.returncode == 3
    assert "no_such_module_here" in result.stderr
    assert str(APPS_DIR) in result.stderr


def test_missing_attribute_exits_3_in_one_line(kind: str) -> None:
    result = run_cli(kind, "raw_apps:no_such_attribute")
    assert result.returncode == 3
    naming = [line for line in error_lines(result.stderr) if "not found" in line]
    assert len(naming) == 1, result.stderr
    assert "no_such_attribute" in naming[0]
    assert "raw_apps" in naming[0]
    assert "Traceback" not in result.stderr


@pytest.mark.uvicorn_differs(reason="starts and fails only when a request arrives")
def test_non_callable_app_exits_3(kind: str) -> None:
    # A server that accepts the value serves until the timeout instead of exiting.
    result = run_cli(kind, "raw_apps:NOT_AN_APP", timeout=5)
    assert result.returncode == 3
    assert "NOT_AN_APP" in result.stderr


def test_factory_app_served(kind: str, launch: Launch) -> None:
    server = launch(kind, "factory_app:create_app", "--factory")
    with server.open() as conn:
        response = conn.request("GET", "/")
    assert response.status == 200
    assert response.body == b"made by the factory"


@pytest.mark.fastserve_only
def test_version_names_fastserve_python_and_hyper(kind: str) -> None:
    result = run_cli(kind, "--version", app_dir=None)
    output = result.stdout + result.stderr
    assert result.returncode == 0
    assert "fastserve" in output
    # NOTE: assumes the binary embeds the Python that runs the tests (PYO3_PYTHON).
    assert platform.python_version() in output
    assert "hyper" in output


@pytest.mark.fastserve_only
def test_demo_app_served_without_app(kind: str, launch: Launch) -> None:
    server = launch(kind, None, app_dir=None)
    with server.open() as conn:
        response = conn.request("GET", "/")
    assert response.status == 200
    assert json.loads(response.body)["message"] == "Hello from fastserve"


@pytest.mark.fastserve_only
def test_port_env_honoured(kind: str, launch: Launch) -> None:
    port = free_port()
    env = {"PORT": str(port)}
    server = launch(
        kind, "raw_apps:hello", "--host", "127.0.0.1", env=env, port_flag=False, port=port
    )
    with server.open() as conn:
        assert conn.request("GET", "/").status == 200


@pytest.mark.fastserve_only
def test_fastserve_port_beats_port(kind: str, launch: Launch) -> None:
    port, ignored = free_port(), free_port()
    env = {"PORT": str(ignored), "FASTSERVE_PORT": str(port)}
    server = launch(
        kind, "raw_apps:hello", "--host", "127.0.0.1", env=env, port_flag=False, port=port
    )
    with server.open() as conn:
        assert conn.request("GET", "/").status == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ignored), timeout=2).close()


@pytest.mark.fastserve_only
def test_port_flag_beats_env(kind: str, launch: Launch) -> None:
    port, ignored_env, ignored_port = free_port(), free_port(), free_port()
    env = {"PORT": str(ignored_port), "FASTSERVE_PORT": str(ignored_env)}
    server = launch(kind, "raw_apps:hello", env=env, port=port)
    with server.open() as conn:
        assert conn.request("GET", "/").status == 200
    for ignored in (ignored_env, ignored_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ignored), timeout=2).close()


def test_unix_socket_served(kind: str, launch: Launch, tmp_path: Path) -> None:
    path = tmp_path / "server.sock"
    server = launch(kind, "raw_apps:app", uds=path, port_flag=False)
    with server.open() as conn:
        response = conn.request("GET", "/hello")
    assert response.status == 200
    assert response.body == b"Hello, world!"


def test_inherited_fd_served(kind: str, launch: Launch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        server = launch(
            kind, "raw_apps:app", "--fd", str(fd), port_flag=False, port=port, pass_fds=(fd,)
        )
    with server.open() as conn:
        response = conn.request("GET", "/hello")
    assert response.status == 200
    assert response.body == b"Hello, world!"
