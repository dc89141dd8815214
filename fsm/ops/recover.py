"""``fsm recover``: move a broken session to the flow's safe stage, keeping what is still
valid, with the original bytes kept in the quarantine; and putting quarantined bytes back.

Recovery is safe while the bot runs: the original bytes are moved to the quarantine only if the
session still holds exactly them, a session whose lease a worker holds is left for later, and
the repaired snapshot is written by compare-and-set onto the empty slot, one version above the
broken one (so a worker that read the broken session cannot write over the repair).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec

from fsm.auth import TokenVerifier
from fsm.clock import Clock
from fsm.errors import FsmError
from fsm.flow import FlowSpec
from fsm.ops.timers import index_timers
from fsm.ops.validate import MIGRATABLE, NOT_REPAIRABLE, Diagnosis, diagnose, diagnose_view
from fsm.records import HistoryEntry, QuarantineEntry, Record, SaveStatus, SessionView
from fsm.snapshot import Auth, Snapshot, chain_floor, decode_snapshot, encode_snapshot
from fsm.store import Store, new_owner_token, operator_store

#: TTL of a repaired session whose broken one had none.
DEFAULT_TTL = 30 * 60.0
#: How long recovery holds the user's lease (it needs a few round trips).
LEASE = 30.0


class Outcome(enum.Enum):
    RECOVERED = "recovered"  # quarantined and replaced by a snapshot at the safe stage
    VALID = "valid"  # nothing to do
    NOT_REPAIRABLE = "not-repairable"  # e.g. written by newer code: left alone
    LOCKED = "locked"  # a worker holds the user's lease: try again later
    CHANGED = "changed"  # the session changed while we looked: run again
    MISSING = "missing"  # no session
    FAILED = "failed"  # the bytes were quarantined but the repair could not be written


@dataclass(frozen=True, slots=True)
class Recovery:
    user_key: str
    outcome: Outcome
    reason: str  # what was wrong (or why nothing was done)
    quarantine_id: str | None = None
    kept_token: bool = False
    kept_data: bool = False
    version: int = 0  # of the repaired snapshot


def salvage_auth(raw: bytes) -> Auth | None:
    """The auth slot of bytes that may not decode as a whole snapshot: read untyped, by field
    name (schema 1 maps) or position (arrays), and checked as an :class:`Auth` on its own."""
    try:
        value = msgspec.msgpack.decode(raw)
    except Exception:  # noqa: BLE001 - not msgpack at all: nothing to salvage
        return None
    slot: Any
    if isinstance(value, dict):
        slot = value.get("auth")
    elif isinstance(value, list) and len(value) > _AUTH_INDEX:
        slot = value[_AUTH_INDEX]
    else:
        return None
    try:
        if isinstance(slot, dict):
            return Auth(**msgspec.structs.asdict(msgspec.convert(slot, _AuthFields)))
        if isinstance(slot, list):
            return msgspec.convert(slot, Auth)
    except (msgspec.ValidationError, TypeError):
        return None
    return None


class _AuthFields(msgspec.Struct):
    token: str
    subject: str = ""
    expires_at: float | None = None
    issued_at: float | None = None


_AUTH_INDEX = Snapshot.__struct_fields__.index("auth")


def token_still_valid(auth: Auth | None, now: float, verifier: TokenVerifier | None) -> bool:
    """Keep a token only if it is unexpired (and, with a verifier, verifies)."""
    if auth is None or not auth.token:
        return False
    if verifier is not None:
        return verifier.is_valid(auth)
    return auth.expires_at is None or auth.expires_at > now


def reached_version(store: Store, user_key: str, stored: int) -> int:
    """The highest version the user's conversation has reached: the stored one, or its newest
    history entry if that is higher (the session expired or was deleted). A write that
    replaces a session goes above it, so versions never go backwards."""
    last = store.history(user_key, limit=1)
    return max(chain_floor(stored), chain_floor(last[0].version) if last else 0)


def find_quarantined(
    store: Store, entry_id: str, user_key: str | None = None
) -> QuarantineEntry | None:
    """The quarantined entry ``entry_id`` (looked up among ``user_key``'s only, if given)."""
    entries = operator_store(store).quarantined(user_key)
    return next((e for e in entries if e.id == entry_id), None)


def plan_recovery(
    view: SessionView | None, user_key: str, spec: FlowSpec, *, now: float, force: bool = False
) -> tuple[Diagnosis | None, Recovery | None]:
    """What :func:`recover_session` would do with ``view``: (its diagnosis, the outcome when
    nothing is to be written), or (diagnosis, None) when it would recover. ``--dry-run`` and
    the real run decide with this one function."""
    if view is None:
        return None, Recovery(user_key, Outcome.MISSING, "no session")
    found = diagnose_view(view, spec, now=now)
    if view.error:
        return found, Recovery(
            user_key,
            Outcome.NOT_REPAIRABLE,
            f"{view.error}: written by something else; inspect and delete the key by hand",
        )
    if found.ok and not force:
        return found, Recovery(user_key, Outcome.VALID, "valid")
    if found.problem in NOT_REPAIRABLE:
        return found, Recovery(user_key, Outcome.NOT_REPAIRABLE, found.reason)
    if view.lock is not None:
        return found, Recovery(
            user_key,
            Outcome.LOCKED,
            f"a worker holds the user's lease for {view.lock.ttl:.1f}s more; try again then",
        )
    return found, None


def recover_session(
    store: Store,
    spec: FlowSpec,
    user_key: str,
    *,
    clock: Clock,
    source: str = "fsm recover",
    verifier: TokenVerifier | None = None,
    force: bool = False,
) -> Recovery:
    """Repair one session if it is broken (``force``: even if it is valid, e.g. a stuck flow).

    Keeps the token if it is still valid and, when the snapshot decodes, its data; restarts at
    ``spec.safe_stage``. The broken bytes go to the quarantine (``fsm quarantine show``)."""
    store = operator_store(store)
    view = store.session_view(user_key)
    now = clock.now()
    found, decided = plan_recovery(view, user_key, spec, now=now, force=force)
    if decided is not None:
        return decided
    assert view is not None and found is not None
    reason = found.reason if not found.ok else "forced: moved to the safe stage"
    repaired, kept_token, kept_data = _repaired(found, view.record.payload, spec, now, verifier)
    # Under the user's lease, so no message slips in between taking the bytes out and writing
    # the repair (it would start a fresh session without the token): it queues behind us.
    owner = new_owner_token()
    if not store.acquire_lock(user_key, owner, LEASE):
        return Recovery(user_key, Outcome.LOCKED, "a worker took the user's lease; try again")
    try:
        qid = store.quarantine(user_key, view.record.payload, f"fsm recover: {reason}")
        if qid is None:
            return Recovery(user_key, Outcome.CHANGED, "the session changed meanwhile; run again")
        try:
            return _write_repair(
                store,
                user_key,
                view,
                found,
                repaired,
                reason,
                qid,
                now,
                source,
                owner,
                kept_token,
                kept_data,
            )
        except FsmError as exc:  # the bytes are out but the repair is not in: say where
            return Recovery(
                user_key,
                Outcome.FAILED,
                f"the repair could not be written ({exc}); the original bytes are safe: "
                f"fsm quarantine restore {qid} --user {user_key}",
                quarantine_id=qid,
            )
    finally:
        store.release_lock(user_key, owner)  # a no-op when the save released it


def _write_repair(
    store: Store,
    user_key: str,
    view: SessionView,
    found: Diagnosis,
    repaired: Snapshot,
    reason: str,
    qid: str,
    now: float,
    source: str,
    owner: str,
    kept_token: bool,
    kept_data: bool,
) -> Recovery:
    version = reached_version(store, user_key, view.record.version) + 1
    repaired = msgspec.structs.replace(
        repaired, version=version, last_updated=now, update_from=source
    )
    result = store.save(
        user_key,
        encode_snapshot(repaired, user_key=user_key),
        version=version,
        expected_version=0,
        ttl=view.ttl if view.ttl and view.ttl > 0 else DEFAULT_TTL,
        history=HistoryEntry(
            version=version,
            from_stage=found.stored.stage if found.stored is not None else "?",
            to_stage=repaired.stage,
            event="recover",
            update_from=source,
            at=now,
            from_step=found.stored.step if found.stored is not None else "",
            to_step=repaired.step,
        ),
        owner=owner,
        release=True,
    )
    if result.status is not SaveStatus.SAVED:
        # Only a write that ignored the lease gets here; the old bytes are in the quarantine.
        return Recovery(
            user_key,
            Outcome.CHANGED,
            f"quarantined; another write came first ({result.status.value})",
            quarantine_id=qid,
        )
    return Recovery(user_key, Outcome.RECOVERED, reason, qid, kept_token, kept_data, version)


def _repaired(
    found: Diagnosis, raw: bytes, spec: FlowSpec, now: float, verifier: TokenVerifier | None
) -> tuple[Snapshot, bool, bool]:
    old = found.snapshot
    auth = old.auth if old is not None else salvage_auth(raw)
    keep_token = token_still_valid(auth, now, verifier)
    # Data is kept only from a snapshot that decoded (typed); from bytes that did not, only
    # the token is trusted enough to keep.
    data = dict(old.data) if old is not None and old.flow == spec.name else {}
    stage = spec.safe_stage
    fresh = Snapshot(
        flow=spec.name,
        stage=stage,
        step=spec.stages[stage].entry,
        data=data,
        auth=auth if keep_token else None,
        flow_version=spec.version,
    )
    return fresh, keep_token, bool(data)


def restore_quarantined(
    store: Store,
    spec: FlowSpec,
    user_key: str,
    entry_id: str,
    *,
    clock: Clock,
    replace: bool = False,
    ttl: float = DEFAULT_TTL,
    source: str = "fsm quarantine restore",
) -> tuple[bool, QuarantineEntry | None, str]:
    """Put quarantined bytes back as the user's session (once a fix made them readable) and
    take them out of the quarantine. Returns (restored?, the entry, what happened).

    The snapshot goes back as it was, its time of last save made now (so the engine does
    not find it expired at once). Over a session the user has now (the
    engine restarts a conversation whose bytes it quarantined) only with ``replace``: the old
    snapshot is then written one version above the current one, by compare-and-set, so no
    worker can write over it with a stale version. Bytes that still do not decode are not
    restored: the engine would only quarantine them again."""
    store = operator_store(store)
    entry = find_quarantined(store, entry_id, user_key)
    if entry is None:
        return False, None, f"no quarantined entry {entry_id!r} for user {user_key!r}"
    try:
        snapshot = decode_snapshot(entry.raw, user_key=user_key)
    except Exception as exc:  # noqa: BLE001 - CorruptSnapshot or SchemaTooNew: said, not raised
        return False, entry, f"still unreadable, not restored: {exc}"
    found = diagnose(user_key, Record(entry.raw, snapshot.version), spec, now=clock.now())
    if found.problem not in MIGRATABLE:
        return False, entry, f"still invalid for flow {spec.name!r}, not restored: {found.reason}"
    view = store.session_view(user_key)
    floor = reached_version(store, user_key, view.record.version if view else 0)
    payload, version = entry.raw, snapshot.version
    if view is not None and not replace:
        return (
            False,
            entry,
            f"the user has a session now (version {view.record.version}); "
            "--replace writes the quarantined one over it",
        )
    if floor >= version and (view is not None or floor > version):
        version = floor + 1  # continue the chain: a stale writer must not win
    # Saved now: the engine judges expiry by the time of the last save, and a session put
    # back hours after it was quarantined must not expire at its user's next message.
    payload = encode_snapshot(
        msgspec.structs.replace(snapshot, version=version, last_updated=clock.now()),
        user_key=user_key,
    )
    index_timers(store, user_key, snapshot, clock.now())
    result = store.save(
        user_key,
        payload,
        version=version,
        expected_version=view.record.version if view is not None else 0,
        expected_tag=view.record.tag if view is not None else "",
        ttl=ttl,
        history=HistoryEntry(
            version=version,
            from_stage=_stage_of(view, user_key),
            to_stage=snapshot.stage,
            event="unquarantine",
            update_from=source,
            at=clock.now(),
            to_step=snapshot.step,
        ),
    )
    if result.status is not SaveStatus.SAVED:
        if result.status is SaveStatus.LOCKED:
            return False, entry, "not restored: a worker holds the user's lease; try again"
        return False, entry, f"not restored: the session changed meanwhile ({result.status.value})"
    store.remove_quarantined(user_key, entry_id)
    return True, entry, f"restored as version {version}"


def _stage_of(view: SessionView | None, user_key: str) -> str:
    if view is None:
        return ""
    try:
        return decode_snapshot(view.record.payload, user_key=user_key).stage
    except Exception:  # noqa: BLE001 - only a label for the history entry
        return "?"
