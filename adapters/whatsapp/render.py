"""Replies (:mod:`fsm.reply`) as Graph API message payloads: text, reply buttons, lists, and
a reply's message template (:func:`render_template`, sent outside the 24-hour window).

A text longer than WhatsApp's 4096 characters is split at a paragraph, line or word
boundary. Button and row titles, row descriptions and the list's button label over their
limits are cut short, ending in "…" (:func:`fsm.reply.trimmed`; the step still sees the whole
title: a tap arrives as the option's id). A buttons or list reply that breaks another
interactive limit (the testing kit's :func:`fsm.reply.check_whatsapp` catches that in the
flow's own tests) is sent as plain text with numbered options rather than refused: the user
can still answer by number.

A media reply is sent by its media id or its link, never its bytes: the engine uploads them
before it saves the reply, and a reply that still holds only bytes is a ``ValueError`` here,
as is a media, location or reaction reply without its file, place or target. A caption the
media cannot carry (on audio or a sticker, or longer than 1,024 characters) follows it as
text; a type or size WhatsApp may refuse is logged and sent all the same (Meta's ``failed``
status says if it refused). A location request over the body's limit is sent as its text.
"""

from __future__ import annotations

import logging
from typing import Any

from fsm.attachments import MEDIA_KINDS
from fsm.media_replies import CAPTIONED, WHATSAPP_CAPTION, media_problems
from fsm.reply import (
    WHATSAPP_BUTTON_TITLE,
    WHATSAPP_LIST_BUTTON,
    WHATSAPP_ROW_DESCRIPTION,
    WHATSAPP_ROW_TITLE,
    WHATSAPP_TEXT,
    Option,
    Reply,
    trimmed,
    whatsapp_problems,
)
from fsm.templates import BodyParam, Currency, DateTime, HeaderParam, Template, TextParam

log = logging.getLogger("adapters.whatsapp")

#: The label of the button that opens a list message (at most 20 characters).
LIST_BUTTON = "Choose"

Payload = dict[str, Any]


def render(reply: Reply, to: str) -> list[Payload]:
    """The payloads that send ``reply`` to ``to``, in order (more than one: a long text, or
    a caption that follows its media). ``ValueError`` for a reply that cannot be sent as it
    is: a media of bytes only, or a reply without its file, place or reaction."""
    if reply.kind in MEDIA_KINDS:
        return _media(reply, to)
    if reply.kind == "location":
        return [_location(reply, to)]
    if reply.kind == "reaction":
        return [_reaction(reply, to)]
    if reply.kind != "text":
        problems = whatsapp_problems(reply)
        if not problems:
            return [_envelope(to, "interactive", _interactive(reply))]
        log.warning("a %s reply breaks WhatsApp's limits, sent as text: %s", reply.kind, problems)
    plain = reply.body if reply.kind == "location_request" else reply.render()
    return [_text(to, part) for part in split_text(plain)]


def _media(reply: Reply, to: str) -> list[Payload]:
    """The media message (by id, else by link), its caption inside when the kind takes one
    and it fits, else after it as text."""
    media = reply.media
    if media is None or media.kind != reply.kind:
        raise ValueError(f"the {reply.kind} reply has no {reply.kind} to send")
    if not media.id and not media.link:
        raise ValueError(
            f"a {media.kind} of bytes only cannot be sent: it is sent by its media id once "
            "uploaded (the engine's media channel uploads it before saving), or by a link"
        )
    problems = media_problems(media, "")  # its type and size (the caption: below)
    if problems:
        log.warning(
            "a %s reply may be refused by WhatsApp, sent all the same: %s", media.kind, problems
        )
    content: Payload = {"id": media.id} if media.id else {"link": media.link}
    caption = reply.body
    if caption and media.kind in CAPTIONED and len(caption) <= WHATSAPP_CAPTION:
        content["caption"], caption = caption, ""
    if media.kind == "document" and media.filename:
        content["filename"] = media.filename
    sent = [_envelope(to, media.kind, content)]
    if caption:
        log.warning(
            "a %s reply's caption (%d characters) cannot ride with it: sent after it as text",
            media.kind,
            len(caption),
        )
        sent += [_text(to, part) for part in split_text(caption)]
    return sent


def _location(reply: Reply, to: str) -> Payload:
    place = reply.place
    if place is None:
        raise ValueError("a location reply without its place cannot be sent")
    content: Payload = {"latitude": place.latitude, "longitude": place.longitude}
    if place.name:
        content["name"] = place.name
    if place.address:
        content["address"] = place.address
    return _envelope(to, "location", content)


def _reaction(reply: Reply, to: str) -> Payload:
    """A reaction to one of the user's messages; its ``emoji`` "" removes the bot's."""
    reaction = reply.reaction
    if reaction is None or not reaction.message_id:
        raise ValueError("a reaction reply without the message it reacts to cannot be sent")
    return _envelope(to, "reaction", {"message_id": reaction.message_id, "emoji": reaction.emoji})


def render_template(template: Template, to: str) -> Payload:
    """The payload that sends ``template`` to ``to``: a ``template`` message naming it and its
    language, with its components: the header's parameter, the body's in order, and a
    ``quick_reply`` button component per payload, by index."""
    components: list[Payload] = []
    if template.header is not None:
        components.append({"type": "header", "parameters": [_parameter(template.header)]})
    if template.body:
        components.append({"type": "body", "parameters": [_parameter(p) for p in template.body]})
    for index, payload in enumerate(template.buttons):
        components.append(
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": str(index),
                "parameters": [{"type": "payload", "payload": payload}],
            }
        )
    content: Payload = {"name": template.name, "language": {"code": template.language}}
    if components:
        content["components"] = components
    return _envelope(to, "template", content)


def _parameter(param: BodyParam | HeaderParam) -> Payload:
    if isinstance(param, TextParam):
        return {"type": "text", "text": param.text}
    if isinstance(param, Currency):
        money: Payload = {"fallback_value": param.fallback, "code": param.code}
        money["amount_1000"] = param.amount_1000
        return {"type": "currency", "currency": money}
    if isinstance(param, DateTime):
        return {"type": "date_time", "date_time": {"fallback_value": param.fallback}}
    where = {"id": param.id} if param.id else {"link": param.link}
    return {"type": param.kind, param.kind: where}


def mark_read(message_id: str) -> Payload:
    return {"messaging_product": "whatsapp", "status": "read", "message_id": message_id}


def _envelope(to: str, kind: str, content: Any) -> Payload:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
        kind: content,
    }


def _text(to: str, body: str) -> Payload:
    return _envelope(to, "text", {"body": body, "preview_url": False})


def _interactive(reply: Reply) -> Payload:
    body = {"text": reply.body}
    if reply.kind == "location_request":  # a "Send location" button under the body
        return {
            "type": "location_request_message",
            "body": body,
            "action": {"name": "send_location"},
        }
    if reply.kind == "buttons":
        buttons = [
            {
                "type": "reply",
                "reply": {"id": o.id, "title": trimmed(o.title, WHATSAPP_BUTTON_TITLE)},
            }
            for o in reply.options
        ]
        return {"type": "button", "body": body, "action": {"buttons": buttons}}
    rows = [_row(o) for o in reply.options]
    label = trimmed(LIST_BUTTON, WHATSAPP_LIST_BUTTON)
    return {"type": "list", "body": body, "action": {"button": label, "sections": [{"rows": rows}]}}


def _row(option: Option) -> Payload:
    row = {"id": option.id, "title": trimmed(option.title, WHATSAPP_ROW_TITLE)}
    if option.description:
        row["description"] = trimmed(option.description, WHATSAPP_ROW_DESCRIPTION)
    return row


def split_text(text: str, limit: int = WHATSAPP_TEXT) -> list[str]:
    """``text`` in parts of at most ``limit`` characters, cut at the last paragraph break,
    else line break, else space before the limit (a hard cut only in one long word).

    >>> split_text("aaa bbb ccc", limit=7)
    ['aaa bbb', 'ccc']
    """
    if not text:
        return [" "]  # WhatsApp refuses an empty text; a flow that says "" still answers
    parts: list[str] = []
    while len(text) > limit:
        window = text[: limit + 1]
        cut = max(window.rfind("\n\n"), 0) or max(window.rfind("\n"), 0) or window.rfind(" ")
        if cut <= 0:
            cut = limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts
