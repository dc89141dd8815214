"""``fsm serve``'s configuration, from the environment (names the docs and the issue give)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from adapters.environment import flag
from adapters.whatsapp.graph import DEFAULT_API_URL
from adapters.whatsapp.window import CLOSED_WINDOW, ClosedWindow

REQUIRED = (
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "WHATSAPP_PHONE_NUMBER_ID",
)
#: What a process that only sends replies needs (``fsm timers run``, ``fsm notify``).
SENDING = ("WHATSAPP_ACCESS_TOKEN", "WHATSAPP_PHONE_NUMBER_ID")


class SettingsError(ValueError):
    """A setting is missing or unusable; the message names it (never its value)."""


@dataclass(frozen=True, slots=True)
class Settings:
    access_token: str
    app_secret: str
    verify_token: str
    phone_number_id: str
    api_url: str = DEFAULT_API_URL
    store_url: str | None = None  # None: the embedded memory store
    rate: float = 80.0  # messages per second per number
    mark_as_read: bool = True
    #: Signs ``POST /events`` (``FSM_EVENTS_SECRET``); "": the route is off.
    events_secret: str = ""
    #: Seconds between the ticker's rounds (``FSM_TIMER_TICK``); None: no ticker.
    timer_tick: float | None = 1.0
    #: A reply without a template when the user's 24-hour window is closed
    #: (``WHATSAPP_CLOSED_WINDOW``): dropped, or kept pending until the user writes.
    closed_window: ClosedWindow = "drop"
    #: Unique users business-initiated messages (templates outside the window) may go to in a
    #: moving 24 hours, by all of the bot's processes together on a Redis store
    #: (``WHATSAPP_MESSAGING_LIMIT``); None: no limit.
    messaging_limit: int | None = None

    def __repr__(self) -> str:
        return (
            f"Settings(phone_number_id={self.phone_number_id!r}, api_url={self.api_url!r}, "
            f"rate={self.rate}, mark_as_read={self.mark_as_read}, timer_tick={self.timer_tick}, "
            f"closed_window={self.closed_window!r}, messaging_limit={self.messaging_limit}, "
            "access_token=<redacted>, app_secret=<redacted>, verify_token=<redacted>, "
            f"events_secret={'<redacted>' if self.events_secret else '<none>'})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        return cls._read(environ, REQUIRED)

    @classmethod
    def for_sending(cls, environ: Mapping[str, str]) -> Settings | None:
        """What a process that only sends (``fsm timers run``, ``fsm notify``) needs:
        ``WHATSAPP_ACCESS_TOKEN`` and ``WHATSAPP_PHONE_NUMBER_ID`` (the webhook's secrets are
        not read: "" here). None when neither is set (WhatsApp is not configured)."""
        if not any(environ.get(name, "").strip() for name in SENDING):
            return None
        return cls._read(environ, SENDING)

    @classmethod
    def _read(cls, environ: Mapping[str, str], required: tuple[str, ...]) -> Settings:
        missing = [name for name in required if not environ.get(name, "").strip()]
        if missing:
            raise SettingsError(f"missing setting: {', '.join(missing)} (see docs/whatsapp.md)")
        api_url = environ.get("WHATSAPP_API_URL", "").strip() or DEFAULT_API_URL
        if not api_url.startswith(("http://", "https://")):
            raise SettingsError("WHATSAPP_API_URL must be an http(s) URL")
        store = environ.get("FSM_STORE", "").strip()
        return cls(
            access_token=environ["WHATSAPP_ACCESS_TOKEN"].strip(),
            app_secret=environ.get("WHATSAPP_APP_SECRET", "").strip(),
            verify_token=environ.get("WHATSAPP_VERIFY_TOKEN", "").strip(),
            phone_number_id=environ["WHATSAPP_PHONE_NUMBER_ID"].strip(),
            api_url=api_url,
            store_url=None if store in ("", "memory") else store,
            rate=_number(environ, "WHATSAPP_RATE", 80.0),
            mark_as_read=_flag(environ, "WHATSAPP_MARK_READ", True),
            events_secret=environ.get("FSM_EVENTS_SECRET", "").strip(),
            timer_tick=timer_tick(environ),
            closed_window=_closed_window(environ),
            messaging_limit=messaging_limit(environ),
        )


def timer_tick(environ: Mapping[str, str]) -> float | None:
    """``FSM_TIMER_TICK``: seconds between the ticker's rounds (default 1); 0 or ``off``: no
    ticker in this process."""
    raw = environ.get("FSM_TIMER_TICK", "").strip().lower()
    if not raw:
        return 1.0
    if raw in ("off", "0", "no", "false"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError("FSM_TIMER_TICK must be seconds (1, 0.5) or off") from None
    if not 0 < value < float("inf"):
        raise SettingsError("FSM_TIMER_TICK must be > 0 seconds, or off")
    return value


def messaging_limit(environ: Mapping[str, str]) -> int | None:
    """``WHATSAPP_MESSAGING_LIMIT``: unique users per moving 24 hours (250, 2000...), the
    account's limit (shared by the bot's processes on a Redis store; on the memory store, one
    process's); unset, ``off``, ``unlimited`` or 0: no limit."""
    raw = environ.get("WHATSAPP_MESSAGING_LIMIT", "").strip().lower().replace("_", "")
    if raw in ("", "off", "unlimited", "none", "0"):
        return None
    try:
        value = int(raw.replace(",", ""))
    except ValueError:
        raise SettingsError(
            "WHATSAPP_MESSAGING_LIMIT must be a number of users (250, 2000) or off"
        ) from None
    if value < 0:
        raise SettingsError("WHATSAPP_MESSAGING_LIMIT must be >= 1 users, or off")
    return value or None


def _closed_window(environ: Mapping[str, str]) -> ClosedWindow:
    """``WHATSAPP_CLOSED_WINDOW``: ``drop`` (the default) or ``keep``."""
    raw = environ.get("WHATSAPP_CLOSED_WINDOW", "").strip().lower() or "drop"
    for choice in CLOSED_WINDOW:
        if raw == choice:
            return choice
    raise SettingsError("WHATSAPP_CLOSED_WINDOW must be drop or keep")


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of messages per second") from None
    if value < 0:
        raise SettingsError(f"{name} must be >= 0 (0: no pacing)")
    return value


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    try:
        return flag(environ, name, default)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
