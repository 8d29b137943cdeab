"""Raw ASGI 3 applications served by the pytest suite through fastserve and uvicorn.

`app` routes on the path (after the root path) to the handlers below, so one
server process serves most tests. Each handler is also an application of its
own, e.g. `raw_apps:hello`. Handlers that observe something the response
cannot carry write it as JSON into the folder named by TEST_RECORD_DIR.
"""

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

RECORD_DIR_ENV = "TEST_RECORD_DIR"
STREAM_CHUNK = b"x" * 65536
# Write the progress of /stream after every this many chunks (1 MiB).
STREAM_PROGRESS_EVERY = 16

# Returned by `raw_apps:NOT_AN_APP`, which servers must reject at start.
NOT_AN_APP = 42


class StateMarker:
    """A value in the lifespan state that JSON cannot carry."""


def record(name: str, data: object) -> None:
    """Write `data` as JSON to TEST_RECORD_DIR/name.json, replacing it atomically."""
    folder = os.environ.get(RECORD_DIR_ENV)
    if not folder:
        return
    target = Path(folder) / f"{name}.json"
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(target)


def query_params(scope: Scope) -> dict[str, str]:
    """Return the query string as a dict, keeping the last value of each name."""
    parsed = parse_qs(scope["query_string"].decode("latin-1"))
    return {name: values[-1] for name, values in parsed.items()}


def to_json(value: object) -> object:
    """Convert a scope value to JSON: bytes as latin-1, tuples as lists, others by type name."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return f"<non-JSON {type(value).__name__}>"


async def read_body(receive: Receive) -> bytes:
    """Read the whole request body."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def respond(
    send: Send,
    body: bytes,
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"text/plain; charset=utf-8",
) -> None:
    """Send a complete response with a content-length."""
    all_headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, data: object, status: int = 200) -> None:
    """Send `data` as a JSON response."""
    await respond(send, json.dumps(data).encode(), status, content_type=b"application/json")


async def serve_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """Complete lifespan startup and shutdown, putting a few values into the state."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            state = scope.get("state")
            if state is not None:
                state["answer"] = 42
                state["marker"] = StateMarker()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def http_only(handler: App) -> App:
    """Wrap an HTTP handler into an app that also completes the lifespan protocol."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(scope, receive, send)
            return
        await handler(scope, receive, send)

    app.__doc__ = handler.__doc__
    return app


@http_only
async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """Return a fixed text body with a content-length set by the app."""
    await respond(send, b"Hello, world!")


@http_only
async def scope_dump(scope: Scope, receive: Receive, send: Send) -> None:
    """Return the scope as JSON, with the Python types of its values and the body length."""
    body = await read_body(receive)
    report = {
        "scope": to_json(scope),
        "types": {key: type(value).__name__ for key, value in scope.items()},
        "header_types": sorted(
            {type(part).__name__ for pair in scope.get("headers", []) for part in pair}
        ),
        "body_length": len(body),
    }
    await respond_json(send, report)


@http_only
async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Stream the request body back as it arrives, without a content-length."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        if body:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@http_only
async def count(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the body without keeping it and return its size and number of chunks."""
    total = 0
    chunks = 0
    largest = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        size = len(message.get("body", b""))
        total += size
        chunks += 1
        largest = max(largest, size)
        if not message.get("more_body", False):
            break
    await respond_json(send, {"bytes": total, "chunks": chunks, "max_chunk": largest})


@http_only
async def chunks(scope: Scope, receive: Receive, send: Send) -> None:
    """Send three body parts with pauses between them, so the server must stream."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for part in (b"alpha-", b"beta-", b"gamma"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
        await asyncio.sleep(0.05)
    await send({"type": "http.response.body", "body": b""})


@http_only
async def no_content(scope: Scope, receive: Receive, send: Send) -> None:
    """Send 204 with a content-length and body bytes that the server must both drop."""
    headers = [
        (b"x-first", b"1"),
        (b"content-length", b"5"),
        (b"x-kind", b"no-content"),
        (b"x-last", b"2"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})


@http_only
async def length_mismatch(scope: Scope, receive: Receive, send: Send) -> None:
    """Send b"hello" in one piece with the content-length given as the query."""
    headers = [(b"content-length", scope["query_string"])]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})


@http_only
async def joined_headers(scope: Scope, receive: Receive, send: Send) -> None:
    """Send a Connection header that the server joins with the request's close."""
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"keep-alive"),
        (b"Set-Cookie", b"a=1"),
        (b"X-Frame-Options", b"DENY"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@http_only
async def not_modified(scope: Scope, receive: Receive, send: Send) -> None:
    """Send 304 with an etag and the content-length a 200 would have."""
    headers = [(b"etag", b'"v1"'), (b"content-length", b"11")]
    await send({"type": "http.response.start", "status": 304, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


@http_only
async def raise_before_start(scope: Scope, receive: Receive, send: Send) -> None:
    """Raise before sending anything."""
    raise RuntimeError("raised before the response started")


@http_only
async def raise_after_start(scope: Scope, receive: Receive, send: Send) -> None:
    """Send the start and part of a 20-byte body, then raise."""
    headers = [(b"content-length", b"20")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("raised after the response started")


@http_only
async def no_response(scope: Scope, receive: Receive, send: Send) -> None:
    """Return without sending a response."""


@http_only
async def invalid_message(scope: Scope, receive: Receive, send: Send) -> None:
    """Send a message type that does not exist in the ASGI HTTP protocol."""
    await send({"type": "http.response.bogus"})


@http_only
async def sleep(scope: Scope, receive: Receive, send: Send) -> None:
    """Record `sleep-started`, sleep `ms` milliseconds (query), then return the path."""
    delay_ms = int(query_params(scope).get("ms", "0"))
    record("sleep-started", {"path": scope["path"], "ms": delay_ms})
    await asyncio.sleep(delay_ms / 1000)
    await respond(send, f"slept {delay_ms} ms on {scope['path']}".encode())


@http_only
async def stream(scope: Scope, receive: Receive, send: Send) -> None:
    """Stream `size` bytes (query) in 64 KiB chunks, recording progress and how `send` ended.

    The record `stream-<name>` contains the bytes handed to `send` so far and, at
    the end, the exception `send` raised (type name and base classes) or null.
    """
    params = query_params(scope)
    size = int(params.get("size", str(1 << 20)))
    name = f"stream-{params.get('name', 'default')}"
    sent = 0
    await send({"type": "http.response.start", "status": 200, "headers": []})
    record(name, {"sent": 0, "done": False, "error": None})
    try:
        while sent < size:
            part = STREAM_CHUNK[: size - sent]
            await send({"type": "http.response.body", "body": part, "more_body": True})
            sent += len(part)
            if (sent // len(STREAM_CHUNK)) % STREAM_PROGRESS_EVERY == 0:
                record(name, {"sent": sent, "done": False, "error": None})
        await send({"type": "http.response.body", "body": b""})
    except Exception as error:
        mro = [cls.__name__ for cls in type(error).__mro__]
        record(name, {"sent": sent, "done": True, "error": type(error).__name__, "mro": mro})
        raise
    record(name, {"sent": sent, "done": True, "error": None, "mro": []})


@http_only
async def unsized(scope: Scope, receive: Receive, send: Send) -> None:
    """Send the whole body in one message without a content-length header."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"one complete body"})


@http_only
async def sized_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """Stream a body that fills its content-length, then end it with an empty message.

    Starlette 1.10's BaseHTTPMiddleware forwards every response body this way. The
    record `sized-stream` contains the exception the closing `send` raised, or null.
    """
    headers = [(b"content-length", b"10")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"01234", "more_body": True})
    await send({"type": "http.response.body", "body": b"56789", "more_body": True})
    # Give the server time to write the body before the closing message arrives.
    await asyncio.sleep(0.05)
    try:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except Exception as error:
        record("sized-stream", {"error": f"{type(error).__name__}: {error}"})
        raise
    record("sized-stream", {"error": None})


@http_only
async def expect(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the body only when the path ends in /read, otherwise respond without reading it."""
    if scope["path"].endswith("/read"):
        body = await read_body(receive)
        await respond(send, b"read %d bytes" % len(body))
    else:
        await respond(send, b"did not read the body", status=200)


@http_only
async def header_order(scope: Scope, receive: Receive, send: Send) -> None:
    """Send headers with mixed-case names and values, a name repeated after
    others, and a fixed order; `?stream` sends the body in two parts."""
    headers = [
        (b"X-First", b"1"),
        (b"set-cookie", b"a=1; Path=/; HttpOnly"),
        (b"X-Mixed-Case", b"VaLuE With  Spaces"),
        (b"Set-Cookie", b"b=2; Path=/"),
        (b"x-last", b"Z"),
    ]
    if scope["query_string"] == b"stream":
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ord", "more_body": True})
        # Suspending here makes the server send the head before the whole body exists.
        await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"ered"})
        return
    await respond(send, b"ordered", headers=headers)


@http_only
async def custom_server(scope: Scope, receive: Receive, send: Send) -> None:
    """Set the `server` and `date` headers itself."""
    headers = [(b"server", b"custom-app/1.0"), (b"date", b"Thu, 01 Jan 2026 00:00:00 GMT")]
    await respond(send, b"custom", headers=headers)


@http_only
async def receive_log(scope: Scope, receive: Receive, send: Send) -> None:
    """Record every `receive()` message, then one more `receive()` after the response.

    The record `receive-log` lists each message as [type, body length, more_body];
    the call after the response is bounded by 5 s and recorded as "timeout" if
    it does not return.
    """
    messages: list[list[object]] = []
    while True:
        message = await receive()
        messages.append([message["type"], len(message.get("body", b"")), message.get("more_body")])
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    await respond(send, b"logged %d messages" % len(messages))
    try:
        after = await asyncio.wait_for(receive(), timeout=5)
        messages.append([after["type"], len(after.get("body", b"")), after.get("more_body")])
    except asyncio.TimeoutError:
        messages.append(["timeout", 0, None])
    record("receive-log", messages)


@http_only
async def state_check(scope: Scope, receive: Receive, send: Send) -> None:
    """Return the request state, then add a key to it that later requests must not see."""
    state = scope.get("state")
    report = to_json(dict(state)) if state is not None else None
    if state is not None:
        state["set_by_request"] = scope["path"]
    await respond_json(send, {"state": report})


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """Return 404 for paths that no handler serves."""
    await respond(send, b"not found", status=404)


ROUTES: dict[str, App] = {
    "/hello": hello,
    "/scope": scope_dump,
    "/echo": echo,
    "/count": count,
    "/chunks": chunks,
    "/no-content": no_content,
    "/not-modified": not_modified,
    "/raise-before-start": raise_before_start,
    "/raise-after-start": raise_after_start,
    "/no-response": no_response,
    "/invalid-message": invalid_message,
    "/sleep": sleep,
    "/stream": stream,
    "/sized-stream": sized_stream,
    "/unsized": unsized,
    "/expect": expect,
    "/header-order": header_order,
    "/length-mismatch": length_mismatch,
    "/joined-headers": joined_headers,
    "/custom-server": custom_server,
    "/receive-log": receive_log,
    "/state": state_check,
}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Route to a handler by the first path segment after the root path."""
    if scope["type"] == "lifespan":
        await serve_lifespan(scope, receive, send)
        return
    path = scope["path"]
    root_path = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    first_segment = "/" + path.lstrip("/").split("/", 1)[0]
    handler = ROUTES.get(first_segment, not_found)
    await handler(scope, receive, send)
