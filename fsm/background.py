"""The process's background event loop: where synchronous code runs coroutines (the blocking
engine, the sync engine's media channel, the testing kit), so that connections opened there
always stay on the loop that opened them. It imports no engine: every module may use it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_started = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's background event loop (a daemon thread), started on first use."""
    global _loop
    with _started:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="fsm-async", daemon=True).start()
            _loop = loop
        return _loop


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the background loop and wait for its result (or its exception).

    If the waiting thread is interrupted (Ctrl-C), the coroutine is cancelled and waited for,
    so a message does not go on in the background after its caller gave up: the engine frees
    its lease, as the sync engine would, before the interruption goes on."""
    future = asyncio.run_coroutine_threadsafe(coroutine, background_loop())
    try:
        return future.result()
    except BaseException:
        if not future.done():
            future.cancel()
            concurrent.futures.wait([future])
        raise
