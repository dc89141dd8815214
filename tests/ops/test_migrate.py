"""Schema and flow migrations: lazily on load, and in bulk with `fsm migrate`, while the bot
runs; on the memory store, Redis and a Redis Cluster."""

from __future__ import annotations

import functools
import json
import threading
import time

import msgspec
import pytest

from flows.credex import CredexBot
from fsm.migrations import MigrationError, schema_migration, schema_migrations, upgrade
from fsm.ops.migrate import Step, migrate_sessions
from fsm.snapshot import SCHEMA_VERSION, decode_snapshot, stored_schema
from tests.ops.conftest import ALICE, BOB, CAROL, DAVE, STRANGER, Ops, schema_1


def _old_session(ops: Ops, user: str) -> tuple[bytes, int]:
    """A signed-in user's session as the first release wrote it: schema 1 (a map) and flow
    version 1, in a "coming soon" placeholder step that flow version 2 replaced."""
    snap = ops.say(user, "hi")
    payload = schema_1(snap, stage="credex", step="soon", flow_version=1, version=snap.version + 1)
    ops.put(user, payload, version=snap.version + 1, ttl=900.0)
    return payload, snap.version + 1


def test_an_old_schema_and_flow_version_session_is_read_correctly(ops_all: Ops) -> None:
    ops = ops_all
    payload, version = _old_session(ops, ALICE)
    token = ops.snapshot(ALICE).auth
    assert stored_schema(payload) == 1
    listed = ops.fsm("ls").stdout  # shown as stored, and marked
    assert "credex.soon" in listed and "[older format: fsm migrate]" in listed
    info = json.loads(ops.fsm("inspect", ALICE, "--json").stdout)
    assert (info["stage"], info["step"], info["schema"], info["flow_version"]) == (
        "credex",
        "soon",
        1,
        1,
    )
    assert info["needs_migration"] and info["on_load"] == {"stage": "menu", "step": "dashboard"}
    turn = ops.engine.handle(ALICE, "hi")  # lazily: migrated on load, then the step runs
    assert (turn.snapshot.stage, turn.snapshot.step) == ("menu", "dashboard")
    assert turn.snapshot.flow_version == CredexBot.version
    assert turn.snapshot.schema == SCHEMA_VERSION
    assert turn.snapshot.version == version + 1 and turn.snapshot.auth == token
    assert list(ops.store.quarantined()) == []


def test_migrate_rewrites_old_sessions_in_place(ops_all: Ops) -> None:
    ops = ops_all
    _, version = _old_session(ops, ALICE)
    token = decode_snapshot(ops.store.load(ALICE).record.payload).auth  # type: ignore[union-attr]
    ops.say(BOB, "hi")  # current already
    ttl_before = ops.store.ttl(ALICE)
    result = ops.fsm("migrate")
    assert result.exit_code == 0, result.output
    assert "scanned 2: migrated 1, already current 1, busy 0, invalid 0" in result.stdout
    record = ops.store.load(ALICE).record
    assert record is not None and stored_schema(record.payload) == SCHEMA_VERSION
    snap = decode_snapshot(record.payload)
    assert (snap.stage, snap.step, snap.flow_version) == ("menu", "dashboard", CredexBot.version)
    assert record.version == snap.version == version + 1 and snap.auth == token
    ttl_after = ops.store.ttl(ALICE)
    assert ttl_before is not None and ttl_after is not None
    assert ttl_after <= ttl_before and ttl_after > ttl_before - 5  # kept, not refreshed
    moved = f"migrate schema 1->{SCHEMA_VERSION} flow 1->{CredexBot.version}"
    assert ops.store.history(ALICE, limit=1)[0].event == moved
    again = ops.fsm("migrate", "--json")
    assert json.loads(again.stdout)["migrated"] == 0  # idempotent


def test_migrate_dry_run_writes_nothing(ops: Ops) -> None:
    payload, _ = _old_session(ops, ALICE)
    result = ops.fsm("migrate", "--dry-run")
    assert result.exit_code == 0 and "would migrate 1" in result.stdout
    assert ops.store.load(ALICE).record.payload == payload  # type: ignore[union-attr]


def test_migrate_is_resumable(ops_all: Ops) -> None:
    ops = ops_all
    users = [f"2637700000{n:02d}" for n in range(1, 5)] + ["263771111111", "263772222222"]
    for user in users[:4]:
        _old_session(ops, user)
    for user in users[4:]:
        ops.say(user, "hi")
    first = json.loads(ops.fsm("migrate", "--limit", "2", "--json").stdout)
    assert first["migrated"] == 2  # stopped after two: an interrupted run
    second = json.loads(ops.fsm("migrate", "--json").stdout)
    assert second["migrated"] == 2 and second["current"] == 4
    schemas = {stored_schema(ops.store.load(u).record.payload) for u in users}  # type: ignore[union-attr]
    assert schemas == {SCHEMA_VERSION}


def test_a_corrupt_session_mid_migration_is_reported_skipped_and_kept(ops_all: Ops) -> None:
    ops = ops_all
    _old_session(ops, ALICE)
    _old_session(ops, CAROL)
    ops.put(STRANGER, b"\xc1 broken")
    result = ops.fsm("migrate")
    assert result.exit_code == 1
    assert "migrated 2" in result.stdout and "invalid 1" in result.stdout
    assert f"skipped {STRANGER}: invalid:" in result.stderr
    assert ops.store.load(STRANGER).record.payload == b"\xc1 broken"  # type: ignore[union-attr]
    assert list(ops.store.quarantined()) == []  # reported, not moved: fsm recover decides


def test_migrate_leaves_a_locked_session_for_the_next_run(ops: Ops) -> None:
    payload, _ = _old_session(ops, DAVE)
    assert ops.store.acquire_lock(DAVE, "worker", 30.0)
    report = migrate_sessions(ops.store, ops.engine.spec, clock=ops.clock)
    assert report.counts[Step.BUSY] == 1 and report.problems[0].user_key == DAVE
    assert ops.store.load(DAVE).record.payload == payload  # type: ignore[union-attr]
    ops.store.release_lock(DAVE, "worker")
    assert migrate_sessions(ops.store, ops.engine.spec, clock=ops.clock).counts[Step.MIGRATED] == 1


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_migrate_while_the_bot_handles_messages_loses_nothing(kind: str) -> None:
    from tests.ops.conftest import make_ops

    for ops in make_ops(kind):
        users = [f"2637733{n:05d}" for n in range(30)]
        for user in users:
            ops.say(user, "hi")  # strangers: registration
            record = ops.store.load(user).record
            assert record is not None
            snap = decode_snapshot(record.payload)
            ops.put(user, schema_1(snap, flow_version=1, version=snap.version + 1))
        stop = threading.Event()
        sent: dict[str, int] = {u: 0 for u in users[:10]}
        errors: list[BaseException] = []
        chat = functools.partial(_chat, ops, sent, stop, errors)
        worker = threading.Thread(target=chat)
        worker.start()
        deadline = time.monotonic() + 10
        while sum(sent.values()) < 20 and time.monotonic() < deadline:
            time.sleep(0.001)  # the bot is busy before the migration starts
        reports = [migrate_sessions(ops.store, ops.engine.spec, clock=ops.clock)]
        stop.set()
        worker.join(timeout=60)
        reports.append(migrate_sessions(ops.store, ops.engine.spec, clock=ops.clock))
        assert not errors
        for user in users:
            record = ops.store.load(user).record
            assert record is not None and stored_schema(record.payload) == SCHEMA_VERSION
            assert decode_snapshot(record.payload).flow_version == CredexBot.version
            history = ops.store.history(user)
            versions = [h.version for h in history if h.version > 2]  # 2: the setup's write
            # Every save of the bot and of the migration is in the chain, once, in order.
            assert versions == list(range(record.version, 2, -1))[:50]
        for user, n in sent.items():
            applied = [h for h in ops.store.history(user) if h.update_from == ops.engine.source]
            assert len(applied) >= min(n, 48)  # every message applied (history keeps 50)
        assert sum(r.counts[Step.INVALID] for r in reports) == 0


def _chat(
    ops: Ops, sent: dict[str, int], stop: threading.Event, errors: list[BaseException]
) -> None:
    try:
        for _ in range(40):  # bounded
            for user in sent:
                ops.engine.handle(user, "Register" if sent[user] % 2 else "cancel")
                sent[user] += 1
            if stop.is_set():
                return
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def test_the_schema_registry() -> None:
    assert set(schema_migrations()) == set(range(1, SCHEMA_VERSION))
    with pytest.raises(MigrationError, match="no migration from snapshot schema 0"):
        upgrade({"schema": 0}, 0)
    with pytest.raises(ValueError, match="already registered"):
        schema_migration(1)(lambda fields: fields)
    with pytest.raises(ValueError, match="start at 1"):
        schema_migration(0)(lambda fields: fields)


def test_a_schema_migration_that_fails_is_reported_not_applied() -> None:
    from fsm import migrations

    def broken(fields: dict[str, object]) -> dict[str, object]:
        raise KeyError("boom")

    saved = migrations._REGISTRY[1]
    migrations._REGISTRY[1] = broken
    try:
        raw = msgspec.msgpack.encode({"flow": "f", "stage": "s", "step": "x", "version": 1})
        with pytest.raises(Exception, match="migration from snapshot schema 1 failed: KeyError"):
            decode_snapshot(raw)
    finally:
        migrations._REGISTRY[1] = saved


def test_the_array_layout_of_the_current_schema_is_the_structs(ops: Ops) -> None:
    from fsm import Auth, Resume, Snapshot
    from fsm.snapshot import ARRAY_LAYOUTS

    names, nested = ARRAY_LAYOUTS[SCHEMA_VERSION]
    # Fields may only be appended (with defaults) within a schema: a layout is a prefix.
    assert Snapshot.__struct_fields__[: len(names)] == names
    assert Auth.__struct_fields__[: len(nested["auth"])] == nested["auth"]
    assert Resume.__struct_fields__[: len(nested["resume"])] == nested["resume"]


def test_a_future_schema_migrates_every_stored_session_of_todays(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the next format change will do: register today's -> the next, and every session
    written today is read through it (lazily, and by fsm migrate), not taken for corruption."""
    today, future = SCHEMA_VERSION, SCHEMA_VERSION + 1
    from fsm import migrations, snapshot

    snap = ops.say(ALICE, "hi")
    before = ops.store.load(ALICE).record
    assert before is not None

    def rename_dashboard(fields: dict[str, object]) -> dict[str, object]:
        data = dict(fields["data"])  # type: ignore[call-overload]
        data["summary"] = data.pop("dashboard", None)
        return {**fields, "data": data, "schema": future}

    monkeypatch.setattr(snapshot, "SCHEMA_VERSION", future)
    monkeypatch.setitem(migrations._REGISTRY, today, rename_dashboard)
    read = decode_snapshot(before.payload)
    assert read.schema == future and "summary" in read.data and "dashboard" not in read.data
    assert read.auth == snap.auth and read.version == snap.version
    assert stored_schema(before.payload) == today
    from fsm.ops.validate import diagnose

    found = diagnose(ALICE, before, ops.engine.spec, now=ops.clock.now())
    assert found.ok and found.needs_migration
    report = migrate_sessions(ops.store, ops.engine.spec, clock=ops.clock)
    assert report.counts[Step.MIGRATED] == 1
    after = ops.store.load(ALICE).record
    assert after is not None and stored_schema(after.payload) == future
    assert decode_snapshot(after.payload).data["summary"] == snap.data["dashboard"]


def test_a_dry_run_counts_a_locked_session_as_busy(ops: Ops) -> None:
    _old_session(ops, DAVE)
    assert ops.store.acquire_lock(DAVE, "worker", 30.0)
    report = json.loads(ops.fsm("migrate", "--dry-run", "--json").stdout)
    assert (report["busy"], report["migrated"]) == (1, 0)
