"""A FastAPI app that uses the features real services use, for end-to-end tests.

Path and query parameters, a pydantic body, a dependency, a background task,
a streaming response, a file response, a custom exception handler and an HTTP
middleware, plus the generated /docs and /openapi.json.
"""

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from fastapi import BackgroundTasks, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

STATIC_FILE = Path(__file__).parent / "static" / "sample.txt"

app = FastAPI(title="fastserve test app", version="1.0.0")

# Notes recorded by background tasks, read back through GET /background.
BACKGROUND_NOTES: list[str] = []


class Item(BaseModel):
    """An item in an order."""

    name: str = Field(min_length=1)
    price: float = Field(ge=0)
    quantity: int = 1
    tags: list[str] = []


class TeapotError(Exception):
    """Raised by /teapot and turned into a 418 response by the handler below."""

    def __init__(self, flavour: str) -> None:
        super().__init__(flavour)
        self.flavour = flavour


@app.exception_handler(TeapotError)
async def handle_teapot(request: Request, error: TeapotError) -> JSONResponse:
    """Turn TeapotError into 418 with the flavour in the body."""
    return JSONResponse(status_code=418, content={"error": "teapot", "flavour": error.flavour})


@app.middleware("http")
async def tag_response(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Add `x-middleware: applied` to every response."""
    response = await call_next(request)
    response.headers["x-middleware"] = "applied"
    return response


def require_token(x_token: str | None = Header(default=None)) -> str:
    """Accept only requests with `x-token: secret`."""
    if x_token != "secret":
        raise HTTPException(status_code=401, detail="missing or invalid x-token")
    return x_token


def store_note(note: str) -> None:
    """Record a note. It runs as a background task after the response."""
    BACKGROUND_NOTES.append(note)


@app.get("/")
async def root() -> dict[str, str]:
    """Return a fixed JSON object."""
    return {"app": "fastapi", "status": "ok"}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None, limit: int = 10) -> dict[str, object]:
    """Return the path and query parameters as parsed by FastAPI."""
    return {"item_id": item_id, "q": q, "limit": limit}


@app.post("/items", status_code=201)
async def create_item(item: Item) -> dict[str, object]:
    """Return the validated item and its total price."""
    return {"item": item.model_dump(), "total": item.price * item.quantity}


@app.get("/secure")
async def secure(token: str = Depends(require_token)) -> dict[str, bool]:
    """Return 200 only when the dependency accepted the token."""
    return {"token_ok": True}


@app.post("/background", status_code=202)
async def queue_note(note: str, tasks: BackgroundTasks) -> dict[str, str]:
    """Queue a background task that records `note`."""
    tasks.add_task(store_note, note)
    return {"queued": note}


@app.get("/background")
async def list_notes() -> dict[str, list[str]]:
    """Return the notes recorded by background tasks so far."""
    return {"notes": BACKGROUND_NOTES}


@app.get("/stream")
async def stream_lines(lines: int = 5) -> StreamingResponse:
    """Stream `lines` numbered lines."""

    def generate() -> Iterator[bytes]:
        for number in range(lines):
            yield f"line {number}\n".encode()

    return StreamingResponse(generate(), media_type="text/plain")


@app.get("/file")
async def static_file() -> FileResponse:
    """Return a small text file."""
    return FileResponse(STATIC_FILE, media_type="text/plain")


@app.get("/teapot")
async def teapot(flavour: str = "earl grey") -> None:
    """Raise TeapotError, handled by the custom exception handler."""
    raise TeapotError(flavour)


@app.get("/missing")
async def missing() -> None:
    """Raise HTTPException(404)."""
    raise HTTPException(status_code=404, detail="no such thing")
