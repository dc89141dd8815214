"""The channel's media store, as the engine sees it: the port a transport implements to fetch
the bytes of a file a user sent and to upload the bytes of a file a step sends.

- **Download**: a step asks for a file's bytes when it needs them (``ctx.download()`` in a
  ``def`` handler, ``await ctx.adownload()`` in an ``async def`` one), never before: a
  channel's download URLs expire, and most steps only keep the id. The channel checks the
  size against its cap, the mime type against its allow-list and the bytes against the
  sha256 the channel announced; what fails is a :class:`MediaError`, whose ``reason`` says
  which, and which names no URL and no token.
- **Upload**: a reply made from bytes (``fsm.document(data, filename=...)``) is uploaded
  *before* the save that keeps it in the outbox, and the outbox keeps the channel's media id
  instead of the bytes: a resend after a failure or a crash never uploads again, and no
  snapshot ever holds a file. A channel remembers what it uploaded by sha256, so a save
  retried after a conflict reuses the first upload.

:class:`MediaChannel` is the contract (``adapters.whatsapp.media.GraphMedia`` is WhatsApp's);
the engine takes one as ``media=`` (``fsm.AsyncEngine(flow, store, media=...)``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal, Protocol

from fsm.background import run
from fsm.errors import FsmError

if TYPE_CHECKING:
    from fsm.attachments import InboundMedia
    from fsm.media_replies import OutboundMedia

#: Why a download failed.
MediaProblem = Literal["too_large", "mime", "sha256", "expired", "unavailable", "no_channel"]


class MediaError(FsmError):
    """A file could not be fetched or uploaded; ``reason`` says why (:data:`MediaProblem`).
    A step may catch it and ask the user to send the file again."""

    def __init__(self, reason: MediaProblem, detail: str = "") -> None:
        super().__init__(f"media {reason.replace('_', ' ')}" + (f": {detail}" if detail else ""))
        self.reason: MediaProblem = reason


class MediaChannel(Protocol):
    """Where a channel keeps files: fetch one by its inbound id, upload one from bytes."""

    async def download(self, media: InboundMedia) -> bytes:
        """The bytes of ``media``, checked (:class:`MediaError` otherwise)."""

    async def upload(self, media: OutboundMedia) -> str:
        """Upload ``media``'s bytes; the channel's media id for them."""


class MediaAccess:
    """A channel as one conversation's handlers reach it: from the engine's event loop (an
    ``async def`` handler awaits it) or from a worker thread (a ``def`` handler blocks on it
    there, the loop doing the I/O). Made by the engine; a step uses ``ctx.download()``."""

    __slots__ = ("channel", "loop")

    def __init__(self, channel: MediaChannel, loop: asyncio.AbstractEventLoop | None) -> None:
        self.channel = channel
        self.loop = loop

    def __repr__(self) -> str:
        return f"MediaAccess({type(self.channel).__name__})"

    async def adownload(self, media: InboundMedia) -> bytes:
        return await self.channel.download(media)

    def download(self, media: InboundMedia, timeout: float | None = 120.0) -> bytes:
        """Block this thread until the bytes arrive (not on the engine's loop itself: an
        ``async def`` handler awaits :meth:`adownload`)."""
        if self.loop is None:  # the sync engine: on the library's background loop
            return run(self.channel.download(media))
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError(
                "ctx.download() blocks: on the event loop use `await ctx.adownload()` "
                "(an async def handler), or make the step's handler blocking (a thread)"
            )
        future = asyncio.run_coroutine_threadsafe(self.channel.download(media), self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # the download stops too, its buffer with it
            raise MediaError("unavailable", f"no answer within {timeout:g} s") from None
