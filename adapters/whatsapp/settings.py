"""``fsm serve``'s configuration, from the environment (names the docs and the issue give)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from adapters.environment import flag
from adapters.whatsapp.graph import DEFAULT_API_URL

REQUIRED = (
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "WHATSAPP_PHONE_NUMBER_ID",
)


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

    def __repr__(self) -> str:
        return (
            f"Settings(phone_number_id={self.phone_number_id!r}, api_url={self.api_url!r}, "
            f"rate={self.rate}, mark_as_read={self.mark_as_read}, "
            "access_token=<redacted>, app_secret=<redacted>, verify_token=<redacted>)"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        missing = [name for name in REQUIRED if not environ.get(name, "").strip()]
        if missing:
            raise SettingsError(f"missing setting: {', '.join(missing)} (see docs/whatsapp.md)")
        api_url = environ.get("WHATSAPP_API_URL", "").strip() or DEFAULT_API_URL
        if not api_url.startswith(("http://", "https://")):
            raise SettingsError("WHATSAPP_API_URL must be an http(s) URL")
        store = environ.get("FSM_STORE", "").strip()
        return cls(
            access_token=environ["WHATSAPP_ACCESS_TOKEN"].strip(),
            app_secret=environ["WHATSAPP_APP_SECRET"].strip(),
            verify_token=environ["WHATSAPP_VERIFY_TOKEN"].strip(),
            phone_number_id=environ["WHATSAPP_PHONE_NUMBER_ID"].strip(),
            api_url=api_url,
            store_url=None if store in ("", "memory") else store,
            rate=_number(environ, "WHATSAPP_RATE", 80.0),
            mark_as_read=_flag(environ, "WHATSAPP_MARK_READ", True),
        )


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
