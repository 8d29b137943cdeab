"""FastAPI and Starlette end to end through httpx, on each server and compared across them."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from servers import APPS_DIR, FASTSERVE, UVICORN, Server

SharedServer = Callable[..., Server]

STATIC_TEXT = (APPS_DIR / "static" / "sample.txt").read_bytes()


@dataclass(frozen=True)
class Case:
    """One request to the FastAPI app and what must come back."""

    method: str
    path: str
    status: int
    json: object = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    payload: object = None


FASTAPI_CASES = {
    "root": Case("GET", "/", 200, json={"app": "fastapi", "status": "ok"}),
    "path and query": Case(
        "GET",
        "/items/42",
        200,
        params={"q": "caf\u00e9 au lait", "limit": "3"},
        json={"item_id": 42, "q": "caf\u00e9 au lait", "limit": 3},
    ),
    "path parameter invalid": Case("GET", "/items/not-a-number", 422),
    "pydantic body": Case(
        "POST",
        "/items",
        201,
        payload={"name": "widget", "price": 2.5, "quantity": 4, "tags": ["a"]},
        json={
            "item": {"name": "widget", "price": 2.5, "quantity": 4, "tags": ["a"]},
            "total": 10.0,
        },
    ),
    "pydantic body invalid": Case("POST", "/items", 422, payload={"name": "", "price": -1}),
    "dependency accepted": Case(
        "GET", "/secure", 200, headers={"x-token": "secret"}, json={"token_ok": True}
    ),
    "dependency rejected": Case(
        "GET", "/secure", 401, json={"detail": "missing or invalid x-token"}
    ),
    "streaming response": Case(
        "GET", "/stream", 200, params={"lines": "3"}, body=b"line 0\nline 1\nline 2\n"
    ),
    "file response": Case("GET", "/file", 200, body=STATIC_TEXT),
    "custom exception handler": Case(
        "GET",
        "/teapot",
        418,
        params={"flavour": "oolong"},
        json={"error": "teapot", "flavour": "oolong"},
    ),
    "http exception": Case("GET", "/missing", 404, json={"detail": "no such thing"}),
    "unknown route": Case("GET", "/no/such/route", 404, json={"detail": "Not Found"}),
    "openapi schema": Case("GET", "/openapi.json", 200),
    "swagger docs": Case("GET", "/docs", 200),
}


def send_case(client: httpx.Client, case: Case) -> httpx.Response:
    """Send the request that `case` describes."""
    return client.request(
        case.method, case.path, params=case.params, headers=case.headers, json=case.payload
    )


@pytest.fixture
def fastapi_server(kind: str, shared_server: SharedServer) -> Server:
    """Return the shared server of `kind` that serves fastapi_app:app."""
    return shared_server(kind, "fastapi_app:app")


@pytest.mark.parametrize("name", list(FASTAPI_CASES))
def test_fastapi_route(fastapi_server: Server, name: str) -> None:
    case = FASTAPI_CASES[name]
    with httpx.Client(base_url=fastapi_server.url, timeout=10) as client:
        response = send_case(client, case)
    assert response.status_code == case.status
    assert response.headers["x-middleware"] == "applied"
    if case.json is not None:
        assert response.json() == case.json
    if case.body is not None:
        assert response.content == case.body


def test_fastapi_docs_and_schema(fastapi_server: Server) -> None:
    with httpx.Client(base_url=fastapi_server.url, timeout=10) as client:
        docs = client.get("/docs")
        schema = client.get("/openapi.json").json()
    assert docs.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in docs.text
    assert "/openapi.json" in docs.text
    assert schema["info"]["title"] == "fastserve test app"
    assert "/items/{item_id}" in schema["paths"]
    assert "Item" in schema["components"]["schemas"]


def test_fastapi_background_task_runs(fastapi_server: Server) -> None:
    note = f"note-{time.monotonic_ns()}"
    with httpx.Client(base_url=fastapi_server.url, timeout=10) as client:
        queued = client.post("/background", params={"note": note})
        assert queued.status_code == 202
        assert queued.json() == {"queued": note}
        deadline = time.monotonic() + 5
        while note not in client.get("/background").json()["notes"]:
            assert time.monotonic() < deadline, "the background task did not run within 5 s"
            time.sleep(0.05)


@pytest.mark.fastserve_only
@pytest.mark.parametrize("name", list(FASTAPI_CASES))
def test_fastapi_matches_uvicorn(kind: str, shared_server: SharedServer, name: str) -> None:
    case = FASTAPI_CASES[name]
    responses = []
    for server_kind in (FASTSERVE, UVICORN):
        server = shared_server(server_kind, "fastapi_app:app")
        with httpx.Client(base_url=server.url, timeout=10) as client:
            responses.append(send_case(client, case))
    ours, theirs = responses
    assert ours.status_code == theirs.status_code
    assert ours.content == theirs.content
    for header in ("content-type", "x-middleware", "etag", "last-modified"):
        assert ours.headers.get(header) == theirs.headers.get(header), header


def test_starlette_app(kind: str, shared_server: SharedServer) -> None:
    server = shared_server(kind, "starlette_app:app")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        home = client.get("/")
        user = client.get("/users/ada", params={"lang": "en"})
        echoed = client.post("/echo", json={"a": 1, "b": [2, 3]})
    assert home.status_code == 200
    assert home.text == "starlette home"
    assert home.headers["x-starlette-middleware"] == "yes"
    assert user.json() == {"name": "ada", "query": {"lang": "en"}}
    assert echoed.json() == {"received": {"a": 1, "b": [2, 3]}, "keys": 2}


def test_static_file_fixture_exists() -> None:
    """Guard the file the /file route serves, so a missing file is not read as a server bug."""
    assert Path(APPS_DIR / "static" / "sample.txt").stat().st_size > 0
