"""Inbound webhook bodies in the shape Meta sends them: what a user's phone would produce.

The simulator posts these to the bot's real ``/webhook``, signed with the app secret, so the
bot cannot tell it from WhatsApp; the tests build theirs with the same functions.
"""

from __future__ import annotations

import base64
import itertools
import os
import time
from typing import Any

import msgspec

__all__ = [
    "DISPLAY_NUMBER",
    "button",
    "location",
    "media",
    "message",
    "new_wamid",
    "tap",
    "text",
    "update",
    "webhook_body",
]

Message = dict[str, Any]

#: The business's display number in the bodies (``metadata.display_phone_number``).
DISPLAY_NUMBER = "15550001111"

_serial = itertools.count(1)
_run = base64.b32encode(os.urandom(5)).decode().rstrip("=")


def new_wamid() -> str:
    """A fresh WhatsApp message id: unique in this process and across restarts."""
    return f"wamid.SIM{_run}{next(_serial):010d}"


def message(
    user: str,
    kind: str,
    content: dict[str, Any],
    message_id: str | None = None,
    timestamp: int | None = None,
) -> Message:
    """One entry of ``value.messages``: sender, id, time, type and the type's own object."""
    return {
        "from": user,
        "id": message_id or new_wamid(),
        "timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "type": kind,
        **content,
    }


def text(user: str, body: str, message_id: str | None = None) -> Message:
    return message(user, "text", {"text": {"body": body}}, message_id)


def tap(
    kind: str,
    user: str,
    option_id: str,
    title: str = "",
    message_id: str | None = None,
    timestamp: int | None = None,
) -> Message:
    """A tap on a reply button (``kind`` "button_reply") or a list row ("list_reply")."""
    if kind not in ("button_reply", "list_reply"):
        raise ValueError(f"kind must be button_reply or list_reply, not {kind!r}")
    reply = {"type": kind, kind: {"id": option_id, "title": title or option_id}}
    return message(user, "interactive", {"interactive": reply}, message_id, timestamp)


def button(
    user: str,
    payload: str,
    text: str = "",
    *,
    context: str | None = None,
    message_id: str | None = None,
    timestamp: int | None = None,
) -> Message:
    """A tap on a template's quick-reply button: a message of type ``button`` with the
    button's ``payload`` (what the template was sent with) and ``text`` (its label), and, as
    WhatsApp adds it, the ``context`` of the template message tapped (its wamid)."""
    content: dict[str, Any] = {"button": {"payload": payload, "text": text or payload}}
    if context:
        content["context"] = {"from": DISPLAY_NUMBER, "id": context}
    return message(user, "button", content, message_id, timestamp)


def media(
    user: str,
    kind: str,
    media_id: str,
    *,
    mime_type: str,
    sha256: str,
    caption: str = "",
    filename: str = "",
    message_id: str | None = None,
) -> Message:
    """A file the user sent (``kind`` image, document, audio, video or sticker), as Meta
    announces it: its media ``id`` (the bot fetches the bytes by it), ``mime_type`` and
    ``sha256``, the ``caption`` written with it (an image's, a video's or a document's) and a
    document's ``filename``."""
    content: dict[str, Any] = {"id": media_id, "mime_type": mime_type, "sha256": sha256}
    if caption:
        content["caption"] = caption
    if filename and kind == "document":
        content["filename"] = filename
    if kind == "audio":
        content["voice"] = False
    if kind == "sticker":
        content["animated"] = False
    return message(user, kind, {kind: content}, message_id)


def location(
    user: str,
    latitude: float,
    longitude: float,
    *,
    name: str = "",
    address: str = "",
    message_id: str | None = None,
) -> Message:
    """A place the user shared (their own, or one they picked: then with a name and an
    address), as Meta sends it."""
    place: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
    if name:
        place["name"] = name
    if address:
        place["address"] = address
    return message(user, "location", {"location": place}, message_id)


def webhook_body(
    messages: list[Message] | tuple[Message, ...] = (),
    *,
    phone_number_id: str,
    names: dict[str, str] | None = None,
) -> bytes:
    """:func:`update` as the bytes of a webhook body."""
    return msgspec.json.encode(update(messages, phone_number_id=phone_number_id, names=names))


def update(
    messages: list[Message] | tuple[Message, ...] = (),
    statuses: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
    *,
    phone_number_id: str,
    names: dict[str, str] | None = None,
    display_number: str = DISPLAY_NUMBER,
) -> dict[str, Any]:
    """One webhook update (one entry, one change) with these messages and statuses; ``names``
    gives the senders' profile names (default "Test")."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display_number, "phone_number_id": phone_number_id},
    }
    users = sorted({m["from"] for m in messages if isinstance(m.get("from"), str)})
    if users:
        value["contacts"] = [
            {"profile": {"name": (names or {}).get(u, "Test")}, "wa_id": u} for u in users
        ]
    if messages:
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA-1", "changes": [{"field": "messages", "value": value}]}],
    }
