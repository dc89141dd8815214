"""Where a user's data lives in Redis: key building, kept apart from the storage code.

Every key of one user shares one Redis Cluster hash tag, so every script touches one slot and
runs unchanged on standalone, Sentinel and Cluster::

    <namespace>:{u<escaped user key>}:s   the session: b"<version>.<tag>:" + encoded snapshot
    <namespace>:{u<escaped user key>}:h   history: tag + the entry as a msgpack array, newest first
    <namespace>:{u<escaped user key>}:m   seen message ids (digests; raw if legacy_format), by time
    <namespace>:{u<escaped user key>}:l   the lease lock: the owner token, with a PX expiry
    <namespace>:{u<escaped user key>}:q   quarantined bytes, a list of msgpack entries

The index of deadlines (timers, :meth:`fsm.store.SessionStore.index_due`) is namespace-wide:
it cannot live in the users' slots, so all of its keys share one hash tag of their own,
``{timers:<namespace>}``, and one script claims across all of them on Cluster (one slot, on
one primary; each bot's namespace its own)::

    <namespace>:{timers:<namespace>}:i<n>   shard n of the index (0 to INDEX_SHARDS - 1): a
                                            sorted set, member "<escaped user key>|<armed>",
                                            score the due (epoch seconds, the engine's clock)
    <namespace>:{timers:<namespace>}:c      the claims: member as above, score the claim's end
    <namespace>:{timers:<namespace>}:cd     the claims' dues: member -> "<shard> <due>"
    <namespace>:{timers:<namespace>}:h      the heads: member a shard's number, score its
                                            soonest due (only the shards with entries)

WhatsApp's messaging limit (:mod:`adapters.whatsapp.limits_redis`), shared by every process of
a bot, has a hash tag of its own too, ``{limit:<namespace>}``::

    <namespace>:{limit:<namespace>}:u       the users counted: a sorted set, member the user
                                            key, score their last business-initiated send
    <namespace>:{limit:<namespace>}:w       the users whose replies wait: score held since

A user's entries all live in one shard, chosen by the CRC-32 of the escaped user key. The
index is sharded so that each shard stays a small sorted set, which Redis keeps as one compact
listpack (about 45 bytes an entry) rather than a skiplist (about 120): that holds while a
shard has at most ``zset-max-listpack-entries`` entries (128 by default), so up to about
INDEX_SHARDS x 128 = 16,384 armed conversations, and while a member stays within
``zset-max-listpack-value`` bytes (64: an escaped user key of up to about 50 bytes). A shard
past either limit becomes a skiplist (and stays one until emptied), and memory per entry
grows towards the skiplist's; nothing else changes. INDEX_SHARDS is part of the layout: every
worker of a namespace must use the same. The index's keys are written by the store's scripts
only: a claim reads just the shards whose head is due, so a shard written around them (its
head not kept) would not be claimed from.

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
import zlib
from urllib.parse import quote, unquote

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


#: How many users' keys a layout keeps built.
KEYS_KEPT = 10_000

#: The key namespace of a store built without one (``RedisStore.from_url(url)``).
DEFAULT_NAMESPACE = "fsm"

#: How many sorted sets the index of deadlines is spread over (see the module's doc).
INDEX_SHARDS = 128
#: Between the escaped user key and ``armed`` in an index member; escaping never leaves one.
INDEX_SEPARATOR = "|"


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
        base = f"{namespace}:{{timers:{namespace}}}:"
        self.index_shards = tuple(f"{base}i{n}" for n in range(INDEX_SHARDS))
        self.index_claims, self.index_claim_dues = base + "c", base + "cd"
        self.index_heads = base + "h"
        limit = f"{namespace}:{{limit:{namespace}}}:"
        self.limit_counted, self.limit_waiting = limit + "u", limit + "w"
        #: Every key of the index, in the order its scripts take them (one slot).
        self.index_keys = (
            *self.index_shards,
            self.index_claims,
            self.index_claim_dues,
            self.index_heads,
        )

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

    # -- the index of deadlines ------------------------------------------------------------
    def index_shard(self, user_key: str) -> int:
        """The shard of the index holding ``user_key``'s entries (0 to INDEX_SHARDS - 1)."""
        return zlib.crc32(quote(user_key, safe="").encode()) % INDEX_SHARDS

    def index_member(self, user_key: str, armed: str) -> str:
        """The index member of the entry ``(user_key, armed)``.

        >>> KeyLayout("bot").index_member("263 77|x", "3.ab12cd")
        '263%2077%7Cx|3.ab12cd'
        """
        return quote(user_key, safe="") + INDEX_SEPARATOR + armed

    def index_entry(self, member: str | bytes) -> tuple[str, str]:
        """``(user_key, armed)`` of an index member (:meth:`index_member`'s inverse)."""
        text = member.decode() if isinstance(member, bytes) else member
        escaped, _, armed = text.partition(INDEX_SEPARATOR)
        return unquote(escaped), armed
