"""HTTP/1.1 behaviour over raw sockets: framing, keep-alive, rejection of bad requests, headers.

Each test asserts the behaviour fastserve promises. Where uvicorn is known to
differ, the test carries `uvicorn_differs` and only records what uvicorn does.
"""

import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import pytest

from rawhttp import Connection, Response, build_request, chunked
from servers import Server

SharedServer = Callable[..., Server]

HELLO_BODY = b"Hello, world!"


@pytest.fixture
def raw_server(kind: str, shared_server: SharedServer) -> Server:
    """Return the shared server of `kind` that serves raw_apps:app."""
    return shared_server(kind)


def test_keep_alive_reuses_connection(raw_server: Server) -> None:
    with raw_server.open() as conn:
        for _ in range(3):
            response = conn.request("GET", "/hello")
            assert response.status == 200
            assert response.body == HELLO_BODY


def test_pipelined_requests_answered_in_order(raw_server: Server) -> None:
    requests = [
        build_request("GET", "/sleep/first?ms=300"),
        build_request("GET", "/sleep/second?ms=0"),
        build_request("GET", "/hello"),
    ]
    with raw_server.open() as conn:
        conn.send(b"".join(requests))
        bodies = [conn.read_response().body for _ in requests]
    assert bodies[0] == b"slept 300 ms on /sleep/first"
    assert bodies[1] == b"slept 0 ms on /sleep/second"
    assert bodies[2] == HELLO_BODY


@pytest.mark.uvicorn_differs(reason="drops a slow response once the client shuts down its side")
def test_half_closed_client_gets_response(raw_server: Server) -> None:
    """A client may shut down its sending side and still read the response."""
    with raw_server.open() as conn:
        conn.send(build_request("GET", "/sleep/slow?ms=100"))
        conn.sock.shutdown(socket.SHUT_WR)
        response = conn.read_response()
    assert response.body == b"slept 100 ms on /sleep/slow"


def test_chunked_request_body_read(raw_server: Server) -> None:
    parts = [b"first part,", b"second,", b"x" * 5000]
    head = build_request("POST", "/echo", [("transfer-encoding", "chunked")])
    with raw_server.open() as conn:
        conn.send(head)
        for part in parts:
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            time.sleep(0.02)
        conn.send(b"0\r\n\r\n")
        response = conn.read_response()
    assert response.status == 200
    assert response.body == b"".join(parts)


def test_chunked_request_body_counted(raw_server: Server) -> None:
    body = chunked(b"a" * 100, b"b" * 200, b"c" * 300)
    with raw_server.open() as conn:
        response = conn.request("POST", "/count", [("transfer-encoding", "chunked")], body)
    assert response.status == 200
    assert b'"bytes": 600' in response.body


def test_streamed_response_is_chunked(raw_server: Server) -> None:
    with raw_server.open() as conn:
        response = conn.request("GET", "/chunks")
    assert response.status == 200
    assert response.header("transfer-encoding") == b"chunked"
    assert response.header("content-length") is None
    assert response.body == b"alpha-beta-gamma"
    # The app pauses between parts, so each part must leave as its own chunk.
    assert len(response.chunk_sizes) >= 3


@pytest.mark.uvicorn_differs(reason="sends a single complete body chunked")
def test_single_body_gets_content_length(raw_server: Server) -> None:
    with raw_server.open() as conn:
        response = conn.request("GET", "/unsized")
    assert response.status == 200
    assert response.header("content-length") == b"17"
    assert response.header("transfer-encoding") is None
    assert response.body == b"one complete body"


def test_expect_continue_sent_when_app_reads(raw_server: Server) -> None:
    head = build_request(
        "POST", "/expect/read", [("content-length", "5"), ("expect", "100-continue")]
    )
    with raw_server.open() as conn:
        conn.send(head)
        interim = conn.read_response()
        assert interim.status == 100
        conn.send(b"12345")
        final = conn.read_response("POST")
    assert final.status == 200
    assert final.body == b"read 5 bytes"


def test_expect_continue_not_sent_when_app_ignores_body(raw_server: Server) -> None:
    head = build_request(
        "POST", "/expect/ignore", [("content-length", "5"), ("expect", "100-continue")]
    )
    with raw_server.open(timeout=5) as conn:
        conn.send(head)
        response = conn.read_response("POST")
    assert response.status == 200
    assert response.body == b"did not read the body"


def test_head_keeps_content_length_without_body(raw_server: Server) -> None:
    with raw_server.open() as conn:
        head = conn.request("HEAD", "/hello")
        # A body after the HEAD response would be parsed as the next status line.
        follow_up = conn.request("GET", "/hello")
    assert head.status == 200
    assert head.header("content-length") == str(len(HELLO_BODY)).encode()
    assert follow_up.status == 200
    assert follow_up.body == HELLO_BODY


@pytest.mark.uvicorn_differs(reason="passes the app's content-length through on 204")
def test_no_content_drops_content_length(raw_server: Server) -> None:
    with raw_server.open() as conn:
        response = conn.request("GET", "/no-content")
    assert response.status == 204
    assert response.header("x-kind") == b"no-content"
    assert response.header("content-length") is None
    assert response.header("transfer-encoding") is None
    app_names = [name for name in response.header_names() if name.startswith(b"x-")]
    assert app_names == [b"x-first", b"x-kind", b"x-last"]


def test_no_content_sends_no_body(raw_server: Server) -> None:
    with raw_server.open(timeout=5) as conn:
        conn.send(build_request("GET", "/no-content") + build_request("GET", "/hello"))
        first = conn.read_response()
        second = conn.read_response()
    assert first.status == 204
    assert second.status == 200
    assert second.body == HELLO_BODY


@pytest.mark.uvicorn_differs(reason="treats the content-length of a 304 as a body it must send")
def test_not_modified_sends_no_body(raw_server: Server) -> None:
    with raw_server.open(timeout=5) as conn:
        conn.send(build_request("GET", "/not-modified") + build_request("GET", "/hello"))
        first = conn.read_response()
        second = conn.read_response()
    assert first.status == 304
    assert first.header("etag") == b'"v1"'
    assert second.status == 200
    assert second.body == HELLO_BODY


@pytest.mark.parametrize(
    "headers",
    [
        [("content-length", "5"), ("transfer-encoding", "chunked")],
        [("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
        [("transfer-encoding", "chunked"), ("content-length", "abc")],
    ],
    ids=["length-first", "chunked-first", "length-without-digits"],
)
def test_content_length_with_chunked_rejected(
    raw_server: Server, headers: list[tuple[str, str]]
) -> None:
    with raw_server.open() as conn:
        response = conn.request("POST", "/count", headers, chunked(b"hello"))
        closed = conn.wait_closed()
    assert response.status == 400
    assert closed


CONFLICTING_FRAMING = [("content-length", "5"), ("transfer-encoding", "chunked")]


def pipeline_conflicting_after(server: Server, first: bytes) -> tuple[list[int], bool]:
    """Send `first` and a request with both framings in one write; return both
    statuses and whether the server then closed the connection."""
    second = build_request("POST", "/count", CONFLICTING_FRAMING) + chunked(b"hello")
    with server.open() as conn:
        conn.send(first + second)
        statuses = [conn.read_response().status, conn.read_response().status]
        closed = conn.wait_closed()
    return statuses, closed


@pytest.mark.uvicorn_differs(
    reason="answers only the 400 when a later request in the same read is invalid"
)
def test_pipelined_content_length_with_chunked_rejected(raw_server: Server) -> None:
    """The second request follows a body, so only framing-aware scanning finds its head."""
    first = build_request("POST", "/count", [("content-length", "5")]) + b"hello"
    statuses, closed = pipeline_conflicting_after(raw_server, first)
    assert statuses[0] == 200
    assert statuses[1] == 400
    assert closed


def test_framing_checked_after_refused_upgrade(raw_server: Server) -> None:
    """A request for an upgrade that gets an ordinary response keeps the connection HTTP/1.1."""
    upgrade = [("connection", "upgrade"), ("upgrade", "h2c")]
    with raw_server.open() as conn:
        first = conn.request("GET", "/hello", upgrade)
        second = conn.request("POST", "/count", CONFLICTING_FRAMING, chunked(b"hello"))
        closed = conn.wait_closed()
    assert first.status == 200
    assert second.status == 400
    assert closed


@pytest.mark.uvicorn_differs(
    reason="answers only the 400 when a later request in the same read is invalid"
)
def test_framing_checked_after_pipelined_refused_upgrade(raw_server: Server) -> None:
    """The second head arrives while the scanner waits for the upgrade's response."""
    first = build_request("GET", "/hello", [("connection", "upgrade"), ("upgrade", "h2c")])
    statuses, closed = pipeline_conflicting_after(raw_server, first)
    assert statuses[0] == 200
    assert statuses[1] == 400
    assert closed


def test_conflicting_content_lengths_rejected(raw_server: Server) -> None:
    headers = [("content-length", "5"), ("content-length", "6")]
    with raw_server.open() as conn:
        response = conn.request("POST", "/count", headers, b"hello!")
        closed = conn.wait_closed()
    assert response.status == 400
    assert closed


def test_malformed_request_line_rejected(raw_server: Server) -> None:
    with raw_server.open() as conn:
        conn.send(b"THIS IS NOT HTTP\r\n\r\n")
        response = conn.read_response()
        closed = conn.wait_closed()
    assert response.status == 400
    assert closed


@pytest.mark.uvicorn_differs(reason="has no limit on the size of the request head")
def test_oversize_headers_rejected(raw_server: Server) -> None:
    padding = [(f"x-padding-{index}", "p" * 1000) for index in range(100)]
    with raw_server.open() as conn:
        response = conn.request("GET", "/hello", padding)
    assert response.status == 431


def test_connection_close_honoured(raw_server: Server) -> None:
    with raw_server.open() as conn:
        response = conn.request("GET", "/hello", [("connection", "close")])
        closed = conn.wait_closed()
    assert response.status == 200
    assert response.body == HELLO_BODY
    assert closed


def test_http10_request_closes_after_response(raw_server: Server) -> None:
    with raw_server.open() as conn:
        response = conn.request("GET", "/scope", version="HTTP/1.0")
        closed = conn.wait_closed()
    assert response.status == 200
    assert b'"http_version": "1.0"' in response.body
    assert closed


def test_date_and_server_headers_added(raw_server: Server, kind: str) -> None:
    with raw_server.open() as conn:
        response = conn.request("GET", "/hello")
    date = response.header_all("date")
    assert len(date) == 1
    sent_at = parsedate_to_datetime(date[0].decode())
    assert abs((datetime.now(timezone.utc) - sent_at).total_seconds()) < 60
    assert response.header_all("server") == [kind.encode()]


@pytest.mark.uvicorn_differs(reason="adds its own server and date headers beside the app's")
def test_app_server_and_date_headers_win(raw_server: Server) -> None:
    with raw_server.open() as conn:
        response = conn.request("GET", "/custom-server")
    assert response.status == 200
    assert response.header_all("server") == [b"custom-app/1.0"]
    assert response.header_all("date") == [b"Thu, 01 Jan 2026 00:00:00 GMT"]


HEADER_ORDER_SENT = [
    (b"X-First", b"1"),
    (b"set-cookie", b"a=1; Path=/; HttpOnly"),
    (b"X-Mixed-Case", b"VaLuE With  Spaces"),
    (b"Set-Cookie", b"b=2; Path=/"),
    (b"x-last", b"Z"),
]


def app_headers(response: Response) -> list[tuple[bytes, bytes]]:
    """Return the headers that raw_apps:header_order sets, as they came on the wire."""
    app_names = {name.lower() for name, _ in HEADER_ORDER_SENT}
    return [(name, value) for name, value in response.headers if name.lower() in app_names]


def test_response_header_values_kept(raw_server: Server) -> None:
    with raw_server.open() as conn:
        response = conn.request("GET", "/header-order")
    assert response.header_all("x-mixed-case") == [b"VaLuE With  Spaces"]
    assert response.header_all("set-cookie") == [b"a=1; Path=/; HttpOnly", b"b=2; Path=/"]
    assert response.header_all("x-first") == [b"1"]
    assert response.header_all("x-last") == [b"Z"]


def lowered(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Return `headers` with names in lower case."""
    return [(name.lower(), value) for name, value in headers]


@pytest.mark.parametrize("target", ["/header-order", "/header-order?stream"])
def test_response_header_order_kept(kind: str, shared_server: SharedServer, target: str) -> None:
    """Check the order across names, which HTTP leaves free but uvicorn keeps too."""
    server = shared_server(kind)
    with server.open() as conn:
        response = conn.request("GET", target)
    assert lowered(app_headers(response)) == lowered(HEADER_ORDER_SENT)
    assert response.body == b"ordered"


@pytest.mark.uvicorn_differs(reason="sends header names in lower case")
@pytest.mark.parametrize("target", ["/header-order", "/header-order?stream"])
def test_response_header_name_case_kept(
    kind: str, shared_server: SharedServer, target: str
) -> None:
    server = shared_server(kind)
    with server.open() as conn:
        response = conn.request("GET", target)
    assert app_headers(response) == HEADER_ORDER_SENT


def test_joined_app_header_keeps_the_others(raw_server: Server) -> None:
    """hyper joins the app's Connection value with close; every other header goes out once."""
    with raw_server.open() as conn:
        response = conn.request("GET", "/joined-headers", [("connection", "close")])
    skipped = {b"connection", b"content-length", b"date", b"server", b"transfer-encoding"}
    names = [name.lower() for name in response.header_names() if name not in skipped]
    assert names == [b"content-type", b"set-cookie", b"x-frame-options"]
    assert response.body == b"ok"


@pytest.mark.uvicorn_differs(reason="closes the connection after the declared length")
def test_body_longer_than_content_length_cut(raw_server: Server) -> None:
    with raw_server.open() as conn:
        conn.send(build_request("GET", "/length-mismatch?3") + build_request("GET", "/hello"))
        first = conn.read_response()
        second = conn.read_response()
    assert first.body == b"hel"
    assert second.version == b"HTTP/1.1"
    assert second.body == HELLO_BODY


def test_body_shorter_than_content_length_closes(raw_server: Server) -> None:
    """The client must not take what arrives for a complete response."""
    with raw_server.open() as conn:
        conn.send(build_request("GET", "/length-mismatch?10"))
        received = conn.read_available(timeout=3)
        closed = conn.wait_closed(timeout=0.5)
    _, _, body = received.partition(b"\r\n\r\n")
    assert len(body) < 10
    assert closed


@pytest.mark.uvicorn_differs(reason="closes the connection without a response")
def test_invalid_content_length_gives_500(raw_server: Server) -> None:
    with raw_server.open() as conn:
        response = conn.request("GET", "/length-mismatch?abc")
    assert response.status == 500


@pytest.mark.fastserve_only
def test_restored_heads_keep_pipelined_framing(raw_server: Server) -> None:
    """Restored heads are rewritten in place: every response around them stays framed."""
    targets = [
        ("GET", "/header-order"),
        ("GET", "/header-order?stream"),
        ("HEAD", "/header-order"),
        ("GET", "/hello"),
    ]
    with raw_server.open() as conn:
        conn.send(b"".join(build_request(method, target) for method, target in targets))
        responses = [conn.read_response(method) for method, _ in targets]
    assert [response.status for response in responses] == [200, 200, 200, 200]
    assert [app_headers(response) for response in responses[:3]] == [HEADER_ORDER_SENT] * 3
    assert responses[0].body == b"ordered"
    assert responses[1].body == b"ordered"
    assert responses[1].header("transfer-encoding") == b"chunked"
    assert responses[2].body == b""
    assert responses[2].header("content-length") == b"7"
    assert responses[3].body == HELLO_BODY


def test_raw_connection_helper_reports_close(raw_server: Server) -> None:
    """Guard the helper itself: an idle keep-alive connection is not reported as closed."""
    with raw_server.open() as conn:
        conn.request("GET", "/hello")
        assert not conn.wait_closed(timeout=0.3)
    with Connection(raw_server.connect()) as conn:
        conn.request("GET", "/hello", [("connection", "close")])
        assert conn.wait_closed()
