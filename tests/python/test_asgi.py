"""ASGI protocol behaviour: receive and send, app errors, and lifespan state and failures."""

import json
import re
import time
from collections.abc import Callable

import pytest

from conftest import Launch
from rawhttp import IncompleteResponseError, build_request
from servers import Server, read_record

SharedServer = Callable[..., Server]

# Larger than any socket buffer, so the server must wait for the client.
ENDLESS_STREAM_BYTES = 1 << 30
LIFESPAN_WORD = re.compile(r"\blifespan\b", re.IGNORECASE)


@pytest.fixture
def raw_server(kind: str, shared_server: SharedServer) -> Server:
    """Return the shared server of `kind` that serves raw_apps:app."""
    return shared_server(kind)


def wait_for_stderr(server: Server, mark: int, needle: str, timeout: float = 5.0) -> str:
    """Wait up to `timeout` for `needle` in the stderr after `mark`, and return that stderr."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.stderr_since(mark)
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_receive_streams_chunks_then_disconnect(kind: str, launch: Launch) -> None:
    server = launch(kind, "raw_apps:app")
    parts = [b"a" * 10, b"b" * 20, b"c" * 30]
    with server.open() as conn:
        conn.send(build_request("POST", "/receive-log", [("transfer-encoding", "chunked")]))
        for part in parts:
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            time.sleep(0.1)
        conn.send(b"0\r\n\r\n")
        response = conn.read_response("POST")
        # Keep the connection open: the disconnect must come from the finished response.
        messages = read_record(server.record_dir, "receive-log", timeout=10)
    assert response.status == 200
    requests = [message for message in messages if message[0] == "http.request"]
    assert sum(message[1] for message in requests) == 60
    assert len(requests) >= 2
    assert all(message[2] is True for message in requests[:-1])
    assert requests[-1][2] is False
    assert messages[-1] == ["http.disconnect", 0, None]


@pytest.mark.uvicorn_differs(reason="send() returns silently on a closed connection")
def test_send_after_disconnect_raises_oserror(kind: str, raw_server: Server) -> None:
    name = f"disconnect-{kind}"
    target = f"/stream?size={ENDLESS_STREAM_BYTES}&name={name}"
    with raw_server.open() as conn:
        conn.send(build_request("GET", target))
        assert conn.sock.recv(65536).startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 10
    outcome = read_record(raw_server.record_dir, f"stream-{name}")
    while not outcome["done"] and time.monotonic() < deadline:
        time.sleep(0.05)
        outcome = read_record(raw_server.record_dir, f"stream-{name}")
    assert outcome["done"], "the app was still sending 10 s after the client left"
    assert outcome["sent"] < ENDLESS_STREAM_BYTES
    assert "OSError" in outcome["mro"]


def test_final_empty_body_after_full_length(kind: str, launch: Launch) -> None:
    server = launch(kind, "raw_apps:app")
    with server.open() as conn:
        response = conn.request("GET", "/sized-stream")
        outcome = read_record(server.record_dir, "sized-stream")
    assert response.status == 200
    assert response.body == b"0123456789"
    assert outcome == {"error": None}


def test_exception_before_start_returns_500(raw_server: Server) -> None:
    mark = raw_server.stderr_size()
    with raw_server.open() as conn:
        response = conn.request("GET", "/raise-before-start")
    assert response.status == 500
    stderr = wait_for_stderr(raw_server, mark, "raised before the response started")
    assert "Traceback" in stderr
    assert "RuntimeError: raised before the response started" in stderr


def test_exception_after_start_closes_connection(raw_server: Server) -> None:
    mark = raw_server.stderr_size()
    with raw_server.open() as conn:
        with pytest.raises(IncompleteResponseError):
            conn.request("GET", "/raise-after-start")
    stderr = wait_for_stderr(raw_server, mark, "raised after the response started")
    assert "RuntimeError: raised after the response started" in stderr


def test_no_response_returns_500(raw_server: Server) -> None:
    with raw_server.open() as conn:
        response = conn.request("GET", "/no-response")
    assert response.status == 500


def test_invalid_message_logged_by_type(raw_server: Server) -> None:
    mark = raw_server.stderr_size()
    with raw_server.open() as conn:
        response = conn.request("GET", "/invalid-message")
    assert response.status == 500
    stderr = wait_for_stderr(raw_server, mark, "http.response.bogus")
    assert "http.response.bogus" in stderr


def test_lifespan_state_reaches_request_scope(raw_server: Server) -> None:
    with raw_server.open() as conn:
        response = conn.request("GET", "/state/first")
    state = json.loads(response.body)["state"]
    assert state["answer"] == 42
    assert state["marker"] == "<non-JSON StateMarker>"


def test_request_state_is_a_copy(raw_server: Server) -> None:
    with raw_server.open() as conn:
        conn.request("GET", "/state/writer")
        response = conn.request("GET", "/state/reader")
    state = json.loads(response.body)["state"]
    assert state["answer"] == 42
    assert "set_by_request" not in state


def test_lifespan_startup_failure_exits_3(kind: str, launch: Launch) -> None:
    server = launch(kind, "lifespan_apps:failing_startup", start=False)
    code = server.wait(timeout=20)
    assert code == 3
    assert "database unreachable during startup" in server.stderr_text()


def test_lifespan_auto_serves_app_that_raises(kind: str, launch: Launch) -> None:
    server = launch(kind, "lifespan_apps:raising_lifespan", "--lifespan", "auto")
    with server.open() as conn:
        response = conn.request("GET", "/")
    assert response.status == 200
    assert response.body == b"served without lifespan"
    stderr = server.stderr_text()
    # A word match, so the module name lifespan_apps in other log lines does not count.
    lifespan_lines = [line for line in stderr.splitlines() if LIFESPAN_WORD.search(line)]
    assert len(lifespan_lines) == 1, stderr
    assert "Traceback" not in stderr
