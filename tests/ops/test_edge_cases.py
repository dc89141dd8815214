"""Edge cases of the operator's toolkit: secrets in odd places, keys of the wrong type, a
server without KEYS, unreachable Cluster and Sentinel, recovery racing the bot."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import msgspec
import pytest

from adapters import MemoryStore, RedisStore
from fsm.ops.prometheus import store_registry
from fsm.ops.recover import Outcome, recover_session, salvage_auth
from tests import redis_servers
from tests.ops.conftest import ALICE, BOB, CAROL, Ops, make_ops, schema_1
from tests.ops.test_monitor import _fsm

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
    [row] = map(json.loads, check.stdout.splitlines())
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
        for command in (
            ["ls"],
            ["check"],
            ["metrics"],
            ["migrate"],
            ["backup", "-o", str(tmp_path / "b")],
        ):
            proc = _fsm(*command, *args)
            assert proc.returncode in (0, 1), (command, proc.stderr)
            assert "unknown command" not in proc.stderr
        assert _fsm("ls", *args).stderr.strip() == "30 session(s)"
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
