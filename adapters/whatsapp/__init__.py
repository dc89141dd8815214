"""The WhatsApp Cloud API transport (the ``convo-fsm[whatsapp]`` extra): a webhook server
that runs a flow for WhatsApp users and never loses a reply.

Modules, one concept each: :mod:`~adapters.whatsapp.signature` (the HMAC header),
:mod:`~adapters.whatsapp.updates` (webhook bodies parsed), :mod:`~adapters.whatsapp.render`
(replies as Graph API payloads), :mod:`~adapters.whatsapp.graph` (the Graph API client and
pacer), :mod:`~adapters.whatsapp.delivery` (sending a user's pending replies with retries),
:mod:`~adapters.whatsapp.bot` (messages into the engine, replies out),
:mod:`~adapters.whatsapp.app` (the Starlette app), :mod:`~adapters.whatsapp.settings` and
:mod:`~adapters.whatsapp.server` (``fsm serve``). See docs/whatsapp.md.
"""

from __future__ import annotations

from adapters.whatsapp.app import WebhookConfig, create_app
from adapters.whatsapp.bot import WhatsAppBot
from adapters.whatsapp.graph import GraphClient, GraphError
from adapters.whatsapp.settings import Settings, SettingsError
from adapters.whatsapp.signature import signature
from adapters.whatsapp.updates import Incoming, Update, parse_update

__all__ = [
    "GraphClient",
    "GraphError",
    "Incoming",
    "Settings",
    "SettingsError",
    "Update",
    "WebhookConfig",
    "WhatsAppBot",
    "create_app",
    "parse_update",
    "signature",
]
