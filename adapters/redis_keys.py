"""Where a user's data lives in Redis: key building, kept apart from the storage code.

Every key of one user shares one Redis Cluster hash tag, so every script touches one slot and
runs unchanged on standalone, Sentinel and Cluster::

    <namespace>:{u<escaped user key>}:s   the session: b"<version>.<tag>:" + encoded snapshot
    <namespace>:{u<escaped user key>}:h   history: tag + the entry as a msgpack array, newest first
    <namespace>:{u<escaped user key>}:m   seen message ids (digests; raw if legacy_format), by time
    <namespace>:{u<escaped user key>}:l   the lease lock: the owner token, with a PX expiry
    <namespace>:{u<escaped user key>}:q   quarantined bytes, a list of msgpack entries

The user key is percent-encoded (UTF-8, every byte outside ``A-Z a-z 0-9 _ . - ~``), so the
escaped form never holds ``{``, ``}``, ``:``, ``*``, spaces or newlines: no user key can end the
tag early, reach into another namespace, match a SCAN pattern it should not, or collide with
another user key (the encoding is one-to-one).

>>> layout = KeyLayout("bot")
>>> layout.session("263 77{x}")
'bot:{u263%2077%7Bx%7D}:s'
>>> layout.user_of("bot:{u263%2077%7Bx%7D}:s")
'263 77{x}'
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


#: How many users' keys a layout keeps built.
KEYS_KEPT = 10_000

#: The key namespace of a store built without one (``RedisStore.from_url(url)``).
DEFAULT_NAMESPACE = "fsm"


class KeyLayout:
    """Builds the keys of one namespace (bots sharing a server use different namespaces)."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not _NAMESPACE.match(namespace):
            raise ValueError(
                f"namespace must be 1-64 of A-Z a-z 0-9 _ . - (no braces, colons or globs), "
                f"got {namespace!r}"
            )
        self.namespace = namespace
        # user key -> its keys: built once per user while it is among the recent ones (the
        # escaping costs about a microsecond, on every store call).
        self._keys: dict[str, tuple[str, str, str, str, str]] = {}
        self.session_pattern = f"{namespace}:{{*}}:s"
        self.quarantine_pattern = f"{namespace}:{{*}}:q"

    def tag(self, user_key: str) -> str:
        """The user's hash tag, braces included. It starts with ``u`` so that even the empty
        user key has a non-empty tag (Redis hashes the whole key for ``{}``)."""
        return "{u" + quote(user_key, safe="") + "}"

    def session(self, user_key: str) -> str:
        return f"{self.namespace}:{self.tag(user_key)}:s"

    def keys(self, user_key: str) -> tuple[str, str, str, str, str]:
        """(session, history, seen, lock, quarantine) of one user: one slot."""
        keys = self._keys.get(user_key)
        if keys is None:
            base = f"{self.namespace}:{self.tag(user_key)}:"
            keys = base + "s", base + "h", base + "m", base + "l", base + "q"
            if len(self._keys) >= KEYS_KEPT:
                self._keys.clear()  # a new generation: the active users come back at once
            self._keys[user_key] = keys
        return keys

    def user_of(self, key: str | bytes) -> str:
        """The user key a session (or quarantine) key belongs to."""
        text = key.decode() if isinstance(key, bytes) else key
        start, end = text.index("{"), text.rindex("}")
        return unquote(text[start + 2 : end])
