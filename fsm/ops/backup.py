"""``fsm backup`` / ``fsm restore``: every session to a file and back, on any store.

The file is JSON Lines, one object per line, written as the store is scanned (never the whole
store in memory)::

    {"format": "convo-fsm-backup", "format_version": 1, "created_at": 1764000000.0}
    {"user": "263770000001", "version": 7, "ttl": 1712.5, "payload": "<base64 of the snapshot>",
     "history": [{"version": 6, "from_stage": "MENU", ...}, ...]}
    {"user": "263770000009", "version": 3, "ttl": 60.0, "raw": "<base64>", "corrupt": "why"}
    {"end": true, "sessions": 1, "corrupt": 1}

``payload`` is the encoded snapshot exactly as stored, so a round trip through any stores is
byte-identical. A session that does not decode is kept as ``raw`` with the reason (nothing is
lost) and is not restored. ``ttl`` is the seconds the session had left when it was read; a
restore gives it that long again. ``history`` is the user's history, oldest first, as the store
kept it (files written before it existed have none); a restore appends the entries the target
store lacks, on stores that can (:meth:`fsm.store.OperatorStore.import_history`). The end line
tells a complete file from a truncated one.

A backup holds every user's API token and all their data, the values of the flow's sensitive
keys (personal data, :attr:`fsm.Flow.sensitive`) included: unlike every display, it hides
nothing, since it is a backup. It is created with mode 0600 (owner only), and should be stored
encrypted; see docs/operations.md.
"""

from __future__ import annotations

import contextlib
import enum
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from fsm.clock import Clock
from fsm.errors import CorruptSnapshot, FsmError, SchemaTooNew
from fsm.ops.recover import DEFAULT_TTL, reached_version
from fsm.ops.timers import index_timers
from fsm.ops.validate import is_reserved
from fsm.records import HistoryEntry, SaveStatus, SessionView
from fsm.snapshot import Snapshot, decode_snapshot, encode_snapshot
from fsm.store import Store, operator_store

FORMAT = "convo-fsm-backup"
FORMAT_VERSION = 1


class BackupError(FsmError):
    """A backup file that cannot be read (not a backup, a newer format, a broken line)."""


class _Header(msgspec.Struct, forbid_unknown_fields=False):
    format: str
    format_version: int
    created_at: float = 0.0


class Entry(msgspec.Struct, omit_defaults=True):
    """One session in a backup file."""

    user: str
    version: int
    ttl: float | None = None
    payload: bytes | None = None  # the snapshot as stored (valid sessions)
    raw: bytes | None = None  # the bytes as stored (sessions that do not decode)
    corrupt: str | None = None
    newer: bool = False  # written by newer code (a newer schema): restored byte for byte
    history: list[HistoryEntry] | None = None  # oldest first

    def __repr__(self) -> str:  # payloads hold tokens
        return f"Entry(user={self.user!r}, version={self.version}, corrupt={self.corrupt!r})"


class _End(msgspec.Struct):
    end: bool
    sessions: int
    corrupt: int = 0


@dataclass
class BackupReport:
    sessions: int = 0
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (user, reason)
    history_unreadable: list[tuple[str, str]] = field(default_factory=list)  # (user, reason)


_encoder = msgspec.json.Encoder()


def backup(
    store: Store,
    out: IO[bytes],
    *,
    clock: Clock,
    batch: int = 500,
    progress: Callable[[Entry], None] | None = None,
) -> BackupReport:
    """Write every session of ``store`` to ``out`` (a binary file), as the scan goes."""
    store = operator_store(store)
    report = BackupReport()
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_at": clock.now()}
    out.write(_encoder.encode(header) + b"\n")
    for view in store.sessions(batch=batch):
        if is_reserved(view.user_key):
            continue
        entry = _with_history(store, _entry(view), report)
        if entry.corrupt is None:
            report.sessions += 1
        else:
            report.corrupt.append((view.user_key, entry.corrupt))
        out.write(_encoder.encode(entry) + b"\n")
        if progress is not None:
            progress(entry)
    end = _End(True, report.sessions, len(report.corrupt))
    out.write(_encoder.encode(end) + b"\n")
    return report


def _with_history(store: Store, entry: Entry, report: BackupReport) -> Entry:
    """``entry`` with the user's history, oldest first; without it (reported) if the history
    does not decode: the session is backed up all the same."""
    try:
        history = store.history(entry.user)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
        report.history_unreadable.append((entry.user, str(exc)))
        return entry
    return msgspec.structs.replace(entry, history=history[::-1]) if history else entry


def _entry(view: SessionView) -> Entry:
    """A session as a backup entry: its bytes as ``payload`` if they are a snapshot of the
    stored version (or one written by newer code, kept as is), else as ``raw`` with why."""
    record = view.record
    reason = view.error
    if not reason:
        try:
            snapshot = decode_snapshot(record.payload, user_key=view.user_key)
        except SchemaTooNew:
            if record.version >= 1:  # valid, only not ours to read: restored unchanged
                return Entry(view.user_key, record.version, view.ttl, record.payload, newer=True)
            reason = "written by newer code, stored without a version"
        except CorruptSnapshot as exc:
            reason = exc.detail
        else:
            if snapshot.version == record.version >= 1:
                return Entry(view.user_key, record.version, view.ttl, payload=record.payload)
            reason = f"snapshot version {snapshot.version} != stored version {record.version}"
    return Entry(view.user_key, record.version, view.ttl, raw=record.payload, corrupt=reason)


@contextlib.contextmanager
def private_file(path: Path) -> Iterator[IO[bytes]]:
    """A new file readable by its owner only (0600), written under a temporary name and
    renamed into place when the block succeeds, so a failed backup never looks complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Restored(enum.Enum):
    RESTORED = "restored"  # written (nothing stored, or the stored version was older)
    UNCHANGED = "unchanged"  # the store holds exactly this already
    SKIPPED_NEWER = "skipped-newer"  # the store holds a newer (or diverged) version
    OVERWRITTEN = "overwritten"  # ... and it was overwritten (``overwrite=True``)
    BUSY = "busy"  # a worker held the lease, or the session kept changing
    CORRUPT = "corrupt"  # kept in the file as raw bytes; not restored


@dataclass
class RestoreReport:
    counts: Counter[Restored] = field(default_factory=Counter)
    skipped: list[tuple[str, Restored, str]] = field(default_factory=list)
    complete: bool = False  # the file's end line was read
    entries: int = 0
    history: int = 0  # history entries appended
    history_refused: str = ""  # why the store took none (it cannot import history)


def read_backup(lines: IO[bytes]) -> Iterator[Entry | _End]:
    """The entries of a backup file (and its end line), checking the header first."""
    first = lines.readline()
    try:
        header = msgspec.json.decode(first, type=_Header)
    except msgspec.DecodeError:
        raise BackupError("not a convo-fsm backup file (bad first line)") from None
    if header.format != FORMAT:
        raise BackupError(f"not a convo-fsm backup file (format {header.format!r})")
    if header.format_version > FORMAT_VERSION:
        raise BackupError(
            f"backup format {header.format_version} is newer than this code reads "
            f"({FORMAT_VERSION})"
        )
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        try:
            value: Any = msgspec.json.decode(line)
            if isinstance(value, dict) and value.get("end") is True:
                yield msgspec.convert(value, _End)
            else:
                yield msgspec.convert(value, Entry)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BackupError(f"line {number}: {exc}") from None


def restore(
    store: Store,
    lines: IO[bytes],
    *,
    clock: Clock,
    overwrite: bool = False,
    dry_run: bool = False,
    source: str = "fsm restore",
    progress: Callable[[Entry, Restored], None] | None = None,
) -> RestoreReport:
    """Write the sessions of a backup back by compare-and-set, each with the TTL it had left.

    A session the store holds in the same or a newer version is kept (``skipped-newer``), or
    with ``overwrite`` replaced. A snapshot goes back byte for byte unless the user's
    conversation already reached its version (a newer session, or a history above it after
    the session expired): then it is written one version above all of that, so no worker
    holding a later version can write over the restore, and versions never go backwards.
    Bytes another program left in the slot are moved to the quarantine, not overwritten."""
    store = operator_store(store)
    report = RestoreReport()
    try:
        _restore_all(store, lines, report, clock, overwrite, dry_run, source, progress)
    except BackupError as exc:
        done = ", ".join(f"{n} {o.value}" for o, n in report.counts.items() if n) or "none"
        raise BackupError(f"{exc} (entries before it were processed: {done})") from None
    return report


def _restore_all(
    store: Store,
    lines: IO[bytes],
    report: RestoreReport,
    clock: Clock,
    overwrite: bool,
    dry_run: bool,
    source: str,
    progress: Callable[[Entry, Restored], None] | None,
) -> None:
    for item in read_backup(lines):
        if isinstance(item, _End):
            report.complete = True
            break
        report.entries += 1
        outcome, why = _restore_one(store, item, clock, overwrite, dry_run, source, report)
        report.counts[outcome] += 1
        if outcome in (Restored.SKIPPED_NEWER, Restored.BUSY, Restored.CORRUPT):
            report.skipped.append((item.user, outcome, why))
        if progress is not None:
            progress(item, outcome)


#: The longest TTL a backup entry may carry (ten years): anything above is a damaged file.
MAX_TTL = 10 * 365 * 24 * 3600.0


def _same_state(payload: bytes, version: int, entry: Entry, snapshot: Snapshot | None) -> bool:
    """The store holds this entry already: the same bytes, or (after a restore that continued
    the version chain) the same snapshot at the stored version. Restoring twice changes
    nothing."""
    if (version, payload) == (entry.version, entry.payload):
        return True
    if snapshot is None or version <= entry.version:
        return False
    return payload == encode_snapshot(msgspec.structs.replace(snapshot, version=version))


def _import_history(store: Store, entry: Entry, report: RestoreReport) -> None:
    """Append the entry's history entries above the newest one the store has for the user."""
    if not entry.history or report.history_refused:
        return
    newest = store.history(entry.user, limit=1)
    above = newest[0].version if newest else 0
    missing = [h for h in entry.history if h.version > above]
    if not missing:
        return
    try:
        report.history += store.import_history(entry.user, missing)
    except NotImplementedError as exc:
        report.history_refused = str(exc)


def _restore_one(
    store: Store,
    entry: Entry,
    clock: Clock,
    overwrite: bool,
    dry_run: bool,
    source: str,
    report: RestoreReport,
) -> tuple[Restored, str]:
    if entry.payload is None:
        return Restored.CORRUPT, entry.corrupt or "no payload"
    if entry.version < 1:
        return Restored.CORRUPT, f"version {entry.version} < 1"
    if entry.ttl is not None and not 0 <= entry.ttl <= MAX_TTL:
        return Restored.CORRUPT, f"ttl {entry.ttl!r} out of range"
    snapshot: Snapshot | None = None
    try:  # the entry's own "newer" flag is not trusted: what decodes is restored as such
        snapshot = decode_snapshot(entry.payload, user_key=entry.user)
    except SchemaTooNew:
        pass  # written by newer code: restored byte for byte, never re-encoded
    except FsmError as exc:
        return Restored.CORRUPT, str(exc)
    if snapshot is not None and snapshot.version != entry.version:
        return Restored.CORRUPT, f"snapshot version {snapshot.version} != {entry.version}"
    ttl = entry.ttl if entry.ttl is not None and entry.ttl > 0 else DEFAULT_TTL
    for _ in range(3):
        current = store.session_view(entry.user)
        if current is not None and current.error:
            return Restored.BUSY, f"{current.error}; delete the key by hand to restore it"
        stored = current.record if current is not None else None
        if stored is not None and _same_state(stored.payload, stored.version, entry, snapshot):
            return Restored.UNCHANGED, ""
        floor = reached_version(store, entry.user, stored.version if stored else 0)
        payload, version = entry.payload, entry.version
        outcome = Restored.RESTORED
        if stored is not None and stored.version >= entry.version:
            if not overwrite:
                return (
                    Restored.SKIPPED_NEWER,
                    f"stored version {stored.version} >= backup's {entry.version}",
                )
            outcome = Restored.OVERWRITTEN
        if floor >= entry.version:
            # Continue the version chain above everything this user's conversation reached,
            # so a worker holding a later version can never write over the restore.
            if snapshot is None:
                return (
                    Restored.SKIPPED_NEWER,
                    "written by newer code: it cannot be re-versioned above "
                    f"version {floor} by this code",
                )
            version = floor + 1
            payload = encode_snapshot(
                msgspec.structs.replace(snapshot, version=version), user_key=entry.user
            )
        if dry_run:
            return outcome, "dry run"
        expected, tag = (stored.version, stored.tag) if stored is not None else (0, "")
        if stored is not None and stored.version == 0:
            # Bytes some other program wrote: kept in the quarantine, not overwritten.
            if store.quarantine(entry.user, stored.payload, "fsm restore: replaced") is None:
                continue
            expected, tag = 0, ""
        index_timers(store, entry.user, snapshot, clock.now())
        _import_history(store, entry, report)
        result = store.save(
            entry.user,
            payload,
            version=version,
            expected_version=expected,
            expected_tag=tag,
            ttl=ttl,
            history=HistoryEntry(
                version=version,
                from_stage="",
                to_stage=snapshot.stage if snapshot is not None else "?",
                event="restore",
                update_from=source,
                at=clock.now(),
                to_step=snapshot.step if snapshot is not None else "",
            ),
        )
        if result.status is SaveStatus.SAVED:
            return outcome, "" if version == entry.version else f"as version {version}"
        if result.status is SaveStatus.LOCKED:
            return Restored.BUSY, "a worker holds the user's lease"
    return Restored.BUSY, "the session kept changing"
