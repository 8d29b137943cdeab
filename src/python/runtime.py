"""Glue that fastserve runs inside its embedded interpreter.

Loading the application, creating the event loop and driving the ASGI
lifespan protocol happen once per process, so they are written in Python.
The per-request path (scopes, ``receive`` and ``send``) is in Rust.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from typing import Any

# Version of the lifespan sub-specification implemented here.
LIFESPAN_SPEC_VERSION = "2.0"


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the client has closed the connection."""


class StartupError(Exception):
    """The app cannot be served, and the message explains why to the operator."""


def load_app(module_name: str, attribute: str, factory: bool, app_dir: str) -> Callable[..., Any]:
    """Import ``module_name``, look up the dotted ``attribute`` and check it is callable."""
    sys.path.insert(0, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            searched = "\n  ".join(sys.path)
            raise StartupError(
                f'could not import module "{module_name}": {exc}\n'
                f"searched sys.path:\n  {searched}\n"
                "check the module name, or pass --app-dir DIR for the directory that holds it"
            ) from None
        raise

    app: Any = module
    for part in attribute.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise StartupError(
                f'attribute "{attribute}" not found in module "{module_name}"'
            ) from None

    if factory:
        app = app()
    if not callable(app):
        kind = type(app).__name__
        raise StartupError(
            f'"{module_name}:{attribute}" is not an ASGI application: '
            f"expected a callable, got {kind}"
        )
    if inspect.isclass(app) and not factory:
        raise StartupError(
            f'"{module_name}:{attribute}" is a class; pass --factory if calling it returns the app'
        )
    return app


def new_event_loop(kind: str) -> tuple[asyncio.AbstractEventLoop, str]:
    """Create the event loop named by ``--loop`` and return it with its name."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise StartupError(
                    "--loop uvloop: uvloop is not installed; "
                    "install it with `pip install uvloop` or use --loop asyncio"
                ) from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def format_exception(exc: BaseException) -> str:
    """Return the traceback of ``exc`` as text for the error log."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


class Lifespan:
    """Drives the ASGI lifespan protocol for one app.

    ``mode`` is ``--lifespan``: with ``auto`` an app that raises before it
    answers the startup event is served without lifespan, as uvicorn does.
    """

    def __init__(self, app: Callable[..., Any], mode: str, log: Callable[[str, str], None]) -> None:
        self.app = app
        self.mode = mode
        self.log = log
        self.state: dict[str, Any] = {}
        self.supported = mode != "off"
        self._messages: asyncio.Queue[dict[str, Any]] | None = None
        self._startup_done: asyncio.Event | None = None
        self._shutdown_done: asyncio.Event | None = None
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Send ``lifespan.startup`` and wait for the reply; raise StartupError on failure."""
        if not self.supported:
            return
        self._messages = asyncio.Queue()
        self._startup_done = asyncio.Event()
        self._shutdown_done = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

        await self._messages.put({"type": "lifespan.startup"})
        await self._startup_done.wait()
        if self._failure is not None:
            raise StartupError(self._failure)

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the app to finish it."""
        if not self.supported or self._messages is None or self._shutdown_done is None:
            return
        await self._messages.put({"type": "lifespan.shutdown"})
        await self._shutdown_done.wait()
        if self._failure is not None:
            self.log("error", f"lifespan shutdown failed: {self._failure}")

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": LIFESPAN_SPEC_VERSION},
            "state": self.state,
        }
        assert self._startup_done is not None and self._shutdown_done is not None
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:  # noqa: BLE001 - any failure of the app is reported
            if not self._startup_done.is_set() and self.mode == "auto":
                self.supported = False
                self.log("info", "the app does not support lifespan, serving without it")
            elif not self._startup_done.is_set():
                self._failure = f"the app raised in the lifespan protocol:\n{format_exception(exc)}"
            else:
                self._failure = format_exception(exc)
        finally:
            self._startup_done.set()
            self._shutdown_done.set()

    async def _receive(self) -> dict[str, Any]:
        assert self._messages is not None
        return await self._messages.get()

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._startup_done is not None and self._shutdown_done is not None
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            self._startup_done.set()
        elif kind == "lifespan.startup.failed":
            reason = message.get("message") or "no message given"
            self._failure = f"the app reported lifespan startup failed: {reason}"
            self._startup_done.set()
        elif kind == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif kind == "lifespan.shutdown.failed":
            self._failure = message.get("message") or "no message given"
            self._shutdown_done.set()
        else:
            raise RuntimeError(
                f"unexpected ASGI message type {kind!r} in the lifespan protocol: expected "
                "lifespan.startup.complete/failed or lifespan.shutdown.complete/failed"
            )


async def stop(lifespan: Lifespan, timeout: float) -> None:
    """Run lifespan shutdown (bounded by ``timeout`` seconds), then stop the loop."""
    try:
        await asyncio.wait_for(lifespan.shutdown(), timeout)
    except asyncio.TimeoutError:
        lifespan.log("warning", f"lifespan shutdown did not finish within {timeout:g} s")
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        asyncio.get_running_loop().stop()
