"""ASGI apps that exercise the lifespan protocol: state, shutdown, failed startup, no support.

`app` records `lifespan-startup` and `lifespan-shutdown` into TEST_RECORD_DIR,
so a test can tell that shutdown ran after a signal.
"""

import asyncio
from typing import Any

from raw_apps import Receive, Scope, Send, query_params, record, respond, respond_json, to_json

STARTUP_FAILURE_MESSAGE = "database unreachable during startup"
LIFESPAN_ERROR_MESSAGE = "this app does not support the lifespan protocol"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Keep a state through lifespan, and serve /sleep?ms=N and the state over HTTP."""
    if scope["type"] == "lifespan":
        await run_lifespan(scope, receive, send)
        return
    if scope["path"] == "/sleep":
        delay_ms = int(query_params(scope).get("ms", "0"))
        record("sleep-started", {"ms": delay_ms})
        await asyncio.sleep(delay_ms / 1000)
        await respond(send, f"slept {delay_ms} ms".encode())
        return
    state: dict[str, Any] = scope.get("state") or {}
    await respond_json(send, {"state": to_json(state)})


async def run_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """Fill the state at startup and record both phases."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["db"] = "connected"
            scope["state"]["startups"] = 1
            record("lifespan-startup", {"ran": True})
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            record("lifespan-shutdown", {"ran": True})
            await send({"type": "lifespan.shutdown.complete"})
            return


async def failing_startup(scope: Scope, receive: Receive, send: Send) -> None:
    """Report lifespan startup failure with a message, so HTTP is never served."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": STARTUP_FAILURE_MESSAGE})
        return
    await respond(send, b"should never be served", status=500)


async def raising_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """Raise on the lifespan scope, as apps without lifespan support do, but serve HTTP."""
    if scope["type"] != "http":
        raise RuntimeError(LIFESPAN_ERROR_MESSAGE)
    await respond(send, b"served without lifespan")
