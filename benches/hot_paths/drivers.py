"""Coroutines that the hot_paths benchmarks step from Rust.

Each coroutine awaits in a loop, so one call from Rust measures many awaits
and the cost of crossing from Rust into Python is spread over all of them.
The benchmarks pass only awaitables that complete at once, and
``run_to_end`` raises if a coroutine suspends. Each coroutine is thus
stepped once, as an eager task steps an ASGI app whose ``send`` and
``receive`` do not suspend.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

Message = dict[str, Any]


def run_to_end(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Step ``coroutine`` once and return its result.

    Raises RuntimeError if the coroutine suspends, because then the
    benchmark would measure something other than an awaitable that is done.
    """
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise RuntimeError("the coroutine suspended: an awaitable it awaited was not complete")


async def await_repeatedly(awaitable: Awaitable[Any], count: int) -> Any:
    """Await ``awaitable`` ``count`` times and return the last result."""
    result = None
    for _ in range(count):
        result = await awaitable
    return result


async def await_done_futures(create_future: Callable[[], Any], count: int) -> Any:
    """Create, resolve and await ``count`` asyncio futures, one after another.

    This approximates the work a ``send`` that returned a resolved asyncio
    future, in place of fastserve's ``Ready``, would add per call.
    """
    result = None
    for _ in range(count):
        future = create_future()
        future.set_result(None)
        result = await future
    return result


async def send_responses(
    sends: list[Callable[[Message], Awaitable[None]]], start: Message, body: Message
) -> None:
    """Send a whole response, start then body, through each ``send``."""
    for send in sends:
        await send(start)
        await send(body)


async def receive_from_each(receives: list[Callable[[], Awaitable[Message]]]) -> Message | None:
    """Call and await each ``receive`` once and return the last message."""
    message = None
    for receive in receives:
        message = await receive()
    return message
