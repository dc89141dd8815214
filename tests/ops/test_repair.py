"""`fsm check`, `fsm recover` and `fsm quarantine` on the memory store and on Redis."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import msgspec
import pytest

from fsm import Snapshot
from fsm.ops.recover import Outcome, recover_session, salvage_auth
from fsm.snapshot import SCHEMA_VERSION, encode_snapshot
from tests.ops.conftest import ALICE, BOB, CAROL, DAVE, STRANGER, Ops
from tests.support import check_rows

ERIN = "263770000005"
FRANK = "263770000006"


def _broken(ops: Ops) -> dict[str, str]:
    """One session per kind of problem; returns user -> expected problem kind."""
    alice = ops.say(ALICE, "hi")  # valid
    bob = ops.say(BOB, "hi")
    carol = ops.say(CAROL, "hi")
    dave = ops.say(DAVE, "hi")

    def write(user: str, snapshot: msgspec.Struct, **changes: object) -> None:
        changed = msgspec.structs.replace(snapshot, **changes)  # type: ignore[type-var]
        ops.put(user, msgspec.msgpack.encode(changed), version=changed.version)  # type: ignore[attr-defined]

    write(BOB, bob, stage="vault", version=bob.version + 1)
    write(CAROL, carol, step="nowhere", version=carol.version + 1)
    assert dave.auth is not None
    expired = msgspec.structs.replace(dave.auth, expires_at=ops.clock.now() - 60)
    write(DAVE, dave, auth=expired, version=dave.version + 1)
    ops.put(STRANGER, b"\x93\x01\x02")  # msgpack, but not a snapshot
    ops.put(ERIN, b'{"stage": "menu", "option": "x"}')  # the old bot's JSON
    fields = list(msgspec.msgpack.decode(msgspec.msgpack.encode(alice)))
    fields[Snapshot.__struct_fields__.index("schema")] = SCHEMA_VERSION + 1  # newer code's
    ops.put(FRANK, msgspec.msgpack.encode(fields), version=alice.version)
    return {
        BOB: "unknown-stage",
        CAROL: "impossible-step",
        DAVE: "expired-token",
        STRANGER: "undecodable",
        ERIN: "undecodable",
        FRANK: "schema-too-new",
    }


def test_check_reports_every_invalid_session_with_its_reason(ops: Ops) -> None:
    expected = _broken(ops)
    result = ops.fsm("check", "--json")
    assert result.exit_code == 1
    found = {row["user"]: row for row in check_rows(result.stdout)}
    assert {u: r["problem"] for u, r in found.items()} == expected
    assert "unknown stage 'vault'" in found[BOB]["reason"]
    assert "has no step 'nowhere'" in found[CAROL]["reason"]
    assert found[DAVE]["reason"] == "token expired 60s ago in protected stage 'menu'"
    assert "`$" in found[STRANGER]["reason"] or "Expected" in found[STRANGER]["reason"]
    assert "the bytes are JSON, not a snapshot" in found[ERIN]["reason"]
    assert "checked 7 session(s): 6 invalid" in result.stderr
    text = ops.fsm("check").stdout
    assert f"{BOB:<24}  unknown-stage" in text and ALICE not in text


def test_check_of_a_healthy_store_exits_0(ops: Ops) -> None:
    ops.say(ALICE, "hi")
    ops.say(BOB, "hi", "1")
    result = ops.fsm("check")
    assert result.exit_code == 0 and result.stdout == ""
    assert "checked 2 session(s): 0 invalid" in result.stderr


def test_recover_keeps_a_valid_token_and_the_original_bytes(ops: Ops) -> None:
    _broken(ops)
    raw = ops.store.load(BOB).record
    token = ops.snapshot(ALICE).auth
    before = ops.snapshot(BOB)
    assert raw is not None and before.auth is not None
    result = ops.fsm("recover", BOB)
    assert result.exit_code == 0, result.output
    assert f"{BOB}: recovered - unknown stage 'vault'" in result.stdout
    assert "kept: token, data" in result.stdout
    after = ops.snapshot(BOB)
    assert (after.stage, after.step) == ("init", "greeting")  # Credex's safe stage
    assert after.auth == before.auth and after.version == raw.version + 1
    [entry] = ops.store.quarantined(BOB)
    assert entry.raw == raw.payload  # byte for byte
    assert entry.id in result.stdout
    assert ops.store.history(BOB, limit=1)[0].event == "recover"
    assert ops.say(BOB, "hi").stage == "menu"  # the user goes on from the safe stage
    assert token == ops.snapshot(ALICE).auth  # others untouched


def test_recover_salvages_the_token_from_bytes_that_do_not_decode(ops: Ops) -> None:
    snap = ops.say(ALICE, "hi")
    assert snap.auth is not None
    fields = msgspec.msgpack.decode(msgspec.msgpack.encode(snap))
    fields[1] = 12345  # stage: wrong type, the record no longer decodes
    ops.put(ALICE, msgspec.msgpack.encode(fields), version=snap.version + 1)
    assert salvage_auth(ops.store.load(ALICE).record.payload) == snap.auth  # type: ignore[union-attr]
    result = recover_session(ops.store, ops.engine.spec, ALICE, clock=ops.clock)
    assert result.outcome is Outcome.RECOVERED and result.kept_token and not result.kept_data
    assert ops.snapshot(ALICE).auth == snap.auth


def test_recover_drops_an_expired_token(ops: Ops) -> None:
    _broken(ops)
    result = recover_session(ops.store, ops.engine.spec, DAVE, clock=ops.clock)
    assert result.outcome is Outcome.RECOVERED and not result.kept_token
    assert ops.snapshot(DAVE).auth is None


def test_recover_all_repairs_the_broken_and_leaves_the_rest(ops: Ops) -> None:
    _broken(ops)
    result = ops.fsm("recover", "--all", "--json")
    assert result.exit_code == 0, result.output
    outcomes = {row["user"]: row["outcome"] for row in map(json.loads, result.stdout.splitlines())}
    assert outcomes == {
        **{u: "recovered" for u in (BOB, CAROL, STRANGER, ERIN)},
        FRANK: "not-repairable",  # newer code's: reported, left alone
    }
    left = {row["user"] for row in check_rows(ops.fsm("check", "--json").stdout)}
    assert left == {DAVE, FRANK}  # the bot handles expired tokens; newer code owns FRANK's
    assert len(list(ops.store.quarantined())) == 4


def test_recover_dry_run_changes_nothing(ops: Ops) -> None:
    _broken(ops)
    before = ops.store.load(CAROL).record
    result = ops.fsm("recover", CAROL, "--dry-run")
    assert result.exit_code == 0 and "would-recover" in result.stdout
    assert ops.store.load(CAROL).record == before and list(ops.store.quarantined()) == []


def test_recover_leaves_a_locked_session_and_valid_ones(ops: Ops) -> None:
    _broken(ops)
    assert ops.store.acquire_lock(CAROL, "busy-worker", 30.0)
    result = ops.fsm("recover", CAROL)
    assert result.exit_code == 1 and "locked - a worker holds the user's lease" in result.stdout
    assert ops.fsm("recover", ALICE).stdout.startswith(f"{ALICE}: valid")
    forced = ops.fsm("recover", ALICE, "--force")
    assert forced.exit_code == 0 and "recovered - forced" in forced.stdout
    assert ops.fsm("recover", "263700000000").exit_code == 1
    assert ops.fsm("recover").exit_code == 2  # USER or --all
    assert ops.fsm("recover", ALICE, "--all").exit_code == 2


def test_quarantine_ls_show_hides_tokens_and_restore_puts_bytes_back(
    ops: Ops, tmp_path: Path
) -> None:
    snap = ops.say(ALICE, "hi", "1")
    assert snap.auth is not None
    raw = ops.store.load(ALICE).record
    assert raw is not None
    assert ops.fsm("recover", ALICE, "--force").exit_code == 0
    listed = ops.fsm("quarantine", "ls", "--json")
    [row] = map(json.loads, listed.stdout.splitlines())
    assert row["user"] == ALICE and row["bytes"] == len(raw.payload)
    assert "1 quarantined entry" in listed.stderr
    shown = ops.fsm("quarantine", "show", row["id"], "--raw", str(tmp_path / "raw.bin"))
    assert shown.exit_code == 0
    assert "<redacted>" in shown.stdout and snap.auth.token not in shown.output
    assert (tmp_path / "raw.bin").read_bytes() == raw.payload
    assert stat.S_IMODE(os.stat(tmp_path / "raw.bin").st_mode) == 0o600
    secrets = ops.fsm("quarantine", "show", row["id"], "--show-secrets")
    assert snap.auth.token in secrets.stdout
    refused = ops.fsm("quarantine", "restore", row["id"])
    assert refused.exit_code == 1 and "--replace" in refused.stderr
    done = ops.fsm("quarantine", "restore", row["id"], "--replace", "--ttl", "2h")
    assert done.exit_code == 0, done.output
    assert ops.store.ttl(ALICE) == pytest.approx(7200, abs=5)
    back = ops.snapshot(ALICE)
    assert (back.stage, back.step, back.auth) == (snap.stage, snap.step, snap.auth)
    assert back.version > snap.version + 1  # above the recovered one: no stale writer wins
    assert list(ops.store.quarantined()) == []
    assert ops.fsm("quarantine", "show", row["id"]).exit_code == 1


def test_quarantine_restore_refuses_bytes_that_still_do_not_decode(ops: Ops) -> None:
    ops.put(STRANGER, b"\xc1\xc1")
    assert ops.fsm("recover", STRANGER).exit_code == 0
    [entry] = ops.store.quarantined(STRANGER)
    result = ops.fsm("quarantine", "restore", entry.id, "--replace")
    assert result.exit_code == 1 and "still unreadable" in result.stderr
    assert [e.id for e in ops.store.quarantined()] == [entry.id]


def test_a_recovered_session_is_encoded_with_the_current_schema(ops: Ops) -> None:
    _broken(ops)
    recover_session(ops.store, ops.engine.spec, ERIN, clock=ops.clock)
    snap = ops.snapshot(ERIN)
    assert snap.schema == SCHEMA_VERSION and snap.flow_version == ops.engine.spec.version
    record = ops.store.load(ERIN).record
    assert record is not None and record.payload == encode_snapshot(snap)


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x92\x01", b'{"auth": 1}'])
def test_salvage_never_raises(raw: bytes) -> None:
    assert salvage_auth(raw) is None


def test_quarantine_drop_deletes_one_entry(ops: Ops) -> None:
    ops.put(STRANGER, b"\xc1 one")
    assert ops.fsm("recover", STRANGER).exit_code == 0
    ops.put(ERIN, b"\xc1 two")
    assert ops.fsm("recover", ERIN).exit_code == 0
    [first] = ops.store.quarantined(STRANGER)
    result = ops.fsm("quarantine", "drop", first.id)
    assert (
        result.exit_code == 0
        and f"{STRANGER}: dropped quarantined entry {first.id}" in result.stdout
    )
    assert [e.user_key for e in ops.store.quarantined()] == [ERIN]
    again = ops.fsm("quarantine", "drop", first.id, "--user", STRANGER)
    assert again.exit_code == 1 and "no quarantined entry" in again.stderr


def test_history_shows_a_dash_where_an_entry_has_no_origin(ops: Ops, tmp_path: Path) -> None:
    ops.say(ALICE, "hi")
    out = tmp_path / "b.jsonl"
    ops.fsm("backup", "-o", str(out))
    ops.say(ALICE, "1")
    ops.store.delete(ALICE)
    assert ops.fsm("restore", str(out)).exit_code == 0
    line = ops.fsm("history", ALICE, "-n", "1").stdout.splitlines()[1]
    assert " - -> menu.dashboard " in line and "restore" in line
    [entry] = map(json.loads, ops.fsm("history", ALICE, "-n", "1", "--json").stdout.splitlines())
    assert (entry["from"], entry["to"], entry["event"]) == ("-", "menu.dashboard", "restore")


def test_a_session_put_back_hours_later_is_not_expired_at_its_next_message(ops: Ops) -> None:
    """The engine judges expiry by the time of the last save: a restore is a save now."""
    snap = ops.say(ALICE, "hi", "1")
    assert ops.fsm("recover", ALICE, "--force").exit_code == 0
    [entry] = ops.store.quarantined(ALICE)
    ops.store.delete(ALICE)
    ops.clock.advance(3 * 3600)  # longer than the session TTL
    assert ops.fsm("quarantine", "restore", entry.id).exit_code == 0
    back = ops.snapshot(ALICE)
    assert back.last_updated == ops.clock.now() and back.stage == snap.stage
    after = ops.engine.handle(ALICE, "hello")
    assert ops.engine.expired_notice not in after.texts
