"""Explicit finite-state machines for conversational bots.

The public API: declare a :class:`Flow`, run it with an :class:`Engine` on a store from
:mod:`adapters`, read the :class:`Snapshot` it saves. Errors live in :mod:`fsm.errors`.
"""

from fsm import errors
from fsm.async_engine import AsyncEngine
from fsm.attachments import Contact, Contacts, InboundMedia, Location, Reaction
from fsm.auth import Claims, TokenVerifier
from fsm.clock import Clock, FakeClock, SystemClock
from fsm.engine import Engine, Result
from fsm.flow import Exit, Flow, FlowSpec, Stage, action, on_enter, step
from fsm.media import MediaChannel, MediaError
from fsm.reply import (
    MORE,
    Option,
    Page,
    Reply,
    audio,
    buttons,
    choices,
    document,
    image,
    location,
    location_request,
    paged,
    pick,
    reaction,
    sticker,
    template,
    text,
    video,
)
from fsm.snapshot import SCHEMA_VERSION, Auth, Resume, Snapshot, decode_snapshot, encode_snapshot
from fsm.step import Context, Login, Logout, Outcome
from fsm.templates import TemplateSpec, currency, date_time, media
from fsm.timers import Event, event_option, on_event, timeout

__all__ = [
    "MORE",
    "SCHEMA_VERSION",
    "AsyncEngine",
    "Auth",
    "Claims",
    "Clock",
    "Contact",
    "Contacts",
    "Context",
    "Engine",
    "Event",
    "Exit",
    "FakeClock",
    "Flow",
    "FlowSpec",
    "InboundMedia",
    "Location",
    "Login",
    "Logout",
    "MediaChannel",
    "MediaError",
    "Option",
    "Outcome",
    "Page",
    "Reaction",
    "Reply",
    "Result",
    "Resume",
    "Snapshot",
    "Stage",
    "SystemClock",
    "TemplateSpec",
    "TokenVerifier",
    "action",
    "audio",
    "buttons",
    "choices",
    "currency",
    "date_time",
    "decode_snapshot",
    "document",
    "encode_snapshot",
    "errors",
    "event_option",
    "image",
    "location",
    "location_request",
    "media",
    "on_enter",
    "on_event",
    "paged",
    "pick",
    "reaction",
    "step",
    "sticker",
    "template",
    "text",
    "timeout",
    "video",
]
