"""The app fastserve serves when no APP is given: plain ASGI, no imports beyond the standard library."""

import json
import platform


async def app(scope, receive, send):
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
