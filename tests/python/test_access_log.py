"""Access log lines: the uvicorn-like text line, JSON lines and request ids."""

import json
import re
import time
from collections.abc import Callable
from typing import Any

from servers import FASTSERVE, Server

Launch = Callable[..., Server]

APP = "proxy_apps:app"
JSON_FIELDS = {
    "time",
    "client",
    "method",
    "path",
    "query",
    "http_version",
    "status",
    "bytes",
    "duration_ms",
    "user_agent",
    "request_id",
    "complete",
}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Return the lines of `text` that are JSON access objects."""
    found = []
    for line in text.splitlines():
        if line.startswith("{") and '"request_id"' in line:
            found.append(json.loads(line))
    return found


def wait_lines(server: Server, mark: int, count: int) -> list[dict[str, Any]]:
    """Wait up to 5 s for `count` JSON access lines after `mark` and return them."""
    deadline = time.monotonic() + 5
    while True:
        lines = json_lines(server.stderr_since(mark))
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_text_line_has_bytes_and_duration(launch: Launch) -> None:
    server = launch(FASTSERVE, APP)
    mark = server.stderr_size()
    with server.open() as conn:
        assert conn.request("GET", "/hello?x=1").status == 200
    deadline = time.monotonic() + 5
    pattern = r'127\.0\.0\.1:\d+ - "GET /hello\?x=1 HTTP/1\.1" 200 OK 13 bytes [\d.]+ ms'
    while not re.search(pattern, server.stderr_since(mark)):
        assert time.monotonic() < deadline, server.stderr_since(mark)
        time.sleep(0.05)


def test_json_line_fields(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--access-log-format", "json")
    mark = server.stderr_size()
    headers = [("User-Agent", 'probe/1.0 "quoted"'), ("X-Forwarded-For", "203.0.113.7")]
    with server.open() as conn:
        response = conn.request("GET", "/slow?ms=200", headers)
    assert response.status == 200
    (line,) = wait_lines(server, mark, 1)
    assert set(line) == JSON_FIELDS
    assert line["client"] == "203.0.113.7:0"
    assert line["method"] == "GET"
    assert line["path"] == "/slow"
    assert line["query"] == "ms=200"
    assert line["http_version"] == "1.1"
    assert line["status"] == 200
    assert line["bytes"] == len(b"slow done")
    # asyncio may fire a timer up to its clock resolution early.
    assert 190 <= line["duration_ms"] < 2000
    assert line["user_agent"] == 'probe/1.0 "quoted"'
    assert line["complete"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert re.fullmatch(r"[0-9a-f]{16}", line["request_id"])
    assert response.header("x-request-id") == line["request_id"].encode()


def test_client_request_id_kept(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--access-log-format", "json")
    mark = server.stderr_size()
    with server.open() as conn:
        kept = conn.request("GET", "/", [("X-Request-ID", "abc-123")])
        replaced = conn.request("GET", "/", [("X-Request-ID", "bad id with spaces")])
    assert kept.header("x-request-id") == b"abc-123"
    assert re.fullmatch(rb"[0-9a-f]{16}", replaced.header("x-request-id") or b"")
    lines = wait_lines(server, mark, 2)
    assert [line["request_id"] for line in lines][0] == "abc-123"


def test_health_path_excluded_by_default(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--access-log-format", "json")
    mark = server.stderr_size()
    with server.open() as conn:
        conn.request("GET", "/health")
        conn.request("GET", "/after-health")
    lines = wait_lines(server, mark, 1)
    assert [line["path"] for line in lines] == ["/after-health"]


def test_health_checks_logged_when_asked(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--access-log-format", "json", "--log-health-checks")
    mark = server.stderr_size()
    with server.open() as conn:
        conn.request("GET", "/health")
    assert [line["path"] for line in wait_lines(server, mark, 1)] == ["/health"]


def test_exclude_list_configurable(launch: Launch) -> None:
    args = ("--access-log-format", "json", "--access-log-exclude", "/skip-me,/skip-too")
    server = launch(FASTSERVE, APP, *args)
    mark = server.stderr_size()
    with server.open() as conn:
        conn.request("GET", "/skip-me")
        conn.request("GET", "/skip-too")
        conn.request("GET", "/kept")
    assert [line["path"] for line in wait_lines(server, mark, 1)] == ["/kept"]


def test_log_format_json_for_every_line(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--log-format", "json")
    with server.open() as conn:
        assert conn.request("GET", "/").status == 200
    server.stop()
    lines = [line for line in server.stderr_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    messages = [entry.get("message", "") for entry in parsed]
    assert any("listening on" in message for message in messages), messages
    assert any(entry.get("path") == "/" for entry in parsed), "no access line"


def test_server_made_responses_logged(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--access-log-format", "json", "--limit-request-body", "1")
    mark = server.stderr_size()
    with server.open() as conn:
        response = conn.request("POST", "/body", body=b"xx")
    assert response.status == 413
    (line,) = wait_lines(server, mark, 1)
    assert line["status"] == 413
    assert response.header("x-request-id") == line["request_id"].encode()
