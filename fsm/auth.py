"""JWT verification for protected stages, and the auth events that may change the auth slot.

Signature, algorithm and claim checks are PyJWT's, with an explicit algorithms allow-list (never
taken from the token's header, so ``alg: none`` and HS/RS confusion are refused). Time claims
(``exp``, ``nbf``) are checked against the engine's :class:`~fsm.clock.Clock` with a leeway, so
tests can move time; PyJWT's own wall-clock checks are switched off for that reason only.

Verified claims are cached per token until the token expires: a conversation sends the same token
with every message, and verifying an RS256 signature every time would dominate the message cost.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from fsm.clock import SYSTEM_CLOCK, Clock
from fsm.errors import TokenRefused
from fsm.snapshot import Auth

_SYMMETRIC = {"HS256", "HS384", "HS512"}


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says. Holds no token text."""

    subject: str
    expires_at: float | None
    issued_at: float | None
    extra: Mapping[str, Any]


class TokenVerifier:
    """Verifies JWTs with a fixed key and algorithm allow-list.

    >>> verifier = TokenVerifier(b"x" * 32, algorithms=("HS256",))
    >>> verifier.verify("not-a-jwt")
    Traceback (most recent call last):
    ...
    fsm.errors.TokenRefused: token refused: malformed token

    ``key`` is the HMAC secret for HS*, or the public key (PEM or a ``cryptography`` key) for
    RS*/ES*. Mixing symmetric and asymmetric algorithms in one verifier is refused: the same key
    would be read two ways.

    ``key_for`` instead picks the key per token, for keys that rotate: a function given the
    token that returns its key, such as a JWKS lookup by the header's ``kid``
    (``jwt.PyJWKClient(url).get_signing_key_from_jwt(token).key``). If it fails with a PyJWT,
    ``OSError`` or ``ValueError`` error, the token is refused ("no signing key"); its result is
    cached with the claims, so it runs once per token.
    """

    def __init__(
        self,
        key: Any = None,
        *,
        key_for: Callable[[str], Any] | None = None,
        algorithms: Sequence[str] = ("HS256",),
        leeway: float = 30.0,
        audience: str | None = None,
        issuer: str | None = None,
        require: Sequence[str] = ("exp", "sub"),
        clock: Clock = SYSTEM_CLOCK,
        cache_size: int = 10_000,
    ) -> None:
        algs = tuple(algorithms)
        if not algs:
            raise ValueError("algorithms must name at least one algorithm")
        if "none" in {a.lower() for a in algs}:
            raise ValueError("the 'none' algorithm is never allowed")
        kinds = {a in _SYMMETRIC for a in algs}
        if len(kinds) > 1:
            raise ValueError("do not mix HS* with RS*/ES* algorithms on one key")
        if (key is None) == (key_for is None):
            raise ValueError("pass exactly one of key (a fixed key) and key_for (a key per token)")
        if leeway < 0:
            raise ValueError("leeway must be >= 0")
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self._key = key
        self._key_for = key_for
        self._algorithms = algs
        self._leeway = float(leeway)
        self._audience = audience
        self._issuer = issuer
        self._require = list(require)
        self._clock = clock
        self._cache: OrderedDict[bytes, Claims] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.verifications = 0  # signature checks actually performed (cache misses)

    def __repr__(self) -> str:
        return f"TokenVerifier(algorithms={self._algorithms!r}, leeway={self._leeway})"

    def verify(self, token: str) -> Claims:
        """Claims of a valid, unexpired token, else :class:`TokenRefused` (the reason only)."""
        if not isinstance(token, str) or not token:
            raise TokenRefused("no token")
        # The cache key is a digest, so the cache itself never holds token text.
        digest = hashlib.sha256(token.encode()).digest()
        # A hit takes no lock: a dict read is atomic, and recency is only a hint (a racing
        # eviction of this very entry costs one more signature check, never a wrong answer).
        cached = self._cache.get(digest)
        if cached is not None:
            self._check_time(cached.expires_at, None)
            try:  # noqa: SIM105 - contextlib.suppress costs more than the lookup it guards
                self._cache.move_to_end(digest)
            except KeyError:
                pass
            return cached
        claims = self._decode(token)
        with self._lock:
            self._cache[digest] = claims
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims

    def auth_for(self, token: str) -> Auth:
        """Verify ``token`` and build the auth slot that holds it."""
        claims = self.verify(token)
        return Auth(
            token=token,
            subject=claims.subject,
            expires_at=claims.expires_at,
            issued_at=claims.issued_at,
        )

    def replacement(self, current: Auth | None, token: str) -> Auth:
        """The auth slot for a newly received ``token`` (login or refresh), after checking it
        is valid and not older than the token held now.

        A slow response to an earlier refresh carries an older token; it must never replace the
        fresher one. Freshness is ``(iat, exp)``; a token without ``iat`` cannot prove it is
        fresh and is refused while the held one has ``iat``.

        The comparison is with the held token's own verified claims, not with what the slot
        says about it, and only while the held token is still valid: an expired (or otherwise
        unusable) token protects nothing, so any valid new one replaces it. A slot whose
        ``issued_at`` says "the future" can therefore never block sign-in.
        """
        fresh = self.auth_for(token)
        if current is None:
            return fresh
        try:
            held = self.auth_for(current.token)
        except TokenRefused:
            return fresh  # the held token is no longer valid: nothing fresher to protect
        if held.issued_at is None:
            return fresh
        if fresh.issued_at is None:
            raise TokenRefused("stale token: no iat to compare with the one held")
        if (fresh.issued_at, fresh.expires_at or 0.0) < (held.issued_at, held.expires_at or 0.0):
            raise TokenRefused("stale token: issued before the one held")
        return fresh

    def unexpired(self, claims: Claims) -> bool:
        """Whether ``claims`` (verified earlier by :meth:`verify`) are still within their
        expiry now: the time check alone, for a token checked earlier in the same message."""
        exp = claims.expires_at
        return exp is None or self._clock.now() <= exp + self._leeway

    def is_valid(self, auth: Auth | None) -> bool:
        if auth is None:
            return False
        try:
            self.verify(auth.token)
        except TokenRefused:
            return False
        return True

    def _signing_key(self, token: str) -> Any:
        if self._key_for is None:
            return self._key
        try:
            return self._key_for(token)
        except (jwt.PyJWTError, OSError, ValueError):
            raise TokenRefused("no signing key") from None

    def _decode(self, token: str) -> Claims:
        self.verifications += 1
        key = self._signing_key(token)
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=list(self._algorithms),
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "verify_exp": False,  # checked below against the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                    "require": self._require,
                },
            )
        except jwt.InvalidAlgorithmError:
            raise TokenRefused("algorithm not allowed") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused(f"missing claim {exc.claim!r}") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("wrong issuer") from None
        except jwt.DecodeError:
            raise TokenRefused("malformed token") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRefused(type(exc).__name__) from None
        except jwt.PyJWTError:  # the key itself does not fit the algorithm (InvalidKeyError)
            raise TokenRefused("unusable key") from None
        exp = _number(payload.get("exp"), "exp")
        nbf = _number(payload.get("nbf"), "nbf")
        iat = _number(payload.get("iat"), "iat")
        self._check_time(exp, nbf)
        sub = payload.get("sub", "")
        extra = {k: v for k, v in payload.items() if k not in {"exp", "nbf", "iat", "sub"}}
        return Claims(subject=str(sub), expires_at=exp, issued_at=iat, extra=extra)

    def _check_time(self, exp: float | None, nbf: float | None) -> None:
        now = self._clock.now()
        if exp is not None and now > exp + self._leeway:
            raise TokenRefused("expired")
        if nbf is not None and now + self._leeway < nbf:
            raise TokenRefused("not yet valid")


def _number(value: Any, claim: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRefused(f"claim {claim!r} is not a number")
    return float(value)
