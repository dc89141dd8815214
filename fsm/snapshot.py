"""The snapshot: the single, atomic record of one conversation.

State (stage, step, option), what the user typed so far (``data``), and the API token (``auth``)
live in one document with one version and one TTL, so they cannot expire or roll back separately.
It is encoded as msgpack; decoding is strict and typed, and anything that does not decode into a
valid snapshot raises :class:`~fsm.errors.CorruptSnapshot` with the bytes and msgspec's message.

``schema`` is the format version of this record. Code refuses to *write* a snapshot whose schema
is newer than :data:`SCHEMA_VERSION`: an old worker must not drop fields it does not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from fsm.errors import CorruptSnapshot, SchemaTooNew
from fsm.migrations import SCHEMA_VERSION as SCHEMA_VERSION
from fsm.migrations import upgrade
from fsm.records import MAX_VERSION
from fsm.reply import Reply

#: How far ahead of this code a record's ``schema`` may be and still be taken for a newer
#: deploy's, refused and left untouched: the library raises it one at a time, and a rolling
#: deploy runs at most one release ahead. A record further ahead was written by no deploy: it
#: is corrupt, quarantined like any other, so it cannot refuse every message forever.
NEWER_WINDOW = 1

#: The same for a flow's ``flow_version``, which its authors raise: a deploy may raise it by
#: at most this much (a flow's version history need not be consecutive).
NEWER_FLOW_WINDOW = 10

#: The highest version a stored session may carry and still be continued: below the stores'
#: MAX_VERSION by room for any chain of saves one message makes, so a session the engine
#: accepts can always be saved again. Above it a stored session is corrupt (the engine
#: quarantines it, ``fsm check`` reports it), and a restarted chain does not continue from it.
VERSION_LIMIT = MAX_VERSION - 1_000_000

#: The deepest nesting of lists and maps that ``data`` may hold. Deeper data is refused when
#: decoded (corrupt) and when a step produces it (StepFailed), so no reader recurses past it.
MAX_DEPTH = 64


class Auth(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """The auth slot: a verified JWT and what we know of it. Only auth events change it.

    The token never shows in ``repr``/``str``; use :attr:`token` explicitly where it is needed
    (an ``Authorization`` header).
    """

    token: str
    subject: str = ""
    expires_at: float | None = None
    issued_at: float | None = None

    def __repr__(self) -> str:
        return f"Auth(subject={self.subject!r}, expires_at={self.expires_at!r}, token=<redacted>)"

    __str__ = __repr__

    def __rich_repr__(self) -> list[tuple[str, Any]]:  # msgspec's default shows every field
        return [("subject", self.subject), ("expires_at", self.expires_at), ("token", "<redacted>")]


class Resume(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Where to continue after a re-login that interrupted a protected stage."""

    stage: str
    step: str
    option: str = ""
    pending: str = ""  # the idempotency key of an action interrupted by the sign-in


class Outgoing(msgspec.Struct, frozen=True, array_like=True):
    """A reply saved with the state that produced it, not yet confirmed sent: an entry of the
    snapshot's *outbox*, which an engine keeps when a transport asks for it
    (``Engine(..., outbox=True)``; the WhatsApp transport does). The transport sends the
    entries in order and confirms the ones the channel accepted
    (:meth:`fsm.Engine.confirm`); what stays is sent again at the next delivery of the same
    message or before the replies to the user's next one, so a reply is never lost between
    the save and the send."""

    version: int  # the save that produced it
    index: int  # its place among that save's replies
    message_id: str  # the message it answers ("" when the transport gave none)
    reply: Reply
    #: A random id made when the entry is saved. Versions can be reused (a failover that
    #: lost writes, an old copy restored), so what was sent is remembered and confirmed by
    #: this id, never by the version: a reused version never matches an old sent-mark.
    #: Entries saved by older releases have none (:attr:`key` then falls back).
    id: str = ""

    @property
    def key(self) -> str:
        """What confirms this entry (:meth:`fsm.Engine.confirm`): its :attr:`id`."""
        return self.id or f"{self.version}.{self.index}"


class Armed(msgspec.Struct, frozen=True, array_like=True):
    """A timer armed in a snapshot (:func:`fsm.timeout`): the name it was declared with at the
    conversation's step, and when it is due (epoch seconds, by the engine's clock). It is kept
    under the snapshot's version, so it is armed, re-armed and cancelled by compare-and-set
    with the state it belongs to."""

    name: str
    due: float


class Snapshot(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One conversation, as stored. Immutable: the engine derives a new one per save.

    Stored as a msgpack array in field order: new fields are only ever appended, with a
    default, so older records keep decoding.

    ``version`` starts at 1 on the first save and grows by exactly one per save; the store's
    compare-and-set uses it as the fencing token.
    """

    flow: str
    stage: str
    step: str
    option: str = ""
    data: dict[str, Any] = {}
    auth: Auth | None = None
    resume: Resume | None = None
    version: int = 0
    schema: int = SCHEMA_VERSION
    flow_version: int = 1
    last_updated: float = 0.0
    update_from: str = ""
    #: At an action step: the idempotency key of the pending action, kept across retries and
    #: a sign-in detour so the API applies it once. At the step an action sent the user back
    #: to after a failure that may have been applied (``ctx.retry_later``): the key the next
    #: attempt reuses. Empty elsewhere.
    pending: str = ""
    #: Replies saved and not yet confirmed sent, oldest first (:class:`Outgoing`); always
    #: empty unless the engine keeps an outbox.
    outbox: tuple[Outgoing, ...] = ()
    #: At a free-text step where the user typed an exit word: that text, held while the
    #: engine asks whether to leave (:class:`fsm.flow.Exit`). Empty otherwise.
    asked: str = ""
    #: The timers armed at this step (:class:`Armed`), soonest first; empty elsewhere.
    timers: tuple[Armed, ...] = ()
    #: Which index entry stands for ``timers`` in the store's index of deadlines
    #: (``"<version>.<random>"``: the save that indexed them). Empty with no timers.
    armed: str = ""
    #: When the user last wrote (epoch seconds, the engine's clock; 0 if never): the start
    #: of a channel's reply window (WhatsApp's 24 hours).
    last_inbound: float = 0.0

    def __repr__(self) -> str:
        return (
            f"Snapshot(flow={self.flow!r}, stage={self.stage!r}, step={self.step!r}, "
            f"option={self.option!r}, version={self.version}, schema={self.schema}, "
            f"data_keys={sorted(self.data)!r}, auth={self.auth!r}, "
            f"last_updated={self.last_updated!r}, update_from={self.update_from!r}, "
            f"outbox={len(self.outbox)}, timers={[t.name for t in self.timers]!r})"
        )

    __str__ = __repr__

    def __rich_repr__(self) -> list[tuple[str, Any]]:  # data and auth may hold secrets
        shown = ("flow", "stage", "step", "option", "version", "schema", "last_updated")
        return [
            *((name, getattr(self, name)) for name in shown),
            ("data_keys", sorted(self.data)),
            ("auth", self.auth),
            ("update_from", self.update_from),
        ]


# -- older schemas: read as plain data, upgraded by fsm.migrations, then typed -------------
class _AuthMap(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    subject: str = ""
    expires_at: float | None = None
    issued_at: float | None = None


class _ResumeMap(msgspec.Struct, frozen=True, kw_only=True):
    stage: str
    step: str
    option: str = ""
    pending: str = ""


class _SnapshotMap(msgspec.Struct, frozen=True, kw_only=True):
    """The current fields as a map: what a migrated older record is checked against."""

    flow: str
    stage: str
    step: str
    option: str = ""
    data: dict[str, Any] = {}
    auth: _AuthMap | None = None
    resume: _ResumeMap | None = None
    version: int = 0
    schema: int = SCHEMA_VERSION
    flow_version: int = 1
    last_updated: float = 0.0
    update_from: str = ""
    pending: str = ""
    outbox: tuple[Outgoing, ...] = ()
    asked: str = ""
    timers: tuple[Armed, ...] = ()
    armed: str = ""
    last_inbound: float = 0.0


#: How each schema that stores arrays lays its fields out, by position: the top level, and
#: the nested structs by field name. Frozen per schema (a new schema adds its own entry, and
#: ``schema`` stays at the same position in every layout), so that records of an older array
#: schema can be read as plain data and migrated (:mod:`fsm.migrations`).
ARRAY_LAYOUTS: dict[int, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    2: (
        (
            "flow", "stage", "step", "option", "data", "auth", "resume", "version", "schema",
            "flow_version", "last_updated", "update_from", "pending",
            "outbox",  # appended with a default: records without it are still schema 2
            "asked",  # the same
            "timers", "armed", "last_inbound",  # the same
        ),
        {
            "auth": ("token", "subject", "expires_at", "issued_at"),
            "resume": ("stage", "step", "option", "pending"),
        },
    ),
}  # fmt: skip
ARRAY_LAYOUTS[3] = ARRAY_LAYOUTS[2]  # the same layout: see fsm.migrations.SCHEMA_VERSION


def _from_map(raw: bytes) -> Snapshot:
    """A record stored as a map (schema 1): migrated to the current schema, then typed."""
    fields = msgspec.msgpack.decode(raw)
    if not isinstance(fields, dict):
        raise msgspec.ValidationError("Expected `object`, got another type")
    return _typed(fields, fields.get("schema", 1))


def _from_older_array(raw: bytes) -> Snapshot:
    """A record of an older array schema: read by its layout, migrated, then typed."""
    value = msgspec.msgpack.decode(raw)
    fields = named_fields(value)
    if fields is None:
        schema = (
            value[_SCHEMA_INDEX] if isinstance(value, list) and len(value) > _SCHEMA_INDEX else "?"
        )
        raise msgspec.ValidationError(
            f"schema {schema} records are maps, this is an array - at `$.schema`"
        )
    return _typed(fields, fields["schema"])


def named_fields(value: Any) -> dict[str, Any] | None:
    """An array record (decoded untyped) as field name -> value, nested structs included, by
    the layout of the schema it says it has; None if it is not such an array."""
    if not isinstance(value, list) or len(value) <= _SCHEMA_INDEX:
        return None
    schema = value[_SCHEMA_INDEX]
    layout = ARRAY_LAYOUTS.get(schema) if isinstance(schema, int) else None
    if layout is None:
        return None
    names, nested = layout
    fields: dict[str, Any] = dict(zip(names, value, strict=False))
    for name, inner in nested.items():
        if isinstance(fields.get(name), list):
            fields[name] = dict(zip(inner, fields[name], strict=False))
    return fields


def _typed(fields: dict[str, Any], schema: object) -> Snapshot:
    if isinstance(schema, int) and not isinstance(schema, bool) and 1 <= schema < SCHEMA_VERSION:
        fields = upgrade(fields, schema, SCHEMA_VERSION)
    old = msgspec.convert(fields, _SnapshotMap)
    values = {name: getattr(old, name) for name in old.__struct_fields__}
    values["auth"] = None if old.auth is None else Auth(**msgspec.structs.asdict(old.auth))
    values["resume"] = None if old.resume is None else Resume(**msgspec.structs.asdict(old.resume))
    return Snapshot(**values)


_SCHEMA_INDEX = Snapshot.__struct_fields__.index("schema")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


def _is_map(raw: bytes) -> bool:
    return bool(raw) and (0x80 <= raw[0] <= 0x8F or raw[0] in (0xDE, 0xDF))


def encode_snapshot(snapshot: Snapshot, *, user_key: str | None = None) -> bytes:
    """Encode for storage; refuses a schema newer than this code knows."""
    if snapshot.schema > SCHEMA_VERSION:
        raise SchemaTooNew(snapshot.schema, SCHEMA_VERSION, user_key=user_key)
    return _encoder.encode(snapshot)


def decode_snapshot(
    raw: bytes, *, user_key: str | None = None, check_depth: bool = True
) -> Snapshot:
    """Decode strictly; any failure is a :class:`CorruptSnapshot` carrying ``raw`` unchanged.

    A record written with a newer schema raises :class:`SchemaTooNew` instead, even when the
    newer schema changed field types: it is not corrupt, only not ours to read.
    ``check_depth=False`` skips the :data:`MAX_DEPTH` check, for bytes this process has just
    encoded from data it checked itself.
    """
    try:
        if _is_map(raw):
            snapshot = _from_map(raw)
        else:
            try:
                snapshot = _decoder.decode(raw)  # the fast path: the current schema
            except (msgspec.ValidationError, msgspec.DecodeError):
                older = _older_array_schema(raw)
                if older is None:
                    raise
                snapshot = _from_older_array(raw)  # an older schema's types may differ
            else:
                if 1 <= snapshot.schema < SCHEMA_VERSION:
                    snapshot = _from_older_array(raw)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any failure is corruption, raised
        newer = _newer_schema(raw)
        if newer is not None:
            raise _newer(newer, raw, user_key) from None
        raise CorruptSnapshot(
            str(exc) or type(exc).__name__, raw=bytes(raw), user_key=user_key
        ) from None
    if snapshot.schema > SCHEMA_VERSION:  # decoded, but fields we do not know were dropped
        raise _newer(snapshot.schema, raw, user_key)
    if not 1 <= snapshot.version <= MAX_VERSION:
        raise CorruptSnapshot(
            f"version must be 1..{MAX_VERSION}, got {snapshot.version} - at `$.version`",
            raw=bytes(raw),
            user_key=user_key,
        )
    if check_depth and nesting(snapshot.data) > MAX_DEPTH:
        raise CorruptSnapshot(
            f"data nested deeper than {MAX_DEPTH} levels - at `$.data`",
            raw=bytes(raw),
            user_key=user_key,
        )
    if snapshot.schema < 1:
        raise CorruptSnapshot(
            f"schema must be >= 1, got {snapshot.schema} - at `$.schema`",
            raw=bytes(raw),
            user_key=user_key,
        )
    return snapshot


#: A record larger than this is not probed for a newer schema (the probe decodes it untyped).
_PROBE_LIMIT = 1 << 20


def _older_array_schema(raw: bytes) -> int | None:
    """The schema an array record says it has, when older than ours and readable by layout."""
    if len(raw) > _PROBE_LIMIT:
        return None
    try:
        value = msgspec.msgpack.decode(raw)
    except Exception:  # noqa: BLE001 - not msgpack: plain corruption, reported by the caller
        return None
    if isinstance(value, list) and len(value) > _SCHEMA_INDEX:
        schema = value[_SCHEMA_INDEX]
        if isinstance(schema, int) and schema < SCHEMA_VERSION and schema in ARRAY_LAYOUTS:
            return schema
    return None


def _newer_schema(raw: bytes) -> int | None:
    """The schema a record says it has, when newer than ours (its other fields may have
    changed type: only the position of ``schema`` is relied on)."""
    if len(raw) > _PROBE_LIMIT:
        return None
    try:
        value = msgspec.msgpack.decode(raw)
    except Exception:  # noqa: BLE001 - not even msgpack: plain corruption, reported by caller
        return None
    if isinstance(value, list) and len(value) > _SCHEMA_INDEX:
        schema = value[_SCHEMA_INDEX]
    elif isinstance(value, dict):
        schema = value.get("schema")
    else:
        return None
    ok = isinstance(schema, int) and not isinstance(schema, bool)
    return schema if ok and schema > SCHEMA_VERSION else None


def _newer(schema: int, raw: bytes, user_key: str | None) -> SchemaTooNew | CorruptSnapshot:
    """A record of a newer ``schema``: a newer deploy's (refused) or, too far ahead, corrupt."""
    if schema <= SCHEMA_VERSION + NEWER_WINDOW:
        return SchemaTooNew(schema, SCHEMA_VERSION, user_key=user_key)
    return CorruptSnapshot(
        f"schema {schema} is beyond any deploy (this code reads {SCHEMA_VERSION}, a newer "
        f"deploy at most {SCHEMA_VERSION + NEWER_WINDOW}) - at `$.schema`",
        raw=bytes(raw),
        user_key=user_key,
    )


def chain_floor(version: int) -> int:
    """The version a restarted or replacing write may continue above: ``version``, unless it
    is so high that the chain could not go on (only corruption claims that), then 0."""
    return version if version < VERSION_LIMIT else 0


def nesting(value: Any) -> int:
    """How deeply lists and maps nest in ``value`` (0 for a scalar), found level by level
    without recursion, so no depth of untrusted data can overflow the stack; it stops
    counting past :data:`MAX_DEPTH`. Exact types are checked first: this runs on every
    decode."""
    depth = 0
    level = [value]
    while True:
        children: list[Any] = []
        found = False
        for item in level:
            kind = type(item)
            if kind is dict:
                children.extend(item.values())
            elif kind is list or kind is tuple:
                children.extend(item)
            elif kind in SCALAR_TYPES or not isinstance(item, Mapping):
                continue
            else:
                children.extend(item.values())
            found = True
        if not found:
            return depth
        depth += 1
        if depth > MAX_DEPTH:
            return depth
        level = children


#: The types of stored values that hold no other values (checked before any ABC: it is fast).
SCALAR_TYPES = frozenset({str, int, float, bool, type(None), bytes})


def is_plain(value: Any) -> bool:
    """Whether ``value`` is exactly what decoding its encoding gives back: the scalar types,
    lists, and dicts with str keys, of those (a tuple, a subclass, a non-str key is not).
    Level by level without recursion, like :func:`nesting`."""
    level = [value]
    while level:
        children: list[Any] = []
        for item in level:
            kind = type(item)
            if kind in SCALAR_TYPES:
                continue
            if kind is list:
                children.extend(item)
            elif kind is dict and all(type(k) is str for k in item):
                children.extend(item.values())
            else:
                return False
        level = children
    return True


def stored_schema(raw: bytes) -> int | None:
    """The schema a stored record was written with (before any migration), or None if the
    bytes do not say. Cheap for current records: their schema sits at a fixed position."""
    if not _is_map(raw):
        try:
            return _decoder.decode(raw).schema
        except Exception:  # noqa: BLE001 - probed below, untyped
            pass
    if len(raw) > _PROBE_LIMIT:
        return None
    try:
        value = msgspec.msgpack.decode(raw)
    except Exception:  # noqa: BLE001 - not msgpack: no schema to tell
        return None
    if isinstance(value, dict):
        schema = value.get("schema", 1)
    elif isinstance(value, list) and len(value) > _SCHEMA_INDEX:
        schema = value[_SCHEMA_INDEX]
    else:
        return None
    return schema if isinstance(schema, int) and not isinstance(schema, bool) else None
