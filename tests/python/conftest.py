"""Fixtures that start fastserve and uvicorn, and the `kind` parametrisation over them.

A test that takes the `kind` argument runs once per server kind selected with
FASTSERVE_TEST_SERVERS (default: both). `@pytest.mark.fastserve_only` restricts it to
fastserve. `@pytest.mark.uvicorn_differs(reason=...)` keeps it on uvicorn as a
non-strict xfail, so the report records what uvicorn does without failing.
"""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servers import APPS_DIR, FASTSERVE, SERVER_KINDS, UVICORN, Server, free_port, server_command

Launch = Callable[..., Server]


# Comma-separated server kinds to test. An environment variable rather than a
# command-line option, because pytest reads options only from the conftest.py
# of the folders named on the command line.
SERVERS_ENV = "FASTSERVE_TEST_SERVERS"


def selected_kinds() -> list[str]:
    """Return the server kinds named in FASTSERVE_TEST_SERVERS (default: all)."""
    value = os.environ.get(SERVERS_ENV, ",".join(SERVER_KINDS))
    kinds = [kind.strip() for kind in value.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(SERVER_KINDS))
    if unknown:
        raise pytest.UsageError(
            f"invalid {SERVERS_ENV}={value!r}: unknown {unknown}, expected some of {SERVER_KINDS}"
        )
    return kinds


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kind" not in metafunc.fixturenames:
        return
    kinds = selected_kinds()
    if metafunc.definition.get_closest_marker("fastserve_only"):
        kinds = [kind for kind in kinds if kind == FASTSERVE]
    metafunc.parametrize("kind", kinds)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("uvicorn_differs")
        callspec = getattr(item, "callspec", None)
        if marker is None or callspec is None or callspec.params.get("kind") != UVICORN:
            continue
        reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
        item.add_marker(pytest.mark.xfail(reason=f"uvicorn differs: {reason}", strict=False))


def build_argv(
    kind: str,
    app: str | None,
    args: tuple[str, ...],
    port: int | None,
    app_dir: Path | None,
) -> list[str]:
    """Return the argv for `kind` serving `app` with the shared options and `args`."""
    argv = server_command(kind)
    if app is not None:
        argv.append(app)
    if port is not None:
        argv += ["--host", "127.0.0.1", "--port", str(port)]
    if app_dir is not None:
        argv += ["--app-dir", str(app_dir)]
    return argv + list(args)


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    """Return an empty folder where apps write their records (TEST_RECORD_DIR)."""
    folder = tmp_path / "records"
    folder.mkdir()
    return folder


@pytest.fixture
def launch(tmp_path: Path, record_dir: Path) -> Iterator[Launch]:
    """Return `launch(kind, app, *args, ...)`, which starts a server stopped after the test.

    `env` and `cwd` apply to the process. With `port_flag=False` no --host or
    --port is passed, and the test gives `port` or `uds` for the readiness
    probe. `uds` adds --uds, `pass_fds` passes listening sockets, `app_dir`
    defaults to tests/apps (None passes no --app-dir), and `start=False` only
    spawns the process.
    """
    servers: list[Server] = []

    def start_server(
        kind: str,
        app: str | None = None,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        port_flag: bool = True,
        port: int | None = None,
        uds: Path | None = None,
        pass_fds: tuple[int, ...] = (),
        app_dir: Path | None = APPS_DIR,
        start: bool = True,
    ) -> Server:
        if port_flag and uds is None:
            port = port or free_port()
        flag_port = port if port_flag and uds is None else None
        argv = build_argv(kind, app, args, flag_port, app_dir)
        if uds is not None:
            argv += ["--uds", str(uds)]
        server = Server(
            argv,
            log_dir=tmp_path / "logs",
            env=env,
            cwd=cwd,
            port=port,
            uds=uds,
            pass_fds=pass_fds,
            record_dir=record_dir,
        )
        servers.append(server)
        return server.start() if start else server.spawn()

    yield start_server
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    """Return `shared_server(kind, app, *args)`, which keeps one server per arguments for the run.

    Use it only in tests that leave the server as they found it. A test that
    reads stderr takes a mark with `stderr_size()` first.
    """
    servers: dict[tuple[str, str, tuple[str, ...]], Server] = {}
    started: list[Server] = []

    def get_server(kind: str, app: str = "raw_apps:app", *args: str) -> Server:
        key = (kind, app, args)
        if key not in servers:
            base = tmp_path_factory.mktemp(f"shared-{kind}")
            records = base / "records"
            records.mkdir()
            argv = build_argv(kind, app, args, free_port(), APPS_DIR)
            port = int(argv[argv.index("--port") + 1])
            server = Server(argv, log_dir=base, port=port, record_dir=records)
            started.append(server)
            server.start()
            servers[key] = server
        server = servers[key]
        if server.proc is not None and server.proc.poll() is not None:
            pytest.fail(f"shared server exited early; stderr:\n{server.stderr_text()}")
        return server

    yield get_server
    for server in started:
        server.stop()
