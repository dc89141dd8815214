"""`fsm inspect`, `fsm history` and `fsm ls` on the memory store, Redis and Redis Cluster."""

from __future__ import annotations

import json

import msgspec
import pytest

from adapters import RedisStore
from flows.credex import CredexBot
from fsm import SCHEMA_VERSION
from tests.ops.conftest import ALICE, BOB, CAROL, DAVE, STRANGER, Ops


def test_inspect_shows_the_session_and_hides_the_token(ops: Ops) -> None:
    ops.say(ALICE, "hi", "1", "5")  # menu -> offer a credex -> amount given
    snap = ops.snapshot(ALICE)
    assert snap.auth is not None
    result = ops.fsm("inspect", ALICE)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"user        {ALICE}" in out
    assert "valid       yes" in out
    assert f"stage       {snap.stage}.{snap.step}" in out
    assert f"version     {snap.version} (" in out
    assert f"flow        credex (flow version {CredexBot.version}, schema {SCHEMA_VERSION})" in out
    assert f"by {ops.engine.source}" in out
    assert "expires in  29m" in out or "expires in  30m" in out
    assert "lock        free" in out
    assert f"subject '{snap.auth.subject}', valid until" in out
    assert "hidden: --show-secrets" in out
    assert snap.auth.token not in result.output and "eyJ" not in result.output


def test_inspect_json_and_show_secrets(ops: Ops) -> None:
    ops.say(ALICE, "hi")
    snap = ops.snapshot(ALICE)
    assert snap.auth is not None
    info = json.loads(ops.fsm("inspect", ALICE, "--json").stdout)
    assert (info["stage"], info["step"], info["version"]) == (snap.stage, snap.step, snap.version)
    assert info["schema"] == SCHEMA_VERSION and info["valid"] is True and info["lock"] is None
    assert info["auth"]["subject"] == snap.auth.subject and "token" not in info["auth"]
    assert info["auth"]["expires_at"] == snap.auth.expires_at and not info["auth"]["expired"]
    assert 1790 < info["ttl"] <= 1800
    shown = json.loads(ops.fsm("inspect", ALICE, "--json", "--show-secrets").stdout)
    assert shown["auth"]["token"] == snap.auth.token


def test_inspect_redacts_secret_looking_data(ops: Ops) -> None:
    snap = ops.say(ALICE, "hi")
    leaked = msgspec.structs.replace(
        snap, data={**snap.data, "otp": "123456", "nested": {"api_key": "k-1", "ok": 1}}
    )
    ops.put(
        ALICE, msgspec.msgpack.encode(msgspec.structs.replace(leaked, version=snap.version + 1))
    )
    info = json.loads(ops.fsm("inspect", ALICE, "--json").stdout)
    assert info["data"]["otp"] == "<redacted>"
    assert info["data"]["nested"] == {"api_key": "<redacted>", "ok": 1}
    assert "123456" not in ops.fsm("inspect", ALICE).output


def test_inspect_shows_the_lock_holder(ops: Ops) -> None:
    ops.say(BOB, "hi")
    assert ops.store.acquire_lock(BOB, "worker-7f3a", 30.0)
    out = ops.fsm("inspect", BOB).stdout
    assert "lock        held by worker-7f3a for " in out
    info = json.loads(ops.fsm("inspect", BOB, "--json").stdout)
    assert info["lock"]["owner"] == "worker-7f3a" and 0 < info["lock"]["ttl"] <= 30


def test_inspect_of_an_unknown_user_exits_1(ops: Ops) -> None:
    result = ops.fsm("inspect", "263700000000")
    assert result.exit_code == 1
    assert "no session for user '263700000000'" in result.stderr


def test_inspect_of_corrupt_bytes_says_why(ops: Ops) -> None:
    ops.put(STRANGER, b"\xc1 not msgpack")
    result = ops.fsm("inspect", STRANGER)
    assert result.exit_code == 0
    assert "valid       NO - undecodable:" in result.stdout


def test_history_newest_first_shows_where_a_transition_came_from(ops: Ops) -> None:
    ops.say(ALICE, "hi", "1", "menu")
    result = ops.fsm("history", ALICE)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "AT", "FROM"]
    versions = [int(line.split()[0]) for line in lines[1:]]
    assert versions == sorted(versions, reverse=True) and versions[0] == ops.snapshot(ALICE).version
    assert "credex.amount -> menu.dashboard" in lines[1]
    assert ops.engine.source in lines[1]
    entries = [
        json.loads(line)
        for line in ops.fsm("history", ALICE, "--json", "-n", "2").stdout.splitlines()
    ]
    assert len(entries) == 2 and entries[0]["to"] == "menu.dashboard"
    assert entries[1]["from"] == "menu.dashboard" and entries[1]["to"] == "credex.amount"


def test_history_of_an_unknown_user_exits_1(ops: Ops) -> None:
    result = ops.fsm("history", "263700000000")
    assert result.exit_code == 1 and "no history" in result.stderr


def _users(ops: Ops) -> dict[str, str]:
    ops.say(ALICE, "hi", "1")  # credex.amount
    ops.say(BOB, "hi")  # menu
    ops.say(CAROL, "hi")  # menu
    ops.say(STRANGER, "hi")  # registration
    return {ALICE: "credex", BOB: "menu", CAROL: "menu", STRANGER: "registration"}


def _listed(ops: Ops, *args: str) -> dict[str, dict[str, object]]:
    result = ops.fsm("ls", "--json", *args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.stderr.strip() == f"{len(rows)} session(s)"
    return {row["user"]: row for row in rows}  # type: ignore[misc]


def test_ls_lists_and_filters(ops_all: Ops) -> None:
    ops = ops_all
    stages = _users(ops)
    rows = _listed(ops)
    assert {u: r["stage"] for u, r in rows.items()} == stages
    assert set(_listed(ops, "--stage", "menu")) == {BOB, CAROL}
    assert ops.store.acquire_lock(CAROL, "w", 60.0)
    assert set(_listed(ops, "--locked")) == {CAROL}
    assert set(_listed(ops, "--unlocked")) == {ALICE, BOB, STRANGER}
    ops.store.save(DAVE, b"junk", version=1, expected_version=0, ttl=100.0)
    assert set(_listed(ops, "--expiring-within", "5m")) == {DAVE}
    assert set(_listed(ops, "--invalid")) == {DAVE}
    text = ops.fsm("ls").stdout
    assert f"{DAVE:<24}  <unreadable>" in text and "[invalid: undecodable]" in text
    assert "credex.amount" in text


def test_ls_spans_every_cluster_primary() -> None:
    from tests.ops.conftest import make_ops

    for ops in make_ops("redis-cluster"):
        users = [f"2637700{n:05d}" for n in range(40)]
        for user in users:
            ops.say(user, "hi")
        assert isinstance(ops.store, RedisStore)
        slots = {ops.store.client.keyslot(ops.store.layout.session(u)) for u in users}
        nodes = {
            ops.store.client.get_node_from_key(ops.store.layout.session(u)).name for u in users
        }
        assert len(slots) > 30 and len(nodes) == 3  # the sessions live on all three primaries
        assert set(_listed(ops)) == set(users)


def test_ls_rejects_a_stage_the_flow_does_not_have(ops: Ops) -> None:
    result = ops.fsm("ls", "--stage", "nowhere")
    assert result.exit_code == 2
    assert "has no stage 'nowhere'" in result.output


@pytest.mark.parametrize("bad", ["5 minutes", "-3m", "m"])
def test_ls_rejects_a_bad_duration(ops: Ops, bad: str) -> None:
    result = ops.fsm("ls", "--expiring-within", bad)
    assert result.exit_code == 2 and "is not a duration" in result.output


def test_inspect_says_when_something_else_wrote_the_session(ops: Ops) -> None:
    snap = ops.say(ALICE, "hi")
    info = json.loads(ops.fsm("inspect", ALICE, "--json").stdout)
    assert info["history_version"] == snap.version and info["written_outside"] is False
    assert "no history entry" not in ops.fsm("inspect", ALICE).stdout
    ops.put(ALICE, msgspec.msgpack.encode(msgspec.structs.replace(snap, version=snap.version + 1)))
    info = json.loads(ops.fsm("inspect", ALICE, "--json").stdout)
    assert info["written_outside"] is True and info["history_version"] == snap.version
    text = ops.fsm("inspect", ALICE).stdout
    assert f"version {snap.version + 1} has no history entry (newest: {snap.version})" in text
    ops.put(STRANGER, b"\xc1")
    assert "(newest: none): written by something else" in ops.fsm("inspect", STRANGER).stdout
