"""`fsm backup` / `fsm restore`: byte-identical round trips across store kinds, TTLs, newer
sessions, corrupt sessions, truncated files, secrets."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import msgspec
import pytest

from adapters import RedisStore
from fsm import Snapshot
from fsm.ops.backup import BackupError, Restored, backup, read_backup, restore
from fsm.snapshot import SCHEMA_VERSION, encode_snapshot
from tests.ops.conftest import ALICE, BOB, CAROL, DAVE, STRANGER, Ops, make_ops


def _population(ops: Ops) -> None:
    ops.say(ALICE, "hi", "1", "5")
    ops.say(BOB, "hi")
    ops.say(CAROL, "hi", "2")
    ops.say(STRANGER, "hi", "Register", "Tendai")


def _sessions(ops: Ops) -> dict[str, tuple[int, bytes]]:
    return {v.user_key: (v.record.version, v.record.payload) for v in ops.store.sessions()}


def _entries(path: Path) -> dict[str, tuple[int, bytes]]:
    with path.open("rb") as lines:
        return {
            e.user: (e.version, e.payload or b"")
            for e in read_backup(lines)
            if not hasattr(e, "end") and e.payload is not None  # type: ignore[union-attr]
        }


def test_round_trip_redis_file_memory_file_cluster_is_byte_identical(tmp_path: Path) -> None:
    first, second = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    for ops in make_ops("redis"):
        _population(ops)
        original = _sessions(ops)
        ttls = {u: ops.store.ttl(u) for u in original}
        assert ops.fsm("backup", "-o", str(first)).exit_code == 0
    for memory in make_ops("memory"):
        result = memory.fsm("restore", str(first))
        assert result.exit_code == 0, result.output
        assert "4 restored" in result.stdout
        assert _sessions(memory) == original
        for user, ttl in ttls.items():
            assert ttl is not None and memory.store.ttl(user) == pytest.approx(ttl, abs=2)
        assert memory.fsm("backup", "-o", str(second)).exit_code == 0
    assert _entries(second) == _entries(first) == original
    for cluster in make_ops("redis-cluster"):
        assert cluster.fsm("restore", str(second)).exit_code == 0
        assert _sessions(cluster) == original
        assert cluster.say(ALICE, "/menu").stage == "menu"  # the restored bot goes on


def _history(ops: Ops, user: str) -> list[tuple[int, str, str]]:
    return [(h.version, h.event, h.to_stage) for h in ops.store.history(user)]


def test_history_travels_with_the_sessions_once(tmp_path: Path) -> None:
    path = tmp_path / "backup.jsonl"
    for ops in make_ops("redis"):
        _population(ops)
        before = {user: _history(ops, user) for user in (ALICE, BOB, CAROL, STRANGER)}
        assert all(before.values())
        assert ops.fsm("backup", "-o", str(path)).exit_code == 0
    with path.open("rb") as lines:
        kept = {e.user: e.history for e in read_backup(lines) if hasattr(e, "user")}
    assert {
        u: [(h.version, h.event, h.to_stage) for h in hs or []][::-1] for u, hs in kept.items()
    } == before
    for memory in make_ops("memory"):
        result = memory.fsm("restore", str(path))
        assert result.exit_code == 0, result.output
        appended = sum(len(h) for h in before.values())
        assert f"{appended} history entr(ies) appended" in result.stdout
        for user, old in before.items():
            version = old[0][0]
            assert _history(memory, user) == [(version, "restore", old[0][2]), *old]
        again = memory.fsm("restore", str(path))  # nothing twice
        assert again.exit_code == 0 and "history" not in again.stdout, again.output
        assert all(len(_history(memory, u)) == len(old) + 1 for u, old in before.items())


def test_a_store_that_cannot_import_history_still_restores_and_warns(
    ops: Ops, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "backup.jsonl"
    _population(ops)
    assert ops.fsm("backup", "-o", str(path)).exit_code == 0
    for memory in make_ops("memory"):

        def refuse(user_key: str, entries: object) -> int:
            raise NotImplementedError("OldStore cannot import history entries")

        monkeypatch.setattr(memory.store, "import_history", refuse)
        result = memory.fsm("restore", str(path))
        assert result.exit_code == 0, result.output
        assert "4 restored" in result.stdout
        assert "history not restored: OldStore cannot import" in result.stderr
        assert [e for _v, e, _s in _history(memory, ALICE)] == ["restore"]


def test_backup_file_is_private_and_says_so(ops_all: Ops, tmp_path: Path) -> None:
    _population(ops_all)
    out = tmp_path / "b.jsonl"
    result = ops_all.fsm("backup", "-o", str(out))
    assert result.exit_code == 0
    assert f"backed up 4 session(s) to {out}" in result.stdout
    assert "holds every user's API token" in result.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["b.jsonl"]  # no temporary file left
    token = ops_all.snapshot(ALICE).auth.token  # type: ignore[union-attr]
    assert token not in result.output
    lines = out.read_bytes().splitlines()
    assert json.loads(lines[0])["format"] == "convo-fsm-backup"
    assert json.loads(lines[-1]) == {"end": True, "sessions": 4, "corrupt": 0}


def test_a_corrupt_session_mid_backup_is_kept_reported_and_not_restored(
    ops: Ops, tmp_path: Path
) -> None:
    _population(ops)
    ops.put(DAVE, b"\xc1 not a snapshot")
    out = tmp_path / "b.jsonl"
    result = ops.fsm("backup", "-o", str(out))
    assert result.exit_code == 0
    assert f"corrupt: {DAVE}:" in result.stderr and "1 corrupt kept as raw bytes" in result.stdout
    with out.open("rb") as lines:
        [kept] = [e for e in read_backup(lines) if getattr(e, "user", None) == DAVE]
    assert kept.raw == b"\xc1 not a snapshot" and kept.corrupt  # type: ignore[union-attr]
    for memory in make_ops("memory"):
        restored = memory.fsm("restore", str(out), "--json")
        report = json.loads(restored.stdout)
        assert report["restored"] == 4 and report["corrupt"] == 1 and report["complete"]
        assert memory.store.load(DAVE).record is None


def test_restore_keeps_newer_sessions_unless_overwrite(ops: Ops, tmp_path: Path) -> None:
    _population(ops)
    out = tmp_path / "b.jsonl"
    ops.fsm("backup", "-o", str(out))
    backed_up = _sessions(ops)
    ops.say(ALICE, "/menu")  # newer than the backup
    ops.store.delete(BOB)  # lost since
    newer = _sessions(ops)[ALICE]
    dry = ops.fsm("restore", str(out), "--dry-run")
    assert dry.exit_code == 0 and "dry run: 1 restored, 2 unchanged, 1 skipped-newer" in dry.stdout
    assert _sessions(ops)[ALICE] == newer and BOB not in _sessions(ops)
    result = ops.fsm("restore", str(out))
    assert result.exit_code == 0 and "1 restored, 2 unchanged, 1 skipped-newer" in result.stdout
    assert f"skipped-newer: {ALICE}: stored version {newer[0]} >= backup's" in result.stderr
    assert _sessions(ops)[ALICE] == newer
    # Bob's conversation had reached the backed-up version before it was deleted: the restore
    # continues above it (same state, next version), never going back.
    bob_version, bob_payload = _sessions(ops)[BOB]
    assert bob_version == backed_up[BOB][0] + 1
    assert msgspec.msgpack.decode(bob_payload)[:7] == msgspec.msgpack.decode(backed_up[BOB][1])[:7]
    forced = ops.fsm("restore", str(out), "--overwrite")
    assert forced.stdout.strip() == "3 unchanged, 1 overwritten"  # Bob: same state, above
    version, payload = _sessions(ops)[ALICE]
    assert version == newer[0] + 1  # above the newer one: a worker holding it cannot win
    old = msgspec.msgpack.decode(backed_up[ALICE][1])
    assert msgspec.msgpack.decode(payload)[:7] == old[:7]  # the backup's state, re-versioned
    assert ops.store.history(ALICE, limit=1)[0].event == "restore"


def test_restore_skips_a_locked_session_and_exits_1(ops: Ops, tmp_path: Path) -> None:
    _population(ops)
    out = tmp_path / "b.jsonl"
    ops.fsm("backup", "-o", str(out))
    ops.store.delete(CAROL)
    assert ops.store.acquire_lock(CAROL, "worker", 30.0)
    result = ops.fsm("restore", str(out))
    assert result.exit_code == 1 and f"busy: {CAROL}: a worker holds" in result.stderr


def test_a_truncated_backup_restores_what_it_holds_and_exits_1(ops: Ops, tmp_path: Path) -> None:
    _population(ops)
    out = tmp_path / "b.jsonl"
    ops.fsm("backup", "-o", str(out))
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"\n".join(out.read_bytes().splitlines()[:3]) + b"\n")
    for memory in make_ops("memory"):
        result = memory.fsm("restore", str(cut))
        assert result.exit_code == 1 and "is truncated" in result.stderr
        assert len(_sessions(memory)) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello\n", "not a convo-fsm backup file"),
        (b'{"format": "other", "format_version": 1}\n', "format 'other'"),
        (b'{"format": "convo-fsm-backup", "format_version": 9}\n', "newer than this code"),
        (b'{"format": "convo-fsm-backup", "format_version": 1}\n{"user": 5}\n', "line 2"),
    ],
)
def test_restore_refuses_a_file_that_is_not_a_backup(
    ops: Ops, tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    result = ops.fsm("restore", str(bad))
    assert result.exit_code == 1 and message in result.stderr
    with pytest.raises(BackupError):
        restore(ops.store, io.BytesIO(content), clock=ops.clock)


def test_backup_to_a_missing_folder_is_a_usage_error(ops: Ops, tmp_path: Path) -> None:
    result = ops.fsm("backup", "-o", str(tmp_path / "nope" / "b.jsonl"))
    assert result.exit_code == 2 and "does not exist" in result.output


def test_backup_streams_without_holding_the_store(ops: Ops) -> None:
    for n in range(120):
        ops.say(f"2637755{n:05d}", "hi")
    seen: list[str] = []
    out = io.BytesIO()
    report = backup(
        ops.store, out, clock=ops.clock, batch=7, progress=lambda e: seen.append(e.user)
    )
    assert report.sessions == 120 and len(seen) == len(set(seen)) == 120
    restored = restore(ops.store, io.BytesIO(out.getvalue()), clock=ops.clock)
    assert restored.counts[Restored.UNCHANGED] == 120 and restored.complete


def test_restore_never_takes_a_version_backwards(ops: Ops, tmp_path: Path) -> None:
    ops.say(BOB, "hi")
    out = tmp_path / "b.jsonl"
    ops.fsm("backup", "-o", str(out))
    ops.say(BOB, "9", "9", "9")  # on to version 4
    reached = ops.snapshot(BOB).version
    ops.store.delete(BOB)  # lost (expired, deleted)
    assert ops.fsm("restore", str(out)).exit_code == 0
    assert ops.snapshot(BOB).version == reached + 1
    ops.say(BOB, "9")
    versions = [h.version for h in ops.store.history(BOB)]
    assert versions == sorted(set(versions), reverse=True)  # no number reused
    assert ops.engine.stats["version_regressions"] == 0


def test_sessions_of_newer_code_and_foreign_bytes_survive_a_round_trip(
    ops: Ops, tmp_path: Path
) -> None:
    snap = ops.say(CAROL, "hi")
    fields = list(msgspec.msgpack.decode(msgspec.msgpack.encode(snap)))
    fields[Snapshot.__struct_fields__.index("schema")] = SCHEMA_VERSION + 1  # newer code's format
    newer = msgspec.msgpack.encode(fields)
    ops.put(CAROL, newer, version=snap.version)
    ops.put(DAVE, encode_snapshot(msgspec.structs.replace(snap, version=7)), version=3)  # mismatch
    out = tmp_path / "b.jsonl"
    result = ops.fsm("backup", "-o", str(out))
    assert (
        "backed up 1 session(s)" in result.stdout and "1 corrupt kept as raw bytes" in result.stdout
    )
    assert "snapshot version 7 != stored version 3" in result.stderr
    for memory in make_ops("memory"):
        restored = memory.fsm("restore", str(out), "--json")
        report = json.loads(restored.stdout)
        assert restored.exit_code == 1  # an entry could not be restored: said, and status 1
        assert (report["restored"], report["corrupt"]) == (1, 1)
        assert memory.store.load(CAROL).record.payload == newer  # type: ignore[union-attr]


def test_restore_keeps_foreign_bytes_in_the_quarantine(tmp_path: Path) -> None:
    for ops in make_ops("redis"):  # bytes written by another program: Redis reads version 0
        assert isinstance(ops.store, RedisStore)
        ops.say(ALICE, "hi")
        out = tmp_path / "b.jsonl"
        ops.fsm("backup", "-o", str(out))
        ops.store.client.set(ops.store.layout.session(ALICE), b'{"stage": "MENU"}')
        result = ops.fsm("restore", str(out))
        assert result.exit_code == 0 and "1 restored" in result.stdout
        [kept] = ops.store.quarantined(ALICE)
        assert kept.raw == b'{"stage": "MENU"}' and kept.reason == "fsm restore: replaced"
        assert ops.snapshot(ALICE).stage == "menu"


def test_a_bad_line_mid_file_says_what_was_done_before_it(ops: Ops, tmp_path: Path) -> None:
    ops.say(ALICE, "hi")
    ops.say(BOB, "hi")
    out = tmp_path / "b.jsonl"
    ops.fsm("backup", "-o", str(out))
    lines = out.read_bytes().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"\n".join([lines[0], lines[1], b"{not json", *lines[2:]]) + b"\n")
    result = ops.fsm("restore", str(broken))
    assert result.exit_code == 1
    assert (
        "line 3" in result.stderr
        and "entries before it were processed: 1 unchanged" in result.stderr
    )


def test_a_history_that_does_not_decode_leaves_the_session_backed_up(tmp_path: Path) -> None:
    path = tmp_path / "backup.jsonl"
    for ops in make_ops("redis"):
        _population(ops)
        assert isinstance(ops.store, RedisStore)
        history_key = ops.store.layout.keys(ALICE)[1]
        ops.store.client.lpush(history_key, b"00000000\xc1 not msgpack")  # another program's
        result = ops.fsm("backup", "-o", str(path))
        assert result.exit_code == 0, result.output
        assert f"history not backed up: {ALICE}:" in result.stderr
        assert _entries(path) == _sessions(ops)  # every session is in the file
        with path.open("rb") as lines:
            kept = {e.user: e.history for e in read_backup(lines) if hasattr(e, "user")}
        assert kept[ALICE] is None and kept[BOB]
