"""Replies a step sends back: plain text, buttons (at most 3) or a list (at most 10 rows).

Typed so a transport can render them natively (WhatsApp interactive messages) while the terminal
chat renders them as numbered options.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

MAX_BUTTONS = 3
MAX_ROWS = 10


class Option(msgspec.Struct, frozen=True):
    """One choice a user can pick, by number or by title."""

    id: str
    title: str


class Reply(msgspec.Struct, frozen=True):
    """A message to send. Build with :func:`text`, :func:`buttons` or :func:`choices`."""

    body: str
    kind: Literal["text", "buttons", "list"] = "text"
    options: tuple[Option, ...] = ()

    def with_body(self, body: str) -> Reply:
        """The same options with another text: one set of buttons, asked in several ways.

        >>> buttons("Confirm?", ["Yes", "No"]).with_body("Send 5 USD to @bob?").body
        'Send 5 USD to @bob?'
        """
        return Reply(body, self.kind, self.options)

    def render(self) -> str:
        """Plain-text rendering: the body, then numbered options."""
        lines = [self.body]
        lines += [f"  {n}. {opt.title}" for n, opt in enumerate(self.options, start=1)]
        return "\n".join(lines)


def text(body: str) -> Reply:
    return Reply(body)


def _options(items: Iterable[Option | tuple[str, str] | str]) -> tuple[Option, ...]:
    out: list[Option] = []
    for item in items:
        if isinstance(item, Option):
            out.append(item)
        elif isinstance(item, tuple):
            out.append(Option(item[0], item[1]))
        else:
            out.append(Option(item, item))
    return tuple(out)


def buttons(body: str, items: Iterable[Option | tuple[str, str] | str]) -> Reply:
    opts = _options(items)
    if not 1 <= len(opts) <= MAX_BUTTONS:
        raise ValueError(f"buttons take 1 to {MAX_BUTTONS} options, got {len(opts)}")
    return Reply(body, "buttons", opts)


def choices(body: str, items: Iterable[Option | tuple[str, str] | str]) -> Reply:
    opts = _options(items)
    if not 1 <= len(opts) <= MAX_ROWS:
        raise ValueError(f"a list takes 1 to {MAX_ROWS} rows, got {len(opts)}")
    return Reply(body, "list", opts)


def pick(reply: Reply | None, answer: str) -> Option | None:
    """The option ``answer`` names, by number ("2") or title/id (case-insensitive), or None."""
    if reply is None or not reply.options:
        return None
    answer = answer.strip()
    if answer.isdigit():
        index = int(answer) - 1
        return reply.options[index] if 0 <= index < len(reply.options) else None
    folded = answer.casefold()
    for opt in reply.options:
        if folded in (opt.id.casefold(), opt.title.casefold()):
            return opt
    return None
