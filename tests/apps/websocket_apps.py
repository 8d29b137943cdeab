"""FastAPI WebSocket endpoints served by the WebSocket tests through fastserve and uvicorn.

Endpoints that observe something the client cannot see (the disconnect code,
whether a `finally` block ran) write it as JSON into the folder named by
TEST_RECORD_DIR, under the name given in the `record` query parameter.
"""

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse

RECORD_DIR_ENV = "TEST_RECORD_DIR"


def record(name: str, data: object) -> None:
    """Write `data` as JSON to TEST_RECORD_DIR/name.json, replacing it atomically."""
    folder = os.environ.get(RECORD_DIR_ENV)
    if not folder:
        return
    target = Path(folder) / f"{name}.json"
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(target)


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
    return type(value).__name__


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Provide a lifespan state so the scope carries `state`."""
    yield {"greeting": "hello"}


app = FastAPI(lifespan=lifespan)


@app.websocket("/echo")
async def echo(websocket: WebSocket) -> None:
    """Echo text and bytes. `close CODE REASON` makes the server close with that code."""
    offered = websocket.scope["subprotocols"]
    await websocket.accept(subprotocol=offered[0] if offered else None)
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None and text.startswith("close "):
            _, code, reason = text.split(" ", 2)
            await websocket.close(int(code), reason)
            return
        if text is not None:
            await websocket.send_text(text)
        else:
            await websocket.send_bytes(message["bytes"])


@app.websocket("/scope")
async def scope(websocket: WebSocket) -> None:
    """Send the scope back as JSON, then wait for the client to close."""
    await websocket.accept()
    await websocket.send_text(json.dumps(to_json(websocket.scope)))
    try:
        await websocket.receive_text()
    except WebSocketDisconnect:
        pass


@app.websocket("/headers")
async def headers(websocket: WebSocket) -> None:
    """Accept with extra response headers, one name twice, then close normally."""
    headers = [(b"x-custom", b"yes"), (b"x-other", b"2"), (b"x-custom", b"again")]
    await websocket.accept(headers=headers)
    await websocket.close()


@app.websocket("/reject")
async def reject(websocket: WebSocket) -> None:
    """Close before accepting: the client gets HTTP 403."""
    await websocket.close()


@app.websocket("/deny")
async def deny(websocket: WebSocket) -> None:
    """Respond to the handshake with a 401 response through the denial extension."""
    response = PlainTextResponse("login first", status_code=401, headers={"x-denied": "1"})
    await websocket.send_denial_response(response)


@app.websocket("/fail")
async def fail(websocket: WebSocket) -> None:
    """Raise before responding to the handshake: the client gets HTTP 500."""
    raise RuntimeError("failing on purpose before accept")


@app.websocket("/record")
async def record_disconnect(websocket: WebSocket) -> None:
    """Wait for the disconnect and record its code and reason; record that `finally` ran."""
    name = websocket.query_params["record"]
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                record(
                    name,
                    {"code": message["code"], "reason": message.get("reason")},
                )
                return
            await websocket.send_text(message.get("text") or "bytes")
    finally:
        # A short await in cleanup, as a real app closing a resource would do.
        await asyncio.sleep(0.05)
        record(f"{name}-finally", {"ran": True})


@app.websocket("/slow-accept")
async def slow_accept(websocket: WebSocket) -> None:
    """Accept after `delay` seconds, then echo until the client leaves."""
    await asyncio.sleep(float(websocket.query_params["delay"]))
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


@app.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    """Send `count` messages of `size` bytes as fast as `send()` allows, then close."""
    count = int(websocket.query_params["count"])
    size = int(websocket.query_params["size"])
    await websocket.accept()
    payload = b"x" * size
    for _ in range(count):
        await websocket.send_bytes(payload)
    await websocket.close()
