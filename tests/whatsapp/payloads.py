"""Webhook bodies in the shapes Meta documents, and their signatures: the package's builder
(:mod:`adapters.whatsapp.testing`, which users have too) with the tests' secrets and ids."""

from __future__ import annotations

import itertools
from typing import Any

from adapters.whatsapp.simulator import meta
from adapters.whatsapp.testing import signed_headers, update_body

from .fake_graph import PHONE_NUMBER_ID

APP_SECRET = "test-app-secret-fedcba9876543210"
VERIFY_TOKEN = "test-verify-token"

_ids = itertools.count(1)


def wamid() -> str:
    return f"wamid.HBgLMjYzNzcwMDAwMDAxFQIAEhg{next(_ids):08d}"


#: The ``timestamp`` of every test message (2025-12-02, fixed so bodies are reproducible).
SENT_AT = 1764672000


def text(user: str, body: str, message_id: str | None = None) -> dict[str, Any]:
    return _message(user, "text", {"text": {"body": body}}, message_id)


def button_reply(user: str, option_id: str, title: str = "") -> dict[str, Any]:
    return meta.tap("button_reply", user, option_id, title, wamid(), SENT_AT)


def list_reply(user: str, option_id: str, title: str = "") -> dict[str, Any]:
    return meta.tap("list_reply", user, option_id, title, wamid(), SENT_AT)


def template_button(user: str, payload: str) -> dict[str, Any]:
    return _message(user, "button", {"button": {"payload": payload, "text": payload}})


#: The ``sha256`` Meta sends with a test media (hex, as Meta's; of no particular bytes).
SHA256 = "3b6e6f1d5c0c4b8e9a2f7d1e0c9b8a7f6e5d4c3b2a19f8e7d6c5b4a392817060"


def media(user: str, kind: str, media_id: str, mime_type: str, **fields: Any) -> dict[str, Any]:
    """A media message as Meta sends it: ``{"type": kind, kind: {"id", "mime_type",
    "sha256", ...fields}}`` (a field given None is left out)."""
    content = {"id": media_id, "mime_type": mime_type, "sha256": SHA256}
    content |= {name: value for name, value in fields.items() if value is not None}
    return _message(user, kind, {kind: content})


def image(
    user: str, *, media_id: str = "1234", caption: str | None = None, mime_type: str = "image/jpeg"
) -> dict[str, Any]:
    return media(user, "image", media_id, mime_type, caption=caption)


def video(user: str, *, media_id: str = "2345", caption: str | None = None) -> dict[str, Any]:
    return media(user, "video", media_id, "video/mp4", caption=caption)


def document(
    user: str,
    *,
    media_id: str = "3456",
    filename: str = "statement.pdf",
    caption: str | None = None,
    mime_type: str = "application/pdf",
) -> dict[str, Any]:
    return media(user, "document", media_id, mime_type, caption=caption, filename=filename)


def audio(user: str, *, media_id: str = "4567", voice: bool = False) -> dict[str, Any]:
    """An audio file, or a voice note (``voice``: Meta's ``"voice": true``, OGG Opus)."""
    if voice:
        return media(user, "audio", media_id, "audio/ogg; codecs=opus", voice=True)
    return media(user, "audio", media_id, "audio/mpeg", voice=False)


def sticker(user: str, *, media_id: str = "5678", animated: bool = False) -> dict[str, Any]:
    return media(user, "sticker", media_id, "image/webp", animated=animated)


def location(
    user: str,
    latitude: Any = -17.8292,
    longitude: Any = 31.0522,
    *,
    name: str | None = None,
    address: str | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """A shared place (a pin: only the coordinates; a named place: its name, address, url)."""
    place = {"latitude": latitude, "longitude": longitude}
    place |= {k: v for k, v in (("name", name), ("address", address), ("url", url)) if v}
    return _message(user, "location", {"location": place})


def reaction(
    user: str, message_id: str, emoji: str | None = "\N{THUMBS UP SIGN}"
) -> dict[str, Any]:
    """A reaction to our message ``message_id``; ``emoji`` None: removed (Meta sends no
    ``emoji`` then)."""
    content: dict[str, Any] = {"message_id": message_id}
    if emoji is not None:
        content["emoji"] = emoji
    return _message(user, "reaction", {"reaction": content})


def contact_card(
    formatted_name: str, *phones: str, first_name: str = "", wa_ids: bool = True
) -> dict[str, Any]:
    """One card of a ``contacts`` message: its name object and phones (each with the
    ``wa_id`` WhatsApp adds for a number on WhatsApp, unless ``wa_ids`` is false)."""
    name = {"formatted_name": formatted_name}
    first = first_name or next(iter(formatted_name.split()), "")
    if first:
        name["first_name"] = first
    numbers = [
        {"phone": phone, "type": "CELL"}
        | ({"wa_id": phone.lstrip("+").replace(" ", "")} if wa_ids else {})
        for phone in phones
    ]
    return {"name": name, "phones": numbers}


def contacts(user: str, *cards: dict[str, Any]) -> dict[str, Any]:
    return _message(user, "contacts", {"contacts": list(cards)})


def _message(
    user: str, kind: str, content: dict[str, Any], message_id: str | None = None
) -> dict[str, Any]:
    return meta.message(user, kind, content, message_id or wamid(), SENT_AT)


def status(message_id: str, state: str = "delivered", user: str = "263770000001") -> dict:
    return {
        "id": message_id,
        "status": state,
        "timestamp": "1764672001",
        "recipient_id": user,
    }


def body(
    messages: list[dict[str, Any]] = (),  # type: ignore[assignment]
    statuses: list[dict[str, Any]] = (),  # type: ignore[assignment]
    *,
    phone_number_id: str = PHONE_NUMBER_ID,
) -> bytes:
    """One webhook body: one entry, one change, with these messages and statuses (ASCII JSON,
    as Meta sends it, so a test can send even a lone surrogate escaped)."""
    return update_body(messages, statuses, phone_number_id=phone_number_id)


def signed(raw: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    return signed_headers(raw, secret)
