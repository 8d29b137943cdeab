"""Raw ASGI app for the load comparison; it imports nothing.

Routes:
    GET  /        13-byte plain-text hello with content-length.
    POST /echo    returns the request body unchanged (the harness sends 1 KiB).
    GET  /stream  64 chunks of 256 bytes, no content-length, so HTTP/1.1 uses chunked.
    other         404.
"""

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HELLO_BODY = b"Hello, world!"
STREAM_CHUNK_COUNT = 64
STREAM_CHUNK = b"x" * 255 + b"\n"

TEXT_HEADERS = [(b"content-type", b"text/plain")]


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown so every server runs the lifespan protocol."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(send: Send) -> None:
    """Send the fixed hello body in one message."""
    headers = TEXT_HEADERS + [(b"content-length", b"13")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": HELLO_BODY})


async def echo(receive: Receive, send: Send) -> None:
    """Read the whole request body and send it back."""
    chunks = []
    more_body = True
    while more_body:
        message = await receive()
        chunks.append(message.get("body", b""))
        more_body = message.get("more_body", False)
    body = b"".join(chunks)
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def stream(send: Send) -> None:
    """Send the response body as separate messages, one per chunk."""
    await send({"type": "http.response.start", "status": 200, "headers": TEXT_HEADERS})
    for _ in range(STREAM_CHUNK_COUNT):
        await send({"type": "http.response.body", "body": STREAM_CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def not_found(send: Send) -> None:
    """Send an empty 404."""
    headers = [(b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Dispatch on scope type, then on method and path."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return

    route = (scope["method"], scope["path"])
    if route == ("GET", "/"):
        await hello(send)
    elif route == ("POST", "/echo"):
        await echo(receive, send)
    elif route == ("GET", "/stream"):
        await stream(send)
    else:
        await not_found(send)
