"""Example FastAPI service served by fastserve in the container image.

JSON routes for a quick look, a WebSocket echo at `/ws`, and `/slow` to watch
a graceful shutdown: start `curl 'localhost:8080/slow?seconds=2.5'`, stop the
container, and the request still completes before the server exits.
"""

import asyncio
import os
import platform

from fastapi import FastAPI, HTTPException, Query, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

# Upper bound for /slow, so one request cannot hold a worker for long.
MAX_SLOW_SECONDS = 30.0

app = FastAPI(title="fastserve example", version="1.0.0")


class Item(BaseModel):
    """An item stored by PUT /items/{item_id}."""

    name: str = Field(min_length=1, max_length=100)
    price: float = Field(ge=0)


# In-memory store for the items routes; each worker process has its own.
ITEMS: dict[int, Item] = {}


@app.get("/")
async def index() -> dict[str, object]:
    """Return a greeting with the worker's process id and the Python version."""
    return {
        "message": "Hello from fastserve",
        "pid": os.getpid(),
        "python": platform.python_version(),
    }


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> Item:
    """Return a stored item, or 404."""
    item = ITEMS.get(item_id)
    if item is None:
        raise HTTPException(status_code=404, detail=f"item {item_id} not found")
    return item


@app.put("/items/{item_id}")
async def store_item(item_id: int, item: Item) -> dict[str, object]:
    """Store an item under `item_id` and echo it back."""
    ITEMS[item_id] = item
    return {"id": item_id, "item": item}


@app.get("/slow")
async def slow(seconds: float = Query(default=2.5, ge=0, le=MAX_SLOW_SECONDS)) -> dict[str, float]:
    """Wait `seconds` (at most 30) before responding, to show draining on stop."""
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    """Echo text messages; on shutdown the client gets close code 1001."""
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        return
