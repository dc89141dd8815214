"""Explicit finite-state machines for conversational bots.

The public API: declare a :class:`Flow`, run it with an :class:`Engine` on a store from
:mod:`adapters`, read the :class:`Snapshot` it saves. Errors live in :mod:`fsm.errors`.
"""

from fsm import errors
from fsm.async_engine import AsyncEngine
from fsm.auth import Claims, TokenVerifier
from fsm.clock import Clock, FakeClock, SystemClock
from fsm.engine import Engine, Result
from fsm.flow import Exit, Flow, FlowSpec, Stage, action, on_enter, step
from fsm.reply import MORE, Option, Page, Reply, buttons, choices, paged, pick, template, text
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
    "Context",
    "Engine",
    "Event",
    "Exit",
    "FakeClock",
    "Flow",
    "FlowSpec",
    "Login",
    "Logout",
    "Option",
    "Outcome",
    "Page",
    "Reply",
    "Result",
    "Resume",
    "Snapshot",
    "Stage",
    "SystemClock",
    "TemplateSpec",
    "TokenVerifier",
    "action",
    "buttons",
    "choices",
    "currency",
    "date_time",
    "decode_snapshot",
    "encode_snapshot",
    "errors",
    "event_option",
    "media",
    "on_enter",
    "on_event",
    "paged",
    "pick",
    "step",
    "template",
    "text",
    "timeout",
]
