"""The reference bot's wiring for a deployment: the Credex API and its token keys from the
environment. ``fsm serve`` runs :func:`engine_from_env` by default.

=========================  ===================================================================
``CREDEX_API_URL``         the API's base URL; unset: the in-memory fake (a demo, logged)
``CREDEX_CLIENT_API_KEY``  the ``x-client-api-key`` header (required with the URL)
``CREDEX_JWT_KEY``         the key that verifies the API's JWTs: a shared secret (HS256), or a
                           PEM public key (RS256)
``CREDEX_JWKS_URL``        or a JWKS URL: keys looked up by the token's ``kid``, cached
``CREDEX_JWT_ALGORITHMS``  optional, comma-separated; default HS256 for a secret, RS256 else
``CREDEX_TIMEOUT``         optional, seconds to wait for an answer (default 10)
=========================  ===================================================================

Exactly one of ``CREDEX_JWT_KEY`` and ``CREDEX_JWKS_URL`` is required with the URL. No error
message or repr here shows a key's value.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from adapters.base import AsyncStore
from flows.credex import build_async_engine
from fsm import AsyncEngine, TokenVerifier

__all__ = ["CredexSettings", "CredexSettingsError", "engine_from_env", "jwks_keys"]

log = logging.getLogger("flows.credex")


class CredexSettingsError(ValueError):
    """A CREDEX_* setting is missing or unusable; the message names it, never its value."""


@dataclass(frozen=True, slots=True)
class CredexSettings:
    api_url: str
    client_api_key: str
    jwt_key: str | None = None
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = ("HS256",)
    timeout: float = 10.0

    def __repr__(self) -> str:
        keys = "jwks_url=" + repr(self.jwks_url) if self.jwks_url else "jwt_key=<redacted>"
        return (
            f"CredexSettings(api_url={self.api_url!r}, {keys}, algorithms={self.algorithms!r}, "
            "client_api_key=<redacted>)"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CredexSettings | None:
        """The settings, or None when ``CREDEX_API_URL`` is unset (the in-memory fake)."""

        def get(name: str) -> str:
            return environ.get(name, "").strip()

        url = get("CREDEX_API_URL")
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise CredexSettingsError("CREDEX_API_URL must be an http(s) URL")
        client_key = get("CREDEX_CLIENT_API_KEY")
        if not client_key:
            raise CredexSettingsError("missing setting: CREDEX_CLIENT_API_KEY")
        key, jwks = get("CREDEX_JWT_KEY") or None, get("CREDEX_JWKS_URL") or None
        if (key is None) == (jwks is None):
            raise CredexSettingsError("set exactly one of CREDEX_JWT_KEY and CREDEX_JWKS_URL")
        if jwks is not None and not jwks.startswith(("http://", "https://")):
            raise CredexSettingsError("CREDEX_JWKS_URL must be an http(s) URL")
        public = jwks is not None or (key or "").startswith("-----BEGIN")
        names = get("CREDEX_JWT_ALGORITHMS")
        algorithms = tuple(a.strip() for a in names.split(",") if a.strip()) if names else ()
        return cls(
            api_url=url,
            client_api_key=client_key,
            jwt_key=key,
            jwks_url=jwks,
            algorithms=algorithms or (("RS256",) if public else ("HS256",)),
            timeout=_seconds(get("CREDEX_TIMEOUT")),
        )

    def verifier(self) -> TokenVerifier:
        """The token verifier these settings describe."""
        try:
            if self.jwks_url is not None:
                return TokenVerifier(key_for=jwks_keys(self.jwks_url), algorithms=self.algorithms)
            return TokenVerifier(_key(self.jwt_key or ""), algorithms=self.algorithms)
        except ValueError as exc:
            raise CredexSettingsError(f"CREDEX_JWT_ALGORITHMS: {exc}") from None


def _seconds(raw: str) -> float:
    if not raw:
        return 10.0
    try:
        value = float(raw)
    except ValueError:
        raise CredexSettingsError("CREDEX_TIMEOUT must be a number of seconds") from None
    if not 0 < value <= 300:
        raise CredexSettingsError("CREDEX_TIMEOUT must be between 0 and 300 seconds")
    return value


def _key(raw: str) -> Any:
    if not raw.startswith("-----BEGIN"):
        return raw.encode()
    # A PEM public key; a multi-line value may arrive with literal "\n" from an .env file.
    return raw.replace("\\n", "\n").encode()


def jwks_keys(url: str, *, lifespan: float = 300.0, timeout: float = 5.0) -> Any:
    """A ``key_for`` function for :class:`fsm.TokenVerifier`: the JWKS at ``url`` (PyJWT's
    ``PyJWKClient``, keys cached for ``lifespan`` seconds) gives the key of each token's
    ``kid``; an unknown ``kid`` refetches the set once."""
    client = jwt.PyJWKClient(url, cache_keys=True, lifespan=lifespan, timeout=timeout)

    def key_for(token: str) -> Any:
        return client.get_signing_key_from_jwt(token).key

    return key_for


def engine_from_env(store: AsyncStore, environ: Mapping[str, str] | None = None) -> AsyncEngine:
    """The reference bot on ``store`` with the Credex API the environment names (see the
    module's table): over HTTP with CREDEX_API_URL, else the in-memory fake."""
    from flows.credex.http import CredexHttpApi, Timeouts  # httpx: only when it is used

    settings = CredexSettings.from_env(os.environ if environ is None else environ)
    if settings is None:
        log.warning("CREDEX_API_URL is not set: the bot talks to the in-memory fake Credex API")
        return build_async_engine(store)
    api = CredexHttpApi(
        settings.api_url,
        settings.client_api_key,
        timeouts=Timeouts(read=settings.timeout, total=2 * settings.timeout),
    )
    log.info("Credex API at %s", settings.api_url)
    return build_async_engine(store, api, verifier=settings.verifier())


#: The phone numbers ``fsm serve --simulator`` offers for this bot: the fake's members, and
#: a number it does not know (it registers).
SIMULATOR_CONTACTS = [
    ("263770000001", "Alice Moyo", "member: offers in and out"),
    ("263770000002", "Bob Dube", "member: tier 3, no offers"),
    ("263770000003", "Carol Chirwa", "member: one incoming offer"),
    ("263770000004", "Dan Ncube", "member: offers out"),
    ("263779990001", "New user", "not a member: registers"),
]
