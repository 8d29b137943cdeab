"""WebSockets: the ASGI websocket scope and messages, close codes, compression and the drain.

Most tests run against both servers with the same expectations, so uvicorn
is the reference. Known differences, asserted in the tests that show them:

- scope `asgi.spec_version`: fastserve announces "2.5" (it sends `reason`
  with `websocket.disconnect`); uvicorn announces "2.4".
- scope `raw_path`: fastserve sends the path as the client sent it, as in
  its HTTP scope; uvicorn puts `root_path` in front for WebSockets only.
- On shutdown fastserve closes open WebSockets with 1001 (going away);
  uvicorn sends 1012 (service restart).
- When the TCP connection drops without a close frame, the app receives 1006
  (RFC 6455 §7.1.5) from fastserve and 1005 from uvicorn 0.55.
"""

import asyncio
import json
import signal
import threading
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import Launch
from rawws import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWebSocket,
    deflate_message,
    inflate_message,
)
from servers import FASTSERVE, UVICORN, Server, read_record, tree_rss_kib

APP = "websocket_apps:app"
# Seconds a test waits for one WebSocket message or close.
RECV_TIMEOUT_S = 5.0


def ws_url(server: Server, path: str) -> str:
    """Return the ws:// URL of `path` on `server`."""
    return f"ws://{server.host}:{server.port}{path}"


def run(coro: Any) -> Any:
    """Run a client coroutine to completion."""
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def raw_socket(server: Server) -> RawWebSocket:
    """Open a raw WebSocket client socket to `server`."""
    return RawWebSocket(server.connect(timeout=RECV_TIMEOUT_S))


async def closed_with(url: str, send: str | bytes, **options: Any) -> tuple[int | None, str]:
    """Send one message and return the close code and reason the server sent."""
    async with connect(url, **options) as ws:
        await ws.send(send)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                return None, ""
            return closed.rcvd.code, closed.rcvd.reason
    return None, ""


def test_echo_text_and_bytes(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)

    async def exchange() -> list[str | bytes]:
        async with connect(ws_url(server, "/echo")) as ws:
            await ws.send("héllo")
            text = await ws.recv()
            await ws.send(b"\x00\xff")
            data = await ws.recv()
            return [text, data]

    text, data = run(exchange())
    assert text == "héllo"
    assert data == b"\x00\xff"


def test_idle_websocket_outlives_keep_alive(kind: str, launch: Launch) -> None:
    """Check that HTTP's idle timeout does not close an upgraded connection."""
    server = launch(kind, APP, "--timeout-keep-alive", "1", "--ws-ping-interval", "0")

    async def idle_then_echo() -> str | bytes:
        async with connect(ws_url(server, "/echo"), ping_interval=None) as ws:
            await asyncio.sleep(2.5)
            await ws.send("still here")
            return await ws.recv()

    assert run(idle_then_echo()) == "still here"


def test_subprotocol_negotiated(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)

    async def negotiate() -> str | None:
        async with connect(ws_url(server, "/echo"), subprotocols=["chat", "superchat"]) as ws:
            return ws.subprotocol

    assert run(negotiate()) == "chat"


def test_accept_headers_reach_client(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)

    async def handshake() -> list[str]:
        async with connect(ws_url(server, "/headers")) as ws:
            return ws.response.headers.get_all("x-custom")

    assert run(handshake()) == ["yes", "again"]


def test_server_close_code_and_reason(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    code, reason = run(closed_with(ws_url(server, "/echo"), "close 4001 app says bye"))
    assert code == 4001
    assert reason == "app says bye"


def test_client_close_code_reaches_app(kind: str, launch: Launch, record_dir: Any) -> None:
    server = launch(kind, APP)

    async def close_from_client() -> None:
        async with connect(ws_url(server, "/record?record=client-close")) as ws:
            await ws.send("ping")
            await ws.recv()
            await ws.close(4002, "client says bye")

    run(close_from_client())
    seen = read_record(record_dir, "client-close")
    assert seen["code"] == 4002
    assert seen["reason"] == "client says bye"
    assert read_record(record_dir, "client-close-finally") == {"ran": True}


def test_close_before_accept_is_403(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    with pytest.raises(InvalidStatus) as raised:
        run(connect(ws_url(server, "/reject")).__aenter__())
    assert raised.value.response.status_code == 403


def test_denial_response_reaches_client(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    with pytest.raises(InvalidStatus) as raised:
        run(connect(ws_url(server, "/deny")).__aenter__())
    response = raised.value.response
    assert response.status_code == 401
    assert response.body == b"login first"
    assert response.headers.get("x-denied") == "1"


def test_app_error_before_accept_is_500(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    with pytest.raises(InvalidStatus) as raised:
        run(connect(ws_url(server, "/fail")).__aenter__())
    assert raised.value.response.status_code == 500


@pytest.mark.uvicorn_differs(reason="uvicorn 0.55 reports 1005 when the TCP connection drops")
def test_tcp_drop_reports_1006(kind: str, launch: Launch, record_dir: Any) -> None:
    server = launch(kind, APP)
    client = raw_socket(server)
    assert client.handshake("/record?record=dropped") == 101
    client.send_frame(OP_TEXT, b"hello")
    assert client.read_frame().payload == b"hello"
    client.close()

    seen = read_record(record_dir, "dropped")
    assert seen["code"] == 1006
    assert read_record(record_dir, "dropped-finally") == {"ran": True}


def test_message_over_limit_closes_1009(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--ws-max-size", "1024")
    code, _ = run(closed_with(ws_url(server, "/echo"), b"x" * 2048, compression=None))
    assert code == 1009


def test_message_at_limit_passes(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--ws-max-size", "1024")

    async def exchange() -> bytes:
        async with connect(ws_url(server, "/echo"), compression=None) as ws:
            await ws.send(b"x" * 1024)
            return await ws.recv()

    assert run(exchange()) == b"x" * 1024


def test_fragmented_message_with_ping_between(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    client = raw_socket(server)
    assert client.handshake("/echo") == 101
    client.send_frame(OP_TEXT, b"hel", fin=False)
    client.send_frame(OP_PING, b"are you there")
    client.send_frame(OP_CONTINUATION, b"l", fin=False)
    client.send_frame(OP_CONTINUATION, b"o", fin=True)

    pong = client.read_frame()
    assert pong.opcode == OP_PONG
    assert pong.payload == b"are you there"
    echo = client.read_frame()
    assert echo.opcode == OP_TEXT
    assert echo.payload == b"hello"
    client.close()


def test_invalid_utf8_closes_1007(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    client = raw_socket(server)
    assert client.handshake("/echo") == 101
    client.send_frame(OP_TEXT, b"caf\xc3", fin=False)
    client.send_frame(OP_CONTINUATION, b"\x28", fin=True)
    assert client.read_until_close().close_code() == 1007
    client.close()


def test_continuation_without_start_closes_1002(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    client = raw_socket(server)
    assert client.handshake("/echo") == 101
    client.send_frame(OP_CONTINUATION, b"orphan", fin=True)
    assert client.read_until_close().close_code() == 1002
    client.close()


def test_new_message_inside_fragmented_one_closes_1002(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    client = raw_socket(server)
    assert client.handshake("/echo") == 101
    client.send_frame(OP_TEXT, b"first", fin=False)
    client.send_frame(OP_BINARY, b"second", fin=True)
    assert client.read_until_close().close_code() == 1002
    client.close()


def test_compressed_frames_round_trip(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    client = raw_socket(server)
    offer = [("sec-websocket-extensions", "permessage-deflate")]
    assert client.handshake("/echo", offer) == 101
    assert client.headers["sec-websocket-extensions"].startswith("permessage-deflate")

    message = b"compress me " * 200
    client.send_frame(OP_TEXT, deflate_message(message), rsv1=True)
    echo = client.read_frame()
    assert echo.rsv1, "the server sent its answer uncompressed"
    assert len(echo.payload) < len(message) // 10
    assert inflate_message(echo.payload) == message
    client.close()


def test_compression_with_websockets_client(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)

    async def exchange() -> tuple[str | None, str | bytes]:
        async with connect(ws_url(server, "/echo")) as ws:
            await ws.send("abc" * 5000)
            return ws.response.headers.get("sec-websocket-extensions"), await ws.recv()

    extensions, echo = run(exchange())
    assert extensions is not None
    assert extensions.startswith("permessage-deflate")
    assert echo == "abc" * 5000


def test_compression_can_be_turned_off(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--ws-per-message-deflate", "false")
    client = raw_socket(server)
    offer = [("sec-websocket-extensions", "permessage-deflate")]
    assert client.handshake("/echo", offer) == 101
    assert "sec-websocket-extensions" not in client.headers
    client.close()


def test_ws_none_sends_upgrade_to_app_as_http(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--ws", "none")
    client = raw_socket(server)
    # The FastAPI app has no HTTP route at /echo, only a WebSocket one.
    assert client.handshake("/echo") == 404
    client.close()


@pytest.mark.fastserve_only
def test_ws_implementation_names_are_accepted(launch: Launch) -> None:
    for name in ("websockets", "wsproto"):
        server = launch(FASTSERVE, APP, "--ws", name)
        client = raw_socket(server)
        assert client.handshake("/echo") == 101, name
        client.close()
        server.stop()


@pytest.mark.fastserve_only
def test_ping_interval_sends_pings(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--ws-ping-interval", "0.2")
    client = raw_socket(server)
    assert client.handshake("/echo") == 101
    frame = client.read_frame()
    assert frame.opcode == OP_PING
    client.send_frame(OP_PONG, frame.payload)
    client.close()


@pytest.mark.fastserve_only
def test_unanswered_ping_closes_1011(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--ws-ping-interval", "0.2", "--ws-ping-timeout", "0.3")
    client = raw_socket(server)
    assert client.handshake("/echo") == 101
    assert client.read_until_close().close_code() == 1011
    client.close()


def normalised_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """Return `scope` without the values that differ per connection."""
    scope = dict(scope)
    scope["client"] = [scope["client"][0], "port"]
    scope["server"] = [scope["server"][0], "port"]
    varying = {"host", "sec-websocket-key", "user-agent", "sec-websocket-extensions"}
    scope["headers"] = [pair for pair in scope["headers"] if pair[0] not in varying]
    return scope


@pytest.mark.fastserve_only
def test_scope_matches_uvicorn(launch: Launch) -> None:
    scopes = {}
    for kind in (FASTSERVE, UVICORN):
        server = launch(kind, APP, "--root-path", "/api")

        async def fetch_scope(server: Server = server) -> dict[str, Any]:
            url = ws_url(server, "/scope?x=1&y=%20")
            headers = {"x-extra": "value"}
            async with connect(url, subprotocols=["one", "two"], additional_headers=headers) as ws:
                return json.loads(await ws.recv())

        scopes[kind] = normalised_scope(run(fetch_scope()))
        server.stop()

    ours, theirs = scopes[FASTSERVE], scopes[UVICORN]
    assert ours["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert theirs["asgi"]["spec_version"] == "2.4"
    assert ours["raw_path"] == "/scope"
    assert theirs["raw_path"] == "/api/scope"
    for key in ("asgi", "raw_path"):
        ours.pop(key)
        theirs.pop(key)
    assert ours == theirs
    assert ours["type"] == "websocket"
    assert ours["scheme"] == "ws"
    assert ours["subprotocols"] == ["one", "two"]
    assert ours["extensions"] == {"websocket.http.response": {}}
    assert ours["state"] == {"greeting": "hello"}


@pytest.mark.uvicorn_differs(reason="uvicorn closes open WebSockets with 1012 on shutdown")
def test_sigterm_closes_open_websocket_with_1001(
    kind: str, launch: Launch, record_dir: Any
) -> None:
    graceful_s = 5.0
    server = launch(kind, APP, "--timeout-graceful-shutdown", str(graceful_s))
    client = raw_socket(server)
    assert client.handshake("/record?record=drained") == 101
    client.send_frame(OP_TEXT, b"hello")
    assert client.read_frame().payload == b"hello"

    started = time.monotonic()
    server.signal(signal.SIGTERM)
    close = client.read_until_close()
    assert close.close_code() == 1001
    # Finish the closing handshake as a well-behaved client does.
    client.send_frame(0x8, close.payload)
    client.close()

    assert server.wait(timeout=graceful_s + 5) == 0
    assert time.monotonic() - started < graceful_s
    assert read_record(record_dir, "drained")["code"] == 1001
    assert read_record(record_dir, "drained-finally") == {"ran": True}


@pytest.mark.uvicorn_differs(reason="uvicorn closes open WebSockets with 1012 on shutdown")
def test_sigterm_during_handshake_closes_after_accept(kind: str, launch: Launch) -> None:
    graceful_s = 5.0
    server = launch(kind, APP, "--timeout-graceful-shutdown", str(graceful_s))
    client = raw_socket(server)
    started = time.monotonic()

    # The app accepts 0.5 s after the handshake arrives; SIGTERM comes first.
    handshake = threading.Thread(target=client.handshake, args=("/slow-accept?delay=0.5",))
    handshake.start()
    time.sleep(0.2)
    server.signal(signal.SIGTERM)
    handshake.join(timeout=RECV_TIMEOUT_S)

    assert client.status == 101
    assert client.read_until_close().close_code() == 1001
    assert time.monotonic() - started < graceful_s
    client.send_frame(0x8, b"\x03\xe9")
    client.close()
    assert server.wait(timeout=graceful_s + 5) == 0


@pytest.mark.fastserve_only
def test_sigterm_closes_silent_client_at_graceful_timeout(launch: Launch) -> None:
    graceful_s = 1.5
    server = launch(FASTSERVE, APP, "--timeout-graceful-shutdown", str(graceful_s))
    client = raw_socket(server)
    assert client.handshake("/echo") == 101

    started = time.monotonic()
    server.signal(signal.SIGTERM)
    # The client reads the close frame but never replies to it.
    assert client.read_until_close().close_code() == 1001
    assert server.wait(timeout=graceful_s + 5) == 0
    assert time.monotonic() - started < graceful_s + 2
    client.close()


# Concurrent connections and messages per connection in the load test.
LOAD_CONNECTIONS = 200
LOAD_MESSAGES = 25
# Seconds one load round may take; a round takes about 3 s on 2 cores.
LOAD_ROUND_S = 15.0
# Bound on RSS growth from one uncompressed load round to the next, after a
# warm-up round. A leak of one session, task or buffer per connection would
# add a few KiB each, 200 per round, well above the allocator noise this
# allows. Measured growth without compression: 0 to 500 KiB per round.
MAX_RSS_GROWTH_KIB = 4 * 1024
# Bound on RSS growth from the first to the fifth compressed load round.
# Each compressed connection keeps about 300 KiB of zlib state (an estimate
# from zlib's window and hash sizes), about 60 MiB for one round. A leak of
# that state would add about 240 MiB over four rounds. With the heap trimmed
# after each round, the five samples stayed within 0.5 MiB of each other
# (three runs on 2 cores).
MAX_RSS_GROWTH_COMPRESSED_KIB = 100 * 1024
# fastserve trims its heap one second after 64 connections have closed
# (src/server/trim.rs). WebSocket sessions are not counted, so after each round
# the test closes that many plain connections and waits for the trim. Every
# sample then follows a trim, and rounds compare memory in use rather than when
# the last trim happened.
HEAP_TRIM_CONNECTIONS = 64
HEAP_TRIM_WAIT_S = 1.5
# Time for the server to accept the plain connections before they close.
ACCEPT_WAIT_S = 0.2


async def load_round(url: str, compression: str | None) -> int:
    """Open LOAD_CONNECTIONS WebSockets at once, echo on each, and return the echoes seen."""

    async def one(index: int) -> int:
        async with connect(url, open_timeout=20, compression=compression) as ws:
            for number in range(LOAD_MESSAGES):
                await ws.send(f"{index}-{number}")
                assert await ws.recv() == f"{index}-{number}"
        return LOAD_MESSAGES

    results = await asyncio.gather(*(one(index) for index in range(LOAD_CONNECTIONS)))
    return sum(results)


def rss_after_rounds(server: Server, rounds: int, compression: str | None) -> list[int]:
    """Run `rounds` load rounds and return the server's RSS in KiB after each."""
    url = ws_url(server, "/echo")
    samples = []
    for _ in range(rounds):
        started = time.monotonic()
        assert run(load_round(url, compression)) == LOAD_CONNECTIONS * LOAD_MESSAGES
        assert time.monotonic() - started < LOAD_ROUND_S
        # Let the server finish the last closing handshakes.
        time.sleep(0.3)
        trigger_heap_trim(server)
        samples.append(tree_rss_kib(server.pid))
    return samples


def trigger_heap_trim(server: Server) -> None:
    """Open and close HEAP_TRIM_CONNECTIONS plain connections, then wait for the trim."""
    sockets = [server.connect() for _ in range(HEAP_TRIM_CONNECTIONS)]
    time.sleep(ACCEPT_WAIT_S)
    for sock in sockets:
        sock.close()
    time.sleep(HEAP_TRIM_WAIT_S)


@pytest.mark.fastserve_only
def test_many_connections_keep_rss_flat(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--no-access-log")
    before = tree_rss_kib(server.pid)
    warm, first, second = rss_after_rounds(server, 3, compression=None)
    print(f"rss KiB: before {before}, rounds {warm}, {first}, {second}")
    assert second - first < MAX_RSS_GROWTH_KIB
    assert "panicked" not in server.stderr_text()
    assert "ERROR" not in server.stderr_text()


@pytest.mark.fastserve_only
def test_many_compressed_connections_rss_bounded(launch: Launch) -> None:
    server = launch(FASTSERVE, APP, "--no-access-log")
    samples = rss_after_rounds(server, 5, compression="deflate")
    print(f"rss KiB after each round: {samples}")
    assert samples[-1] - samples[0] < MAX_RSS_GROWTH_COMPRESSED_KIB
    assert "panicked" not in server.stderr_text()
    assert "ERROR" not in server.stderr_text()


def test_slow_reader_gets_every_message(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    count, size = 64, 64 * 1024

    async def read_slowly() -> int:
        url = ws_url(server, f"/stream?count={count}&size={size}")
        async with connect(url, compression=None, max_size=None) as ws:
            await asyncio.sleep(0.5)
            received = 0
            try:
                while True:
                    received += len(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S))
            except ConnectionClosed:
                return received

    assert run(read_slowly()) == count * size


def test_handshake_without_key_is_rejected(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    sock = server.connect()
    sock.sendall(
        b"GET /echo HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
        b"sec-websocket-version: 13\r\n\r\n"
    )
    head = sock.recv(4096)
    sock.close()
    assert head.startswith(b"HTTP/1.1 4"), head[:40]
