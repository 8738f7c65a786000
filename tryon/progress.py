"""Process-local progress notifications: the flow publishes each finished item, the CLI's
progress bar and the Prefect progress artifact subscribe. Listeners are async and quick."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

Listener = Callable[[Any], Awaitable[None]]
_listeners: list[Listener] = []


async def publish(report: Any) -> None:
    for listener in list(_listeners):
        await listener(report)


@contextmanager
def subscribe(listener: Listener) -> Iterator[None]:
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
