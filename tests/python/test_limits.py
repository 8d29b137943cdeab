"""Limits and timeouts: slowloris, keep-alive idle, concurrency, head, target and body size.

All of these are fastserve options that uvicorn lacks or implements
differently, so every test here is fastserve only.
"""

import json
import selectors
import socket
import threading
import time
from collections.abc import Callable

import pytest

from rawhttp import build_request, chunked
from servers import FASTSERVE, Server, read_record

Launch = Callable[..., Server]

APP = "proxy_apps:app"
SLOWLORIS_CONNECTIONS = 200
# Seconds the slowloris test may run in all; each connection sends one byte a second.
SLOWLORIS_BUDGET_S = 12.0
HEADER_TIMEOUT_S = 2.0


def open_slowloris(server: Server, count: int) -> list[socket.socket]:
    """Open `count` connections that each sent the first byte of a request head."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection((server.host, server.port), timeout=5)
        sock.sendall(b"G")
        sock.setblocking(False)
        socks.append(sock)
    return socks


def test_slowloris_closed_after_header_timeout(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--timeout-header-read", str(HEADER_TIMEOUT_S))
    started = time.monotonic()
    socks = open_slowloris(server, SLOWLORIS_CONNECTIONS)
    opened = time.monotonic()
    closed_after: dict[int, float] = {}
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    served_during_attack = None
    next_byte = opened + 1.0
    deadline = started + SLOWLORIS_BUDGET_S
    while len(closed_after) < len(socks) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(1024)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            assert data == b"", f"a slowloris connection got a response: {data[:80]!r}"
            selector.unregister(sock)
            closed_after[sock.fileno()] = time.monotonic() - started
        if served_during_attack is None and time.monotonic() > opened + 0.5:
            with server.open(timeout=5) as conn:
                served_during_attack = conn.request("GET", "/").status
        if time.monotonic() >= next_byte:
            next_byte += 1.0
            for sock in socks:
                if sock.fileno() not in closed_after:
                    try:
                        sock.send(b"E")
                    except OSError:
                        pass
    for sock in socks:
        sock.close()

    assert served_during_attack == 200
    assert len(closed_after) == SLOWLORIS_CONNECTIONS, "some connections stayed open"
    # Each was closed one header timeout after its first byte, give or take scheduling.
    assert min(closed_after.values()) >= HEADER_TIMEOUT_S - 0.2
    assert max(closed_after.values()) <= (opened - started) + HEADER_TIMEOUT_S + 1.5


def test_keep_alive_outlives_header_timeout(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--timeout-header-read", "1", "--timeout-keep-alive", "4")
    with server.open() as conn:
        assert conn.request("GET", "/").status == 200
        time.sleep(2.0)
        assert conn.request("GET", "/").status == 200, "idle connection closed too early"


def test_idle_connection_closed_after_keep_alive(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--timeout-keep-alive", "1", "--timeout-header-read", "10")
    with server.open() as conn:
        assert conn.request("GET", "/").status == 200
        started = time.monotonic()
        assert conn.wait_closed(timeout=5)
        assert 0.8 <= time.monotonic() - started <= 2.5


def test_slow_head_not_cut_by_keep_alive(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--timeout-keep-alive", "1", "--timeout-header-read", "10")
    request = build_request("GET", "/")
    with server.open() as conn:
        # Three seconds of head, in pieces, is longer than the keep-alive timeout.
        for index in range(0, len(request), len(request) // 6 + 1):
            conn.send(request[index : index + len(request) // 6 + 1])
            time.sleep(0.5)
        assert conn.read_response().status == 200


def test_concurrency_limit_503(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--limit-concurrency", "2")
    statuses: list[int] = []

    def slow_request() -> None:
        with server.open() as conn:
            statuses.append(conn.request("GET", "/slow?ms=1500").status)

    workers = [threading.Thread(target=slow_request) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    with server.open() as conn:
        started = time.monotonic()
        over = conn.request("GET", "/")
        elapsed = time.monotonic() - started
    for worker in workers:
        worker.join(timeout=10)
    assert over.status == 503
    assert elapsed < 1.0, "the request over the limit waited for a slot"
    assert statuses == [200, 200]
    with server.open() as conn:
        assert conn.request("GET", "/").status == 200, "slots were not released"


def test_idle_connections_do_not_count(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--limit-concurrency", "1")
    idle = [server.open() for _ in range(3)]
    try:
        for conn in idle:
            assert conn.request("GET", "/").status == 200
        with server.open() as conn:
            assert conn.request("GET", "/").status == 200
    finally:
        for conn in idle:
            conn.close()


def test_oversized_head_431(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--max-header-size", "8192")
    with server.open() as conn:
        response = conn.request("GET", "/", [("x-big", "a" * 9000)])
    assert response.status == 431
    with server.open() as conn:
        assert conn.request("GET", "/", [("x-ok", "a" * 4000)]).status == 200


@pytest.mark.parametrize(("limit", "length"), [("100", 200), (None, 17 * 1024)])
def test_long_target_414(launch: Launch, limit: str | None, length: int) -> None:
    args = ("--limit-request-line", limit) if limit else ()
    server = launch(FASTSERVE, APP, *args)
    with server.open() as conn:
        response = conn.request("GET", "/" + "a" * length)
    assert response.status == 414
    with server.open() as conn:
        assert conn.request("GET", "/" + "a" * (length // 4)).status == 200


def test_declared_body_over_limit_413(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--limit-request-body", "10")
    with server.open() as conn:
        response = conn.request("POST", "/body", body=b"x" * 11)
    assert response.status == 413
    assert response.header("connection") == b"close"
    assert not (server.record_dir / "body.json").exists(), "the app ran"
    with server.open() as conn:
        response = conn.request("POST", "/body", body=b"x" * 10)
    assert response.status == 200
    assert json.loads(response.body) == ["http.request:10"]


def test_chunked_body_over_limit_413(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--limit-request-body", "10")
    headers = [("transfer-encoding", "chunked")]
    with server.open() as conn:
        conn.send(build_request("POST", "/body", headers) + chunked(b"x" * 8, b"y" * 8))
        response = conn.read_response("POST")
    assert response.status == 413
    seen = read_record(server.record_dir, "body")
    assert seen[-1] == "http.disconnect:0", seen
