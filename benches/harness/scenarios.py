"""The load scenarios and the check each one makes on a response before the load starts."""

import http.client
import json
from dataclasses import dataclass
from pathlib import Path

APPS_DIR = Path(__file__).resolve().parent.parent / "apps"

ECHO_BODY_SIZE = 1024
STREAM_BODY_SIZE = 64 * 256
HELLO_BODY = b"Hello, world!"
IDLE_CONNECTIONS = 1000


@dataclass(frozen=True)
class Scenario:
    """One load: the app, the request wrk repeats, and how many idle connections stay open."""

    key: str
    title: str
    app: str
    path: str
    method: str = "GET"
    body: bytes | None = None
    content_type: str = "application/octet-stream"
    app_dir: Path = APPS_DIR
    idle_connections: int = 0
    # Which servers may run it: the pure-Rust ceiling serves only a hello route.
    ceiling: bool = False

    def check_response(self, status: int, body: bytes) -> str | None:
        """Return what is wrong with the response to one request, or None if it is right."""
        if self.key == "user":
            return None if 200 <= status < 300 else f"expected a 2xx status, got {status}"
        if status != 200:
            return f"expected status 200, got {status}"
        if self.key in ("hello", "keepalive") and body != HELLO_BODY:
            return f"expected body {HELLO_BODY!r}, got {body[:60]!r}"
        if self.key == "echo" and body != self.body:
            return f"expected the {len(self.body or b'')}-byte body back, got {len(body)} bytes"
        if self.key == "stream" and len(body) != STREAM_BODY_SIZE:
            return f"expected {STREAM_BODY_SIZE} bytes, got {len(body)}"
        if self.key == "fastapi" and json.loads(body).get("message") != "Hello, world!":
            return f"unexpected JSON {body[:80]!r}"
        return None


def echo_body() -> bytes:
    """Return the fixed 1 KiB request body of the echo scenario."""
    pattern = b"0123456789abcdef"
    return (pattern * (ECHO_BODY_SIZE // len(pattern) + 1))[:ECHO_BODY_SIZE]


SCENARIOS: dict[str, Scenario] = {
    scenario.key: scenario
    for scenario in (
        Scenario("hello", "Raw ASGI hello (GET /)", "raw:app", "/", ceiling=True),
        Scenario("fastapi", "FastAPI JSON route (GET /json)", "fastapi_app:app", "/json"),
        Scenario(
            "echo", "Raw ASGI POST echo of 1 KiB", "raw:app", "/echo", "POST", body=echo_body()
        ),
        Scenario("stream", "Raw ASGI streaming, 64 chunks of 256 B", "raw:app", "/stream"),
        Scenario(
            "keepalive",
            f"Raw ASGI hello with {IDLE_CONNECTIONS:,} idle keep-alive connections open",
            "raw:app",
            "/",
            idle_connections=IDLE_CONNECTIONS,
            ceiling=True,
        ),
    )
}


def user_scenario(
    app: str, path: str, method: str, body: bytes | None, content_type: str, app_dir: Path
) -> Scenario:
    """Return a scenario for the user's own app. Its responses are checked for a 2xx status only."""
    title = f"{app} {method} {path}"
    return Scenario(
        "user", title, app, path, method, body, content_type=content_type, app_dir=app_dir
    )


def fetch_once(host: str, port: int, scenario: Scenario) -> tuple[int, bytes]:
    """Send the scenario's request once and return (status, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        headers = {"content-type": scenario.content_type} if scenario.body else {}
        conn.request(scenario.method, scenario.path, body=scenario.body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
