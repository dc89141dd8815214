"""Reading a request's body up to a limit, without reading past it (``/webhook``, ``/events``)."""

from __future__ import annotations

from starlette.requests import Request


class TooLarge(Exception):
    """The body is longer than the limit (answer 413)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)
