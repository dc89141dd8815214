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


def image(user: str) -> dict[str, Any]:
    media = {"image": {"id": "1234", "mime_type": "image/jpeg", "sha256": "abc"}}
    return _message(user, "image", media)


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
