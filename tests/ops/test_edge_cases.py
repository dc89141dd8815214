"""Edge cases of the operator's toolkit: secrets in odd places, keys of the wrong type, a
server without KEYS, unreachable Cluster and Sentinel, recovery racing the bot."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import msgspec
import pytest
import redis

from adapters import MemoryStore, RedisStore
from fsm.clock import SYSTEM_CLOCK
from fsm.ops.prometheus import store_registry
from fsm.ops.recover import Outcome, recover_session, salvage_auth
from fsm.records import Record
from tests import redis_servers
from tests.ops.conftest import ALICE, BOB, CAROL, Ops, make_ops, schema_1
from tests.ops.test_monitor import _fsm
from tests.support import check_rows

FAKE_JWT = jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256")


def test_quarantine_show_hides_secrets_in_json_and_text(ops: Ops) -> None:
    ops.put(ALICE, b'{"password": "hunter2", "api_key": "sk_live_abc123", "stage": "MENU"}')
    ops.put(BOB, b"user=bob password=hunter2 token: " + FAKE_JWT.encode() + b"; x=1")
    assert ops.fsm("recover", "--all").exit_code == 0
    for user in (ALICE, BOB):
        [entry] = ops.store.quarantined(user)
        for args in ([], ["--json"]):
            out = ops.fsm("quarantine", "show", entry.id, *args).output
            assert "hunter2" not in out and "sk_live" not in out and FAKE_JWT not in out
            assert "<redacted>" in out
        shown = ops.fsm("quarantine", "show", entry.id, "--show-secrets").output
        assert "hunter2" in shown
    info = json.loads(
        ops.fsm("quarantine", "show", next(ops.store.quarantined(ALICE)).id, "--json").stdout
    )
    assert info["content"] == {"password": "<redacted>", "api_key": "<redacted>", "stage": "MENU"}


def test_inspect_hides_a_jwt_kept_under_any_key(ops: Ops) -> None:
    snap = ops.say(ALICE, "hi")
    data = {**snap.data, "note": f"Bearer {FAKE_JWT}", "headers": {"X-Thing": FAKE_JWT}}
    ops.put(
        ALICE,
        msgspec.msgpack.encode(msgspec.structs.replace(snap, data=data, version=snap.version + 1)),
    )
    out = ops.fsm("inspect", ALICE, "--json").stdout
    assert FAKE_JWT not in out
    info = json.loads(out)
    assert info["data"]["note"] == "Bearer <redacted>"
    assert info["data"]["headers"] == {"X-Thing": "<redacted>"}
    assert FAKE_JWT in ops.fsm("inspect", ALICE, "--json", "--show-secrets").stdout


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("accessToken", True),
        ("api_key", True),
        ("PIN", True),
        ("shipping", False),
        ("footprint", False),
        ("topic", False),
    ],
)
def test_secret_keys_are_whole_words(key: str, secret: bool) -> None:
    from fsm.ops.sessions import is_secret_key

    assert is_secret_key(key) is secret


def test_recover_keeps_the_token_of_a_broken_schema_1_map(ops: Ops) -> None:
    snap = ops.say(ALICE, "hi")
    ops.put(ALICE, schema_1(snap, data="not a dict", version=snap.version + 1))
    assert salvage_auth(ops.store.load(ALICE).record.payload) == snap.auth  # type: ignore[union-attr]
    result = recover_session(ops.store, ops.engine.spec, ALICE, clock=ops.clock)
    assert result.outcome is Outcome.RECOVERED and result.kept_token
    assert ops.snapshot(ALICE).auth == snap.auth


@pytest.fixture
def memory_ops() -> Iterator[Ops]:
    yield from make_ops("memory")


def test_a_message_during_recovery_waits_for_it_and_keeps_the_token(memory_ops: Ops) -> None:
    ops = memory_ops
    snap = ops.say(ALICE, "hi")
    bad = msgspec.msgpack.decode(msgspec.msgpack.encode(snap))
    bad[1] = "vault"
    ops.put(ALICE, msgspec.msgpack.encode(bad), version=snap.version + 1)
    store = ops.store
    assert isinstance(store, MemoryStore)
    replies: list[Any] = []
    threads: list[threading.Thread] = []
    original = store.quarantine

    def quarantine_while_a_message_arrives(user: str, raw: bytes, reason: str) -> str | None:
        moved = original(user, raw, reason)
        worker = threading.Thread(target=lambda: replies.append(ops.engine.handle(ALICE, "9")))
        worker.start()
        time.sleep(0.2)  # the message is in flight while the repair is not written yet
        threads.append(worker)
        return moved

    store.quarantine = quarantine_while_a_message_arrives  # type: ignore[method-assign]
    result = recover_session(store, ops.engine.spec, ALICE, clock=ops.clock)
    for t in threads:
        t.join(timeout=30)
    assert result.outcome is Outcome.RECOVERED and result.kept_token
    [reply] = replies  # the message waited for the lease, then applied on the repair
    assert reply.snapshot.version == result.version + 1
    assert reply.snapshot.auth == snap.auth
    assert [h.event for h in store.history(ALICE, limit=2)][1] == "recover"


def test_quarantine_restore_refuses_bytes_the_flow_still_does_not_have(ops: Ops) -> None:
    snap = ops.say(CAROL, "hi")
    bad = msgspec.msgpack.decode(msgspec.msgpack.encode(snap))
    bad[1] = "vault"
    ops.put(CAROL, msgspec.msgpack.encode(bad), version=snap.version + 1)
    assert ops.fsm("recover", CAROL).exit_code == 0
    [entry] = ops.store.quarantined(CAROL)
    result = ops.fsm("quarantine", "restore", entry.id, "--replace")
    assert result.exit_code == 1 and "still invalid for flow 'credex'" in result.stderr
    assert "unknown stage 'vault'" in result.stderr
    assert [e.id for e in ops.store.quarantined(CAROL)] == [entry.id]


@pytest.fixture
def wrong_type() -> Iterator[Ops]:
    for ops in make_ops("redis"):
        assert isinstance(ops.store, RedisStore)
        ops.say(ALICE, "hi")
        ops.say(CAROL, "hi")
        ops.store.client.hset(ops.store.layout.session(BOB), "stage", "menu")
        yield ops


def test_a_key_of_the_wrong_type_is_reported_not_fatal(wrong_type: Ops, tmp_path: Any) -> None:
    ops = wrong_type
    listed = ops.fsm("ls", "--json")
    assert listed.exit_code == 0
    rows = {r["user"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert set(rows) == {ALICE, BOB, CAROL} and rows[BOB]["valid"] is False
    check = ops.fsm("check", "--json")
    [row] = check_rows(check.stdout)
    assert check.exit_code == 1 and row["user"] == BOB and "WRONGTYPE" in row["reason"]
    backup = ops.fsm("backup", "-o", str(tmp_path / "b.jsonl"))
    assert backup.exit_code == 0 and "backed up 2 session(s)" in backup.stdout
    assert "WRONGTYPE" in backup.stderr
    recover = ops.fsm("recover", BOB)
    assert recover.exit_code == 1 and "delete the key by hand" in recover.stdout
    assert ops.fsm("metrics", "--json").exit_code == 0
    assert ops.fsm("inspect", BOB).exit_code == 0


def test_nothing_needs_keys(tmp_path: Any) -> None:
    server = redis_servers.RedisServer(name="nokeys").start(
        config=["--rename-command", "KEYS", "KEYS_disabled_for_this_test"]
    )
    try:
        client = server.client()
        with pytest.raises(Exception, match="unknown command"):
            client.keys("*")
        client.close()
        store = RedisStore.from_url(server.url, namespace="nokeys")
        for n in range(30):
            store.save(f"u{n}", b"x", version=1, expected_version=0, ttl=60)
        args = ["--store", server.url, "--namespace", "nokeys"]
        flow = ["--flow", "flows.credex.flow:CredexBot"]  # not one session tells (none decodes)
        for command in (
            ["ls", *flow],
            ["check", *flow],
            ["metrics"],
            ["migrate", *flow],
            ["backup", "-o", str(tmp_path / "b")],
        ):
            proc = _fsm(*command, *args)
            assert proc.returncode in (0, 1), (command, proc.stderr)
            assert "unknown command" not in proc.stderr
        assert _fsm("ls", *flow, *args).stderr.strip() == "30 session(s)"
        store.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "url", ["redis+cluster://127.0.0.1:{port}", "redis+sentinel://127.0.0.1:{port}/mymaster"]
)
def test_an_unreachable_cluster_or_sentinel_is_status_2(url: str) -> None:
    target = url.format(port=redis_servers.free_port())
    proc = _fsm("ls", "--store", target)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot reach the store at")
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 400
    health = _fsm("health", "--json", "--store", target)
    assert health.returncode == 1 and json.loads(health.stdout)["healthy"] is False


def test_the_store_registry_scans_only_when_scraped(ops: Ops) -> None:
    from prometheus_client import generate_latest

    ops.say(ALICE, "hi")
    scans = 0
    original = ops.store.sessions

    def counted(**kw: Any) -> Any:
        nonlocal scans
        scans += 1
        return original(**kw)

    ops.store.sessions = counted  # type: ignore[method-assign]
    registry = store_registry(ops.store)
    assert scans == 0
    generate_latest(registry)
    assert scans == 1


def test_health_leaves_no_key_behind(ops: Ops) -> None:
    from fsm.ops.health import health_check

    assert health_check(ops.store).healthy
    if isinstance(ops.store, RedisStore):
        keys = list(ops.store.client.scan_iter(match=f"{ops.namespace}:*"))
        assert keys == []
    else:
        assert isinstance(ops.store, MemoryStore)
        assert not ops.store._sessions and not ops.store._locks


def test_a_cluster_in_trouble_is_store_unavailable_not_corrupt_sessions(tmp_path: Any) -> None:
    """CLUSTERDOWN (a slot without a node) is the store's trouble: the scan stops with
    StoreUnavailable; it never turns good sessions into "corrupt" entries of a backup."""
    from fsm.errors import StoreUnavailable
    from fsm.ops.backup import backup

    cluster = redis_servers.Cluster().start()
    try:
        store = RedisStore.from_url(cluster.url, namespace="down")
        users = [f"u{n}" for n in range(40)]
        for user in users:
            store.save(user, b"x", version=1, expected_version=0, ttl=600)
        victim = store.layout.session(users[0])
        slot = store.client.keyslot(victim)
        owner = store.client.get_node_from_key(victim)
        with redis.Redis(host=owner.host, port=owner.port) as node:
            node.execute_command("CLUSTER", "DELSLOTS", slot)
        with pytest.raises(StoreUnavailable):
            list(store.sessions())
        with pytest.raises(StoreUnavailable):
            backup(store, io.BytesIO(), clock=SYSTEM_CLOCK)
        store.close()
    finally:
        cluster.stop()


def test_recover_dry_run_agrees_with_recover(wrong_type: Ops) -> None:
    dry = wrong_type.fsm("recover", BOB, "--dry-run")
    real = wrong_type.fsm("recover", BOB)
    assert dry.exit_code == real.exit_code == 1
    assert "not-repairable" in dry.stdout and "not-repairable" in real.stdout
    assert wrong_type.fsm("recover", ALICE, "--dry-run").stdout.startswith(f"{ALICE}: valid")


def test_restoring_twice_changes_nothing_the_second_time(ops: Ops, tmp_path: Any) -> None:
    ops.say(ALICE, "hi")
    out = tmp_path / "b.jsonl"
    ops.fsm("backup", "-o", str(out))
    ops.say(ALICE, "1")  # on to offering a credex
    first = ops.fsm("restore", str(out), "--overwrite")
    assert "1 overwritten" in first.stdout
    version = ops.snapshot(ALICE).version
    second = ops.fsm("restore", str(out), "--overwrite")
    assert second.stdout.strip() == "1 unchanged" and ops.snapshot(ALICE).version == version
    assert ops.fsm("restore", str(out)).stdout.strip() == "1 unchanged"


def _backup_file(tmp_path: Any, *entries: dict[str, Any]) -> Any:
    path = tmp_path / "hand.jsonl"
    lines = [{"format": "convo-fsm-backup", "format_version": 1}, *entries]
    lines.append({"end": True, "sessions": len(entries)})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_restore_does_not_trust_what_an_entry_says_of_itself(ops: Ops, tmp_path: Any) -> None:
    import base64

    garbage = base64.b64encode(b"\x01garbage").decode()
    snap = ops.say(CAROL, "hi")
    good = base64.b64encode(ops.store.load(CAROL).record.payload).decode()  # type: ignore[union-attr]
    ops.store.delete(CAROL)
    path = _backup_file(
        tmp_path,
        {"user": ALICE, "version": 1, "payload": garbage, "newer": True},
        {"user": BOB, "version": 1, "ttl": 1e17, "payload": good},
        {"user": CAROL, "version": snap.version, "ttl": 100.0, "payload": good, "newer": True},
    )
    result = ops.fsm("restore", str(path), "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["corrupt"] == 2 and report["restored"] == 1
    why = {s["user"]: s["detail"] for s in report["skipped"]}
    assert "out of range" in why[BOB] and ALICE in why
    assert ops.store.load(ALICE).record is None and ops.store.load(BOB).record is None
    assert ops.snapshot(CAROL).stage == "menu"  # readable here, so restored as a snapshot


def test_deeply_nested_bytes_are_reported_not_a_traceback(ops: Ops) -> None:
    ops.put(ALICE, b"[" * 100_000)
    ops.put(BOB, b"\x91" * 5000 + b"\x90")
    check = ops.fsm("check", "--json")
    assert check.exit_code == 1
    assert {r["user"] for r in check_rows(check.stdout)} == {ALICE, BOB}
    for user in (ALICE, BOB):
        assert ops.fsm("inspect", user).exit_code == 0
        assert ops.fsm("recover", user).exit_code == 0
        [entry] = ops.store.quarantined(user)
        assert ops.fsm("quarantine", "show", entry.id).exit_code == 0


def test_another_flows_session_is_wrong_flow_whatever_its_version(ops: Ops) -> None:
    from fsm import Snapshot
    from fsm.ops.validate import Problem, diagnose
    from fsm.snapshot import encode_snapshot

    other = Snapshot(flow="other", stage="x", step="y", version=1, flow_version=99)
    found = diagnose(ALICE, Record(encode_snapshot(other), 1), ops.engine.spec, now=0)
    assert found.problem is Problem.WRONG_FLOW


def test_a_user_key_with_a_colon_keeps_a_readable_reason(ops: Ops) -> None:
    from fsm import Snapshot
    from fsm.snapshot import SCHEMA_VERSION

    fields = list(msgspec.msgpack.decode(msgspec.msgpack.encode(ops.say(ALICE, "hi"))))
    fields[Snapshot.__struct_fields__.index("schema")] = SCHEMA_VERSION + 1
    ops.put("a: b", msgspec.msgpack.encode(fields))
    [row] = check_rows(ops.fsm("check", "--json").stdout)
    assert row["reason"] == (
        f"snapshot schema {SCHEMA_VERSION + 1} is newer than this code supports "
        f"({SCHEMA_VERSION}); upgrade this worker"
    )
    metrics = json.loads(ops.fsm("metrics", "--json").stdout)
    assert metrics["newer_schema"] == 1 and metrics["unreadable"] == 0


def test_failed_store_calls_are_in_the_latency_histogram() -> None:
    from flows.credex import build_engine
    from fsm.errors import StoreUnavailable
    from tests.support import FailingSaves

    store = FailingSaves()
    engine = build_engine(store)
    engine.handle(ALICE, "hi")
    saves = engine.stats.latencies()["save"].count
    store.failing = -1
    with pytest.raises(StoreUnavailable):
        engine.handle(ALICE, "9")
    assert engine.stats.latencies()["save"].count > saves


def test_a_repair_that_cannot_be_written_says_where_the_bytes_are() -> None:
    from flows.credex import build_engine
    from tests.support import FailingSaves

    store = FailingSaves()
    engine = build_engine(store)
    snap = engine.handle(ALICE, "hi").snapshot
    bad = msgspec.msgpack.decode(msgspec.msgpack.encode(snap))
    bad[1] = "vault"
    assert store.save(
        ALICE,
        msgspec.msgpack.encode(bad),
        version=snap.version + 1,
        expected_version=snap.version,
        ttl=60,
    ).saved
    store.failing = 1
    result = recover_session(store, engine.spec, ALICE, clock=engine.clock)
    assert result.outcome is Outcome.FAILED and result.quarantine_id is not None
    assert f"fsm quarantine restore {result.quarantine_id}" in result.reason
    assert store.lock_info(ALICE) is None  # the lease was released
