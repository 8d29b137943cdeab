"""Response headers the server adds, and --env-file."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from servers import Server

Launch = Callable[..., Server]

APP = "proxy_apps:app"


def test_header_option_added_unless_app_sets_it(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--header", "X-Frame-Options: DENY", "--header", "x-team:ops")
    with server.open() as conn:
        plain = conn.request("GET", "/")
        app_set = conn.request("GET", "/app-headers")
    assert plain.header("x-frame-options") == b"DENY"
    assert plain.header("x-team") == b"ops"
    assert app_set.header("x-frame-options") == b"DENY"
    assert app_set.header_all("x-team")[-1] == b"app"


@pytest.mark.uvicorn_differs(reason="uvicorn 0.55 sends its default headers and the app's")
def test_header_option_not_duplicated(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--header", "x-team:ops")
    with server.open() as conn:
        response = conn.request("GET", "/app-headers")
    assert response.header_all("x-team") == [b"app"]


@pytest.mark.fastserve_only
def test_default_server_header(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    with server.open() as conn:
        plain = conn.request("GET", "/")
        app_set = conn.request("GET", "/app-headers")
    assert plain.header_all("server") == [b"fastserve"]
    assert app_set.header_all("server") == [b"app-server"]


def test_no_server_header(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--no-server-header")
    with server.open() as conn:
        response = conn.request("GET", "/")
    assert response.header("server") is None
    assert response.header("date") is not None


def test_no_date_header(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--no-date-header")
    with server.open() as conn:
        response = conn.request("GET", "/")
    assert response.header("date") is None
    assert response.header("server") is not None


@pytest.mark.fastserve_only
def test_server_made_response_gets_default_headers(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--header", "x-team:ops", "--limit-request-body", "1")
    with server.open() as conn:
        response = conn.request("POST", "/body", body=b"xx")
    assert response.status == 413
    assert response.header("x-team") == b"ops"
    assert response.header("server") == b"fastserve"


def test_env_file_loaded_before_import(kind: str, launch: Launch, tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text(
        "# settings\n"
        "export GREETING='hello world'\n"
        'MULTI="a\\nb"\n'
        "BASE=/srv\n"
        "DATA=${BASE}/data\n"
        "KEEP=from-file\n"
    )
    server = launch(kind, APP, "--env-file", str(env_file), env={"KEEP": "from-env"})

    def value(name: str) -> object:
        with server.open() as conn:
            return json.loads(conn.request("GET", f"/env?name={name}").body)

    assert value("GREETING") == "hello world"
    assert value("MULTI") == "a\nb"
    assert value("DATA") == "/srv/data"
    assert value("KEEP") == "from-env"


def test_env_file_sets_forwarded_allow_ips(kind: str, launch: Launch, tmp_path: Path) -> None:
    env_file = tmp_path / "proxy.env"
    env_file.write_text("FORWARDED_ALLOW_IPS=10.0.0.1\n")
    server = launch(kind, APP, "--env-file", str(env_file))
    with server.open() as conn:
        response = conn.request("GET", "/scope", [("X-Forwarded-For", "1.2.3.4")])
    assert json.loads(response.body)["client"][0] == "127.0.0.1"


@pytest.mark.fastserve_only
def test_missing_env_file_exits_2(kind: str, launch: Launch, tmp_path: Path) -> None:
    server = launch(kind, APP, "--env-file", str(tmp_path / "absent.env"), start=False)
    assert server.wait(10) == 2
    assert "absent.env" in server.stderr_text()
