"""Webhook bodies in the shapes Meta documents, and their signatures."""

from __future__ import annotations

import itertools
import json
from typing import Any

from adapters.whatsapp.signature import signature

from .fake_graph import PHONE_NUMBER_ID

APP_SECRET = "test-app-secret-fedcba9876543210"
VERIFY_TOKEN = "test-verify-token"

_ids = itertools.count(1)


def wamid() -> str:
    return f"wamid.HBgLMjYzNzcwMDAwMDAxFQIAEhg{next(_ids):08d}"


def text(user: str, body: str, message_id: str | None = None) -> dict[str, Any]:
    return _message(user, "text", {"text": {"body": body}}, message_id)


def button_reply(user: str, option_id: str, title: str = "") -> dict[str, Any]:
    reply = {"type": "button_reply", "button_reply": {"id": option_id, "title": title or option_id}}
    return _message(user, "interactive", {"interactive": reply})


def list_reply(user: str, option_id: str, title: str = "") -> dict[str, Any]:
    reply = {"type": "list_reply", "list_reply": {"id": option_id, "title": title or option_id}}
    return _message(user, "interactive", {"interactive": reply})


def template_button(user: str, payload: str) -> dict[str, Any]:
    return _message(user, "button", {"button": {"payload": payload, "text": payload}})


def image(user: str) -> dict[str, Any]:
    media = {"image": {"id": "1234", "mime_type": "image/jpeg", "sha256": "abc"}}
    return _message(user, "image", media)


def _message(
    user: str, kind: str, content: dict[str, Any], message_id: str | None = None
) -> dict[str, Any]:
    return {
        "from": user,
        "id": message_id or wamid(),
        "timestamp": "1764672000",
        "type": kind,
        **content,
    }


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
    """One webhook body: one entry, one change, with these messages and statuses."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
    }
    users = sorted({m["from"] for m in messages if isinstance(m.get("from"), str)})
    if users:
        value["contacts"] = [{"profile": {"name": "Test"}, "wa_id": u} for u in users]
    if messages:
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    envelope = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA-1", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(envelope).encode()


def signed(raw: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    return {"X-Hub-Signature-256": signature(raw, secret), "Content-Type": "application/json"}
