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
    """The option ``answer`` names, or None: its exact id first (a tapped button or list row
    arrives as its id, even an id made of digits), then a number ("2"), then its title or
    id ignoring case."""
    if reply is None or not reply.options:
        return None
    for opt in reply.options:  # a tapped option arrives as its id: exact first, even "10"
        if answer == opt.id:
            return opt
    answer = answer.strip()
    if answer.isdigit():
        index = int(answer) - 1
        return reply.options[index] if 0 <= index < len(reply.options) else None
    folded = answer.casefold()
    for opt in reply.options:
        if folded in (opt.id.casefold(), opt.title.casefold()):
            return opt
    return None


# -- WhatsApp's limits ------------------------------------------------------------------------
#: What WhatsApp Cloud API accepts (interactive messages); a reply over a limit is refused by
#: the Graph API, so a flow finds out in its own tests (:func:`check_whatsapp`, which
#: :class:`fsm.testing.Conversation` runs on every reply), not in production.
WHATSAPP_TEXT = 4096  # a longer text is split by the transport, not refused
WHATSAPP_INTERACTIVE_BODY = 1024
WHATSAPP_BUTTON_TITLE = 20
WHATSAPP_BUTTON_ID = 256
WHATSAPP_ROW_TITLE = 24
WHATSAPP_ROW_ID = 200


def whatsapp_problems(reply: Reply) -> list[str]:
    """Every way ``reply`` breaks WhatsApp's limits (empty: it can be sent as it is)."""
    problems: list[str] = []
    if not reply.body.strip():
        problems.append("the body is empty")
    if reply.kind == "text":
        return problems
    if len(reply.body) > WHATSAPP_INTERACTIVE_BODY:
        problems.append(
            f"the body of {reply.kind} is {len(reply.body)} characters "
            f"(at most {WHATSAPP_INTERACTIVE_BODY})"
        )
    most = MAX_BUTTONS if reply.kind == "buttons" else MAX_ROWS
    if not 1 <= len(reply.options) <= most:
        problems.append(f"{reply.kind} take 1 to {most} options, got {len(reply.options)}")
    title_max, id_max = (
        (WHATSAPP_BUTTON_TITLE, WHATSAPP_BUTTON_ID)
        if reply.kind == "buttons"
        else (WHATSAPP_ROW_TITLE, WHATSAPP_ROW_ID)
    )
    what = "button" if reply.kind == "buttons" else "row"
    for opt in reply.options:
        if not opt.title.strip() or len(opt.title) > title_max:
            problems.append(f"{what} title {opt.title!r} must be 1 to {title_max} characters")
        if not opt.id or len(opt.id) > id_max:
            problems.append(f"{what} id {opt.id!r} must be 1 to {id_max} characters")
    ids = [opt.id for opt in reply.options]
    if len(set(ids)) != len(ids):
        problems.append(f"{what} ids must be unique, got {ids}")
    return problems


def check_whatsapp(reply: Reply) -> None:
    """Raise ``ValueError`` naming every WhatsApp limit ``reply`` breaks.

    >>> whatsapp_problems(buttons("Pay?", ["Yes, pay it right now", "No"]))
    ["button title 'Yes, pay it right now' must be 1 to 20 characters"]
    """
    problems = whatsapp_problems(reply)
    if problems:
        raise ValueError(
            f"reply {reply.body[:40]!r} cannot be sent on WhatsApp: " + "; ".join(problems)
        )
