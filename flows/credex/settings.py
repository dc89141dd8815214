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

Exactly one of ``CREDEX_JWT_KEY`` and ``CREDEX_JWKS_URL`` is required with the URL. Both URLs
must be ``https`` unless they name a loopback host: the client key and the members' tokens
travel to the first, and whoever answers the second chooses which tokens are accepted. Keys and
algorithms are checked when the engine is built, so a bad one stops ``fsm serve`` at once
instead of refusing every member later. No error message or repr here shows a key's value.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from jwt.algorithms import get_default_algorithms

from flows.credex import build_async_engine
from fsm import AsyncEngine, TokenVerifier
from fsm.errors import ConfigurationError
from fsm.store import AsyncStore

__all__ = ["CredexSettings", "CredexSettingsError", "JwksKeys", "engine_from_env", "jwks_keys"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

log = logging.getLogger("flows.credex")


class CredexSettingsError(ConfigurationError):
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
        keys = f"jwks_url={shown(self.jwks_url)!r}" if self.jwks_url else "jwt_key=<redacted>"
        return (
            f"CredexSettings(api_url={shown(self.api_url)!r}, {keys}, "
            f"algorithms={self.algorithms!r}, client_api_key=<redacted>)"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CredexSettings | None:
        """The settings, or None when ``CREDEX_API_URL`` is unset (the in-memory fake)."""

        def get(name: str) -> str:
            return environ.get(name, "").strip()

        url = get("CREDEX_API_URL")
        if not url:
            return None
        _check_url(url, "CREDEX_API_URL")
        client_key = get("CREDEX_CLIENT_API_KEY")
        if not client_key:
            raise CredexSettingsError("missing setting: CREDEX_CLIENT_API_KEY")
        key, jwks = get("CREDEX_JWT_KEY") or None, get("CREDEX_JWKS_URL") or None
        if (key is None) == (jwks is None):
            raise CredexSettingsError("set exactly one of CREDEX_JWT_KEY and CREDEX_JWKS_URL")
        if jwks is not None:
            _check_url(jwks, "CREDEX_JWKS_URL")
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
        """The token verifier these settings describe, its algorithms and key checked now
        (with a JWKS URL: the key set fetched now)."""
        supported = get_default_algorithms()
        unknown = [a for a in self.algorithms if a not in supported]
        if unknown:
            raise CredexSettingsError(
                f"CREDEX_JWT_ALGORITHMS: unknown {', '.join(unknown)} (e.g. HS256, RS256, ES256)"
            )
        try:
            if self.jwks_url is not None:
                keys = JwksKeys(self.jwks_url)
                keys.refresh()
                return TokenVerifier(key_for=keys, algorithms=self.algorithms)
            key = _key(self.jwt_key or "")
            for name in self.algorithms:
                supported[name].prepare_key(key)
            return TokenVerifier(key, algorithms=self.algorithms)
        except jwt.PyJWTError as exc:
            what = "CREDEX_JWKS_URL" if self.jwks_url else "CREDEX_JWT_KEY"
            why = str(exc).replace(self.jwks_url or "\0", shown(self.jwks_url or ""))
            names = ", ".join(self.algorithms)
            raise CredexSettingsError(f"{what}: no usable key for {names}: {why}") from None
        except ValueError as exc:
            raise CredexSettingsError(f"CREDEX_JWT_ALGORITHMS: {exc}") from None


def shown(url: str) -> str:
    """``url`` as it may be logged: scheme, host and path, without credentials or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _check_url(url: str, name: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CredexSettingsError(f"{name} must be an https URL")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        raise CredexSettingsError(f"{name} must be https (http only on a loopback host)")


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


class JwksKeys:
    """A ``key_for`` function for :class:`fsm.TokenVerifier`: the key of each token's ``kid``
    from the JSON Web Key Set at ``url`` (fetched with PyJWT's ``PyJWKClient``).

    The verifier runs on the engine's event loop, so a lookup never waits for the network
    when it can help it: a known ``kid`` is answered from memory, and a set older than
    ``lifespan`` is refetched in a background thread while the old one keeps answering. Only
    an unknown ``kid`` (a rotated key) fetches in the caller, at most once per ``cooldown``
    seconds and for at most ``timeout`` seconds, so tokens with made-up ``kid``s cannot make
    every message wait.
    """

    def __init__(
        self, url: str, *, lifespan: float = 300.0, cooldown: float = 30.0, timeout: float = 3.0
    ) -> None:
        self._client = jwt.PyJWKClient(url, cache_keys=False, cache_jwk_set=False, timeout=timeout)
        self._lifespan = lifespan
        self._cooldown = cooldown
        self._keys: dict[str, Any] = {}
        self._fetched = -math.inf
        self._lock = threading.Lock()
        self._refreshing = False

    def __repr__(self) -> str:
        return f"JwksKeys(kids={sorted(self._keys)!r})"

    def refresh(self) -> None:
        """Fetch the set now; a PyJWT error if it cannot be fetched or holds no usable key."""
        keys = {k.key_id: k.key for k in self._client.get_signing_keys() if k.key_id}
        with self._lock:
            self._keys, self._fetched = keys, time.monotonic()

    def __call__(self, token: str) -> Any:
        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str):
            raise jwt.InvalidTokenError("the token names no key (kid)")
        with self._lock:
            key, age = self._keys.get(kid), time.monotonic() - self._fetched
        if key is not None:
            if age > self._lifespan:
                self._refresh_in_background()
            return key
        if age < self._cooldown:
            raise jwt.InvalidTokenError("unknown key id")
        self.refresh()
        with self._lock:
            found = self._keys.get(kid)
        if found is None:
            raise jwt.InvalidTokenError("unknown key id")
        return found

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def run() -> None:
            try:
                self.refresh()
            except (jwt.PyJWTError, OSError):
                log.warning("JWKS refresh failed; the cached keys keep answering")
            finally:
                with self._lock:
                    self._refreshing = False

        threading.Thread(target=run, name="jwks-refresh", daemon=True).start()


def jwks_keys(url: str, **options: Any) -> JwksKeys:
    """:class:`JwksKeys` for ``url``, its set fetched now (a PyJWT error if it cannot be)."""
    keys = JwksKeys(url, **options)
    keys.refresh()
    return keys


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
    log.info("Credex API at %s", shown(settings.api_url))
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
