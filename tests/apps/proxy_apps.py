"""Apps for the proxy, limits, access log and response header tests.

`app` is a raw ASGI app routed on the path (after the root path):

- `/scope` returns the scope values that proxy headers change, as JSON;
- `/slow?ms=N` waits N milliseconds, then returns a short text;
- `/body` reads the whole body and records the `receive()` message types;
- `/env?name=X` returns the value of X in os.environ at import time;
- `/app-headers` sets `server`, `x-team` and `date` itself;
- anything else returns `Hello, world!` (13 bytes).

`fastapi_app` is a FastAPI app with a named route for `url_for` and the
default `/docs` and `/openapi.json`.
"""

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RECORD_DIR_ENV = "TEST_RECORD_DIR"
HELLO = b"Hello, world!"
# The environment as the app saw it when it was imported.
IMPORT_ENV = dict(os.environ)


def record(name: str, data: object) -> None:
    """Write `data` as JSON to TEST_RECORD_DIR/name.json, replacing it atomically."""
    folder = os.environ.get(RECORD_DIR_ENV)
    if not folder:
        return
    target = Path(folder) / f"{name}.json"
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(target)


def query(scope: Scope) -> dict[str, str]:
    """Return the query string as a dict with the last value of each name."""
    parsed = parse_qs(scope["query_string"].decode("latin-1"))
    return {name: values[-1] for name, values in parsed.items()}


async def respond(
    send: Send,
    body: bytes,
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a complete response with a content-length."""
    all_headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    """Complete lifespan startup and shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def scope_report(scope: Scope) -> dict[str, Any]:
    """Return the scope values that proxy headers may change."""
    host = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
    client = scope.get("client")
    server = scope.get("server")
    return {
        "client": list(client) if client else None,
        "scheme": scope["scheme"],
        "server": list(server) if server else None,
        "root_path": scope.get("root_path", ""),
        "path": scope["path"],
        "host": host,
    }


async def read_body(receive: Receive) -> list[str]:
    """Read the body to its end or a disconnect; return the message types and sizes."""
    seen = []
    while True:
        message = await receive()
        seen.append(f"{message['type']}:{len(message.get('body', b''))}")
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return seen


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Route on the path after the root path; see the module docstring."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"][len(scope.get("root_path", "")) :]
    if path == "/scope":
        await respond(send, json.dumps(scope_report(scope)).encode())
    elif path == "/slow":
        await asyncio.sleep(int(query(scope).get("ms", "500")) / 1000)
        await respond(send, b"slow done")
    elif path == "/body":
        seen = await read_body(receive)
        record("body", seen)
        if seen[-1].startswith("http.disconnect"):
            return
        await respond(send, json.dumps(seen).encode())
    elif path == "/env":
        value = IMPORT_ENV.get(query(scope).get("name", ""))
        await respond(send, json.dumps(value).encode())
    elif path == "/app-headers":
        headers = [
            (b"server", b"app-server"),
            (b"x-team", b"app"),
            (b"date", b"Thu, 01 Jan 2015 00:00:00 GMT"),
        ]
        await respond(send, HELLO, headers=headers)
    else:
        await respond(send, HELLO)


fastapi_app = FastAPI()


@fastapi_app.get("/items/{item_id}", name="item")
async def item(item_id: int) -> dict[str, int]:
    """Return the item id."""
    return {"item_id": item_id}


@fastapi_app.get("/link")
async def link(request: Request) -> dict[str, str]:
    """Return the absolute URL of item 1 as the app would put it in a link."""
    return {"url": str(request.url_for("item", item_id=1))}
