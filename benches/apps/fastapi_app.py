"""FastAPI app for the load comparison: one JSON route, nothing but FastAPI imported."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/json")
async def read_json() -> dict[str, object]:
    """Return a small JSON object through FastAPI's normal serialisation."""
    return {"message": "Hello, world!", "items": [1, 2, 3], "ok": True}
