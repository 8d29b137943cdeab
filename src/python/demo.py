"""The app fastserve serves when no APP is given.

Plain ASGI with nothing beyond the standard library, so it runs in any
environment.
"""

import json
import platform
from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Answer ``GET /`` with a JSON greeting and anything else with 404."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/":
        status = 200
        payload = {
            "message": "Hello from fastserve",
            "python": platform.python_version(),
            "next": "run your own app with: fastserve module:app",
        }
    else:
        status = 404
        payload = {"detail": "Not Found"}
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
