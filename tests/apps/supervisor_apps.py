"""ASGI apps for the supervisor and health tests: pids, subprocesses, slow and blocking handlers.

`app` routes on the path:

- `/pid` returns the worker's process id as JSON `{"pid": N}`.
- `/sleep?ms=N` records `sleep-started`, then awaits `asyncio.sleep` for N ms.
- `/block?ms=N` records `block-started`, then blocks the event loop with `time.sleep`.
- `/double-fork?ms=N` starts a grandchild that sleeps N ms and is re-parented to
  the nearest subreaper (PID 1 in a PID namespace), and returns its pid.
- `/exit-status?mode=run|thread|asyncio` runs `sh -c "exit 7"` with `subprocess.run`
  on the loop, with `subprocess.run` in a thread, or with asyncio's subprocess API,
  and returns the exit status the app observed.
- `/health` returns "served by the app", which is only reachable with `--no-health`.
- Every other path returns "ok".

`slow_startup` serves the same routes after a lifespan startup of SLOW_STARTUP_S seconds.
"""

import asyncio
import os
import subprocess
import time

from raw_apps import (
    Receive,
    Scope,
    Send,
    query_params,
    record,
    respond,
    respond_json,
    serve_lifespan,
)

# The command whose exit status the app must observe itself.
EXIT_STATUS_COMMAND = ["sh", "-c", "exit 7"]


async def pid(scope: Scope, receive: Receive, send: Send) -> None:
    """Return the pid of the worker that served the request."""
    await respond_json(send, {"pid": os.getpid()})


async def sleep(scope: Scope, receive: Receive, send: Send) -> None:
    """Record `sleep-started`, then sleep without blocking the loop."""
    delay_ms = int(query_params(scope).get("ms", "0"))
    record("sleep-started", {"pid": os.getpid(), "ms": delay_ms})
    await asyncio.sleep(delay_ms / 1000)
    await respond(send, f"slept {delay_ms} ms".encode())


async def block(scope: Scope, receive: Receive, send: Send) -> None:
    """Record `block-started`, then block the event loop (a handler that should not exist)."""
    delay_ms = int(query_params(scope).get("ms", "0"))
    record("block-started", {"pid": os.getpid(), "ms": delay_ms})
    time.sleep(delay_ms / 1000)
    await respond(send, f"blocked {delay_ms} ms".encode())


async def double_fork(scope: Scope, receive: Receive, send: Send) -> None:
    """Start a background `sleep` from a shell that exits at once, orphaning the sleep."""
    delay_s = int(query_params(scope).get("ms", "300")) / 1000
    # The grandchild's output goes to /dev/null, so the captured pipe closes when sh exits.
    script = f"sleep {delay_s} </dev/null >/dev/null 2>&1 & echo $!"
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    await respond_json(send, {"grandchild": int(result.stdout.strip()), "shell": result.returncode})


async def exit_status(scope: Scope, receive: Receive, send: Send) -> None:
    """Run `sh -c "exit 7"` and return the exit status the app saw."""
    mode = query_params(scope).get("mode", "run")
    if mode == "run":
        returncode = subprocess.run(EXIT_STATUS_COMMAND).returncode
    elif mode == "thread":
        completed = await asyncio.to_thread(subprocess.run, EXIT_STATUS_COMMAND)
        returncode = completed.returncode
    elif mode == "asyncio":
        process = await asyncio.create_subprocess_exec(*EXIT_STATUS_COMMAND)
        returncode = await process.wait()
    else:
        await respond(send, f"invalid mode {mode!r}".encode(), status=400)
        return
    await respond_json(send, {"mode": mode, "returncode": returncode})


async def app_health(scope: Scope, receive: Receive, send: Send) -> None:
    """Return a body that distinguishes the app's /health from the built-in one."""
    await respond(send, b"served by the app")


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    """Return a fixed body."""
    await respond(send, b"ok")


ROUTES = {
    "/pid": pid,
    "/sleep": sleep,
    "/block": block,
    "/double-fork": double_fork,
    "/exit-status": exit_status,
    "/health": app_health,
}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Route HTTP requests by path and complete the lifespan protocol."""
    if scope["type"] == "lifespan":
        await serve_lifespan(scope, receive, send)
        return
    handler = ROUTES.get(scope["path"], ok)
    await handler(scope, receive, send)


# Seconds `slow_startup` spends in lifespan startup, long enough to probe /health meanwhile.
SLOW_STARTUP_S = 1.5


async def slow_startup(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve like `app`, but take SLOW_STARTUP_S seconds to complete lifespan startup."""
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup", message
        await asyncio.sleep(SLOW_STARTUP_S)
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await app(scope, receive, send)
