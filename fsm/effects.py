"""What the message protocol asks its driver to do, and nothing more.

The per-message algorithm (:mod:`fsm.protocol`) does no I/O of its own. It is a generator that
yields one of these requests at a time and is sent back the result (or has the exception
thrown in, exactly where the request was made). :class:`fsm.Engine` performs them with a
:class:`~fsm.store.SessionStore` and plain calls; :class:`fsm.AsyncEngine` with an
:class:`~fsm.store.AsyncSessionStore`, ``await`` and worker threads. That is the whole difference
between the two engines (the shape of psycopg's ``generators.py`` and ``waiting.py``).
Requests are frozen msgspec Structs: one is made per store call, and a Struct is made in C.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

import msgspec

from fsm.attachments import InboundMedia
from fsm.media_replies import OutboundMedia
from fsm.step import Context

T = TypeVar("T")


class StoreCall(msgspec.Struct, frozen=True):
    """Call ``store.<method>(*args, **kwargs)``; the sync and async stores share the names."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class HandlerCall(msgspec.Struct, frozen=True):
    """Call a flow method with its context. ``mode`` is :func:`fsm.flow.call_mode`'s answer:
    ``"async"`` (await it), ``"inline"`` (call it) or ``"thread"`` (the async engine runs it in
    a worker thread; the sync engine calls it)."""

    fn: Callable[[Context], Any]
    ctx: Context
    mode: str


class Download(msgspec.Struct, frozen=True):
    """Fetch the bytes of a file the user sent from the engine's media channel (a reply
    forwards it); the result is the bytes."""

    media: InboundMedia


class Upload(msgspec.Struct, frozen=True):
    """Upload a media reply's bytes to the engine's media channel (:mod:`fsm.media`); the
    result is the channel's media id. Asked for before the save that keeps the reply."""

    media: OutboundMedia


class Sleep(msgspec.Struct, frozen=True):
    """Wait ``seconds`` (a backoff before a retry or another lock attempt)."""

    seconds: float


class Guard(msgspec.Struct, frozen=True):
    """Make ``call`` if the protocol is still busy ``after`` seconds from now (its next
    :class:`Unguard` has not come): the async engine's driver runs it concurrently with the
    decision. A driver without concurrency (the sync engine's) never makes it."""

    call: StoreCall
    after: float


class Unguard(msgspec.Struct, frozen=True):
    """End the last :class:`Guard`: its call's result if it was made, else None (not made,
    or failed: a guard is best effort)."""


Effect = StoreCall | HandlerCall | Sleep | Guard | Unguard | Upload | Download

#: A piece of the protocol: yields effects, is sent their results, returns ``T``.
Steps = Generator[Effect, Any, T]
