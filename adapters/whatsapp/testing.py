"""Webhook bodies as Meta sends them, and their ``X-Hub-Signature-256`` header: what a test (or
a hand-made ``curl``) posts to a bot's ``/webhook`` so the bot cannot tell it from WhatsApp.

>>> body = webhook_body("106540352242922", "263770000001", text="hi", message_id="wamid.1")
>>> import json; json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["text"]
{'body': 'hi'}
>>> sign(b'{"object":"whatsapp_business_account"}', "app-secret")[:7]
'sha256='
>>> signed_headers(body, "app-secret")["Content-Type"]
'application/json'

A body is ASCII JSON (``\\uXXXX`` escapes), as Meta sends it. Sign exactly the bytes you post:
the signature is an HMAC-SHA256 of the raw body with the app secret (``WHATSAPP_APP_SECRET``).
``fsm sign-webhook body.json`` prints it for a body in a file. :func:`serving` runs your webhook
app on a loopback port for a test; a fake Graph API to receive the bot's replies is
:mod:`adapters.whatsapp.fake_graph`. See docs/whatsapp.md.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from adapters.redis_server import free_port
from adapters.whatsapp.signature import signature
from adapters.whatsapp.simulator import meta

__all__ = ["serving", "sign", "signed_headers", "update_body", "webhook_body"]


def webhook_body(
    phone_number_id: str,
    from_number: str,
    text: str | None = None,
    *,
    button: str | None = None,
    list_reply: str | None = None,
    title: str = "",
    message_id: str | None = None,
    name: str = "Test",
    timestamp: int | None = None,
) -> bytes:
    """One message from ``from_number`` to your business number ``phone_number_id``: typed
    ``text``, or a tap on the reply button ``button`` or the list row ``list_reply`` (the
    option's id; ``title`` is what the user saw, the id by default). Exactly one of the three.

    ``message_id`` is the wamid (default: a fresh one; pass the same one again to re-deliver),
    ``name`` the sender's profile name, ``timestamp`` the send time (default: now)."""
    given = [v for v in (text, button, list_reply) if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of text=, button= and list_reply=")
    if text is not None:
        content: dict[str, Any] = {"text": {"body": text}}
        message = meta.message(from_number, "text", content, message_id, timestamp)
    else:
        kind, option = (
            ("button_reply", button) if button is not None else ("list_reply", list_reply)
        )
        assert option is not None
        message = meta.tap(kind, from_number, option, title, message_id, timestamp)
    return update_body([message], phone_number_id=phone_number_id, names={from_number: name})


def update_body(
    messages: Sequence[dict[str, Any]] = (),
    statuses: Sequence[dict[str, Any]] = (),
    *,
    phone_number_id: str,
    names: dict[str, str] | None = None,
) -> bytes:
    """A whole webhook body (one entry, one change) with these messages and statuses, built
    with :mod:`adapters.whatsapp.simulator.meta` (``meta.text``, ``meta.tap``, ...): several
    messages at once, status updates, other message types."""
    update = meta.update(
        tuple(messages), tuple(statuses), phone_number_id=phone_number_id, names=names
    )
    return json.dumps(update).encode()


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with ``body``: ``sha256=<hex digest>``."""
    return signature(body, app_secret)


def signed_headers(body: bytes, app_secret: str) -> dict[str, str]:
    """The headers to post ``body`` with: its signature and ``Content-Type: application/json``."""
    return {"X-Hub-Signature-256": sign(body, app_secret), "Content-Type": "application/json"}


@contextmanager
def serving(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve the ASGI ``app`` (your webhook: :func:`adapters.whatsapp.create_app`) with uvicorn
    on 127.0.0.1, on ``port`` (default: a free one), in a thread, for the ``with`` block;
    yields its base URL (``http://127.0.0.1:PORT``). Its lifespan runs, as under ``fsm
    serve``."""
    import uvicorn

    # uvicorn binds the port itself: a socket handed over with ``sockets=`` is served without
    # TCP_NODELAY, which costs every response a 40 ms delayed-ACK stall.
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)  # in a thread, it leaves the process's signals alone
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"the app did not start on 127.0.0.1:{port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
