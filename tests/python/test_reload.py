"""`--reload`: the supervisor replaces the worker when a watched file changes."""

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from servers import FASTSERVE, Server

pytestmark = pytest.mark.fastserve_only

Launch = Callable[..., Server]

APP_TEMPLATE = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"{version}"}})
"""

# Time allowed for inotify, the reload delay and a worker start.
RELOAD_TIMEOUT_S = 15.0


def write_app(folder: Path, version: str) -> None:
    """Write the app module whose response body is `version`."""
    (folder / "reload_app.py").write_text(APP_TEMPLATE.format(version=version))


def body_of(server: Server) -> bytes | None:
    """Return the body of GET /, or None if no worker responds right now."""
    try:
        with server.open(timeout=2) as conn:
            return conn.request("GET", "/").body
    except OSError:
        return None


def wait_for_body(server: Server, expected: bytes) -> None:
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    seen = None
    while time.monotonic() < deadline:
        seen = body_of(server)
        if seen == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"expected {expected!r} after reload, last body {seen!r}")


def launch_reloading(kind: str, launch: Launch, folder: Path) -> Server:
    """Start the app in `folder` with --reload watching that folder."""
    args = ("--reload", "--reload-dir", str(folder), "--lifespan", "off")
    return launch(kind, "reload_app:app", *args, app_dir=folder)


def test_reload_serves_changed_code(kind: str, launch: Launch, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = launch_reloading(kind, launch, tmp_path)
    assert body_of(server) == b"v1"

    write_app(tmp_path, "v2")
    wait_for_body(server, b"v2")
    assert "file changed, restarting the worker" in server.stderr_text()


def test_reload_survives_syntax_error(kind: str, launch: Launch, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = launch_reloading(kind, launch, tmp_path)
    (tmp_path / "reload_app.py").write_text("def broken(:\n")
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while "waiting for a file change" not in server.stderr_text():
        assert time.monotonic() < deadline, server.stderr_text()
        time.sleep(0.2)
    assert server.proc is not None
    assert server.proc.poll() is None, "the supervisor must keep running"

    write_app(tmp_path, "v3")
    wait_for_body(server, b"v3")


def test_reload_ignores_other_files(kind: str, launch: Launch, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = launch_reloading(kind, launch, tmp_path)
    mark = server.stderr_size()
    (tmp_path / "notes.txt").write_text("not python")
    (tmp_path / ".hidden.py").write_text("x = 1")
    time.sleep(1.5)
    assert "file changed" not in server.stderr_since(mark)
    assert body_of(server) == b"v1"
    assert kind == FASTSERVE
