"""What no display shows: the one rule every display path of session data applies.

A value is hidden (shown as :data:`REDACTED`) when its data key is one the flow declares
sensitive (:attr:`fsm.Flow.sensitive`: an address, a drug name) or looks like a secret
(:func:`is_secret_key`: ``token``, ``api_key``, ``PIN``), at any depth of nested maps and
lists; a JWT is hidden inside any string. ``fsm inspect``, ``fsm quarantine show``, the
simulator's state panel and the :class:`~fsm.step.Context` repr all go through :func:`redact`;
``--show-secrets`` (one switch) shows both kinds. Backups keep everything: they are backups.

A user key (a phone number) is shown by logs and exception messages as its last four
characters at most (:func:`user_tail`: ``...0016``), wherever they come from: the engine, the
stores, the WhatsApp transport. Exceptions keep the full key as an attribute (``user_key``);
only the operator's CLI tables show it whole, on purpose.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

#: Words that make a data key secret (matched as whole words of snake_case, kebab-case or
#: camelCase keys: ``accessToken``, ``api_key``, ``PIN``; not ``shipping`` or ``footprint``).
SECRET_WORDS = frozenset(
    {"token", "secret", "password", "passwd", "pwd", "jwt", "pin", "otp", "authorization",
     "credential", "credentials", "cookie", "apikey", "bearer"}
)  # fmt: skip
#: A JWT anywhere in a string: three base64url parts, the first a JSON header (``eyJ``).
JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
REDACTED = "<redacted>"
#: Shown instead of a value nested too deeply to walk (it is not shown, so nothing leaks).
TOO_DEEP = "<nested too deeply to show>"
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_NONE: frozenset[str] = frozenset()


def user_tail(key: str) -> str:
    """A user key (a phone number) as logs and exception messages show it: its last four
    characters after ``...``; a key of four characters or fewer is shown as it is. Characters
    that are not printable are escaped, so a key cannot forge a log line.

    >>> user_tail("263773000016")
    '...0016'
    >>> user_tail("2631")
    '2631'
    """
    tail = key[-4:]
    shown = tail if tail.isprintable() else repr(tail)[1:-1]
    return shown if len(key) <= 4 else f"...{shown}"


def mask_user(text: str, user_key: str | None) -> str:
    """``text`` (a driver's or decoder's message, an idempotency key) with the full
    ``user_key`` in it, if any, cut to its :func:`user_tail`.

    >>> mask_user("WRONGTYPE at fsm:263773000016:snap", "263773000016")
    'WRONGTYPE at fsm:...0016:snap'
    """
    if not user_key or len(user_key) <= 4:
        return text
    return text.replace(user_key, user_tail(user_key))


def is_secret_key(key: str) -> bool:
    words = [w.lower() for w in _WORDS.findall(key)]
    pairs = {a + b for a, b in itertools.pairwise(words)}  # api_key -> apikey
    return bool(SECRET_WORDS.intersection(words) or SECRET_WORDS.intersection(pairs))


def is_hidden(key: object, sensitive: frozenset[str] = _NONE) -> bool:
    """Whether the value under data key ``key`` is hidden: a key the flow declares sensitive,
    or one that looks secret."""
    return isinstance(key, str) and (key in sensitive or is_secret_key(key))


def redact(value: Any, sensitive: frozenset[str] = _NONE) -> Any:
    """``value`` with what no display shows hidden, at any depth: the values of the keys in
    ``sensitive`` (the flow's :attr:`~fsm.flow.FlowSpec.sensitive`) and of secret-looking
    keys, and any JWT inside a string (wherever it is kept). Maps come back as dicts, lists
    and tuples as lists. A value nested deeper than Python can walk is replaced whole."""
    try:
        return _redact(value, sensitive)
    except RecursionError:
        return TOO_DEEP


def _redact(value: Any, sensitive: frozenset[str]) -> Any:
    if isinstance(value, dict | Mapping):
        return {
            k: REDACTED if is_hidden(k, sensitive) else _redact(v, sensitive)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v, sensitive) for v in value]
    if isinstance(value, str):
        return JWT.sub(REDACTED, value)
    if isinstance(value, bytes):
        return JWT.sub(REDACTED, value.decode("utf-8", "replace"))
    return value
