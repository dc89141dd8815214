"""The records the store contract speaks: what a store keeps and returns, per user key.

A store keeps, per user key, the **session** (the encoded snapshot as opaque bytes, and its
version, under one sliding TTL), a bounded **history** of the saves that made each version, the
**seen message ids** (a re-delivered webhook is applied once) and a **lease lock** with an owner
token; store-wide, a **quarantine** of bytes that could not be decoded. These are the values
that cross the port (:mod:`fsm.store`) in either direction. Stores move bytes: decoding a
snapshot is :mod:`fsm.snapshot`'s job.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec

#: The highest version a session can be saved with (10^12 saves of one conversation). Stores
#: refuse more; the engine takes a record claiming more for corruption, and never continues a
#: version chain above it. The Redis value layout reads versions of up to 15 digits.
MAX_VERSION = 10**12


class Record(msgspec.Struct, frozen=True):
    """A stored session: the bytes exactly as stored and the version they were saved with.

    ``tag`` is an opaque id of the write that stored it, for stores that keep one (RedisStore
    does): passed back as ``expected_tag``, it lets the compare-and-set tell apart two writes
    of the same version, as after a failover lost one. It takes no part in equality.
    """

    payload: bytes
    version: int
    tag: str = ""

    def __eq__(self, other: object) -> bool:
        if type(other) is not Record:
            return NotImplemented
        return self.version == other.version and self.payload == other.payload

    def __hash__(self) -> int:
        return hash((self.payload, self.version))

    def __repr__(self) -> str:  # the payload holds a JWT: never print it
        return f"Record(version={self.version}, payload=<{len(self.payload)} bytes>)"

    def __rich_repr__(self) -> list[tuple[str, object]]:  # msgspec's shows the payload
        return [("version", self.version), ("payload", f"<{len(self.payload)} bytes>")]


class Loaded(msgspec.Struct, frozen=True):
    """What :meth:`~fsm.store.SessionStore.load` returns: the record (``None`` if absent or
    expired), whether the given message id was already applied for this user, and whether a
    worker holds the user's lease lock right now.

    ``locked`` is a hint read in the same round trip: a writer that sees it queues behind the
    lock instead of racing its holder (the compare-and-set, not the hint, keeps data safe).
    """

    record: Record | None
    seen: bool = False
    locked: bool = False


class SaveStatus(enum.Enum):
    SAVED = "saved"
    CONFLICT = "conflict"  # the stored version is not the expected one
    DUPLICATE = "duplicate"  # the message id was already applied
    LOCKED = "locked"  # another worker holds the user's lease: queue behind it


class SaveResult(msgspec.Struct, frozen=True):
    """Outcome of a compare-and-set. On conflict or duplicate, ``current`` is what is stored now
    (``None`` if nothing is), so a retry does not need another read."""

    status: SaveStatus
    current: Record | None = None
    tag: str = ""  # on SAVED, the tag of the record just written (stores that keep tags)
    #: On SAVED with ``lease``: the save landed but the lease is not the caller's (a retried
    #: save whose first attempt landed, after which the lease went to another worker or the
    #: state moved on). The caller must take the lease, and reload, before acting.
    unleased: bool = False

    @property
    def saved(self) -> bool:
        return self.status is SaveStatus.SAVED


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One save of a conversation: which version it produced and what moved."""

    version: int
    from_stage: str
    to_stage: str
    event: str
    update_from: str
    at: float
    from_step: str = ""
    to_step: str = ""


class Due(msgspec.Struct, frozen=True):
    """An entry of the store's *index of deadlines*: the user whose timers the snapshot's
    ``armed`` stands for, and when the soonest of them is due (epoch seconds, the engine's
    clock). The index may hold entries that no longer stand for anything (the timers were
    cancelled, or the save that armed them lost its compare-and-set): every firing is checked
    against the stored snapshot, so such an entry only costs a read."""

    user_key: str
    armed: str
    due: float


class DueStats(msgspec.Struct, frozen=True):
    """The index of deadlines at a glance: entries indexed, of which due now, and claimed by a
    ticker at work (:meth:`~fsm.store.SessionStore.due_stats`)."""

    indexed: int
    due: int
    claimed: int
    oldest_due: float | None = None


@dataclass(frozen=True, slots=True)
class LockInfo:
    owner: str
    ttl: float  # seconds left


@dataclass(frozen=True, slots=True)
class SessionView:
    """One stored session as an operator sees it: the record, its TTL left and its lock,
    read together (:meth:`~fsm.store.Store.sessions`, :meth:`~fsm.store.Store.session_view`)."""

    user_key: str
    record: Record
    ttl: float | None  # seconds left; None if the session never expires
    lock: LockInfo | None
    #: Set when the key holds something no session value can be (a Redis hash, say): the
    #: record is then empty, and this says what was found instead.
    error: str = ""


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """Bytes taken out of a session because they could not be decoded, kept byte-for-byte."""

    id: str
    user_key: str
    raw: bytes
    reason: str
    at: float

    def __repr__(self) -> str:
        return (
            f"QuarantineEntry(id={self.id!r}, user_key={self.user_key!r}, "
            f"raw=<{len(self.raw)} bytes>, reason={self.reason!r}, at={self.at!r})"
        )


#: A history entry as stored: an array of HistoryEntry's fields in order, no names (made from
#: HistoryEntry's own fields, so the two cannot drift apart).
_HistoryRow = msgspec.defstruct(
    "_HistoryRow",
    [
        (f.name, f.type) if f.required else (f.name, f.type, f.default)
        for f in msgspec.structs.fields(HistoryEntry)
    ],
    array_like=True,
)


_history_encoder = msgspec.msgpack.Encoder()
_history_decoder = msgspec.msgpack.Decoder(HistoryEntry)
_row_decoder = msgspec.msgpack.Decoder(_HistoryRow)
#: The first byte of a msgpack array (fixarray, array 16, array 32).
_ARRAY_STARTS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


def encode_history(entry: HistoryEntry, *, compact: bool = True) -> bytes:
    """``entry`` as stored: an array in field order (half the bytes of a map with names), or
    with ``compact=False`` the map with field names, the only form earlier releases read."""
    if not compact:
        return _history_encoder.encode(entry)
    return _history_encoder.encode(msgspec.structs.astuple(entry))


def decode_history(raw: bytes) -> HistoryEntry:
    """An entry as :func:`encode_history` stores it, or as a map with field names (what
    releases before the array form wrote, still read)."""
    if raw[:1] and raw[0] in _ARRAY_STARTS:
        return HistoryEntry(**msgspec.structs.asdict(_row_decoder.decode(raw)))
    return _history_decoder.decode(raw)
