"""Flow versions: a session saved by an older version of a flow is migrated when loaded."""

from __future__ import annotations

import msgspec
import pytest

from adapters import MemoryStore
from fsm import Context, Engine, FakeClock, Flow, Outcome, Snapshot, Stage, encode_snapshot, step
from fsm.errors import InvalidFlowDefinition


def _rename_ask_to_name(snap: Snapshot) -> Snapshot:
    data = dict(snap.data)
    if "nm" in data:
        data["name"] = data.pop("nm")
    step_id = "name" if snap.step == "ask" else snap.step
    return msgspec.structs.replace(snap, step=step_id, data=data)


class SurveyV3(Flow):
    """v1 had step "ask" storing "nm"; v2 renamed them ("name"); v3 added "city" (no migration
    needed: its steps are a superset)."""

    name = "survey"
    takes_first_message = True
    version = 3
    stages = (Stage("q", ("name", "city")),)
    transitions = ()
    migrations = {1: _rename_ask_to_name}

    @step("q", "name")
    def name_step(self, ctx: Context) -> Outcome:
        return ctx.stay(f"hello {ctx.text}", step="city", set={"name": ctx.text})

    @step("q", "city")
    def city(self, ctx: Context) -> Outcome:
        return ctx.stay(f"{ctx.data['name']} from {ctx.text}", set={"city": ctx.text})


def _saved(store: MemoryStore, snap: Snapshot) -> None:
    store.save("u", encode_snapshot(snap), version=snap.version, expected_version=0, ttl=60)


def test_a_session_of_flow_version_1_is_migrated_and_continues(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    old = Snapshot(flow="survey", stage="q", step="ask", data={"nm": "Ann"}, version=7)
    _saved(store, old)
    engine = Engine(SurveyV3(), store, clock=clock)
    # "ask" is gone from v3, but the v1 -> v2 migration renamed it; v2 -> v3 is compatible.
    result = engine.handle("u", "Harare")
    assert result.texts == ["hello Harare"]  # now at "name", so the text answers it
    assert result.snapshot.flow_version == 3
    assert result.snapshot.version == 8  # the version chain continues
    assert engine.stats["migrated"] == 2
    assert list(store.quarantined()) == []


def test_data_kept_by_the_migration_is_used_by_later_steps(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    old = Snapshot(flow="survey", stage="q", step="city", data={"name": "Bo"}, version=3)
    _saved(store, msgspec.structs.replace(old, flow_version=2))
    engine = Engine(SurveyV3(), store, clock=clock)
    assert engine.handle("u", "Bulawayo").texts == ["Bo from Bulawayo"]


def test_a_failing_migration_quarantines_the_bytes_and_restarts(clock: FakeClock) -> None:
    def broken(snap: Snapshot) -> Snapshot:
        raise KeyError("nm")

    class Broken(SurveyV3):
        migrations = {1: broken}

    store = MemoryStore(clock=clock)
    old = Snapshot(flow="survey", stage="q", step="ask", data={"nm": "Ann"}, version=2)
    _saved(store, old)
    engine = Engine(Broken(), store, clock=clock)
    result = engine.handle("u", "Zed")
    assert result.texts[0] == engine.reset_notice
    [entry] = list(store.quarantined())
    assert "migration from flow version 1 failed: KeyError" in entry.reason
    assert entry.raw == encode_snapshot(old)  # kept byte for byte


@pytest.mark.parametrize("key", [0, 3, "1", True])
def test_migration_keys_must_be_older_flow_versions(key: object) -> None:
    with pytest.raises(InvalidFlowDefinition, match="migration key"):

        class Bad(SurveyV3):
            migrations = {key: _rename_ask_to_name}  # type: ignore[dict-item]


def test_a_migration_cannot_change_the_token(clock: FakeClock) -> None:
    from fsm import Auth

    def steals(snap: Snapshot) -> Snapshot:
        return msgspec.structs.replace(_rename_ask_to_name(snap), auth=None)

    class Thief(SurveyV3):
        migrations = {1: steals}

    store = MemoryStore(clock=clock)
    auth = Auth(token="header.payload.sig", subject="u")
    old = Snapshot(flow="survey", stage="q", step="ask", auth=auth, version=2)
    _saved(store, old)
    result = Engine(Thief(), store, clock=clock).handle("u", "Ann")
    assert result.snapshot.auth == auth


def test_a_schema_1_record_is_read_and_rewritten_in_the_current_layout(clock: FakeClock) -> None:
    from fsm import SCHEMA_VERSION, Auth, Resume, decode_snapshot

    v1 = {
        "flow": "survey", "stage": "q", "step": "city", "option": "o", "data": {"name": "Bo"},
        "auth": {"token": "a.b.c", "subject": "s", "expires_at": 5.0, "issued_at": 1.0},
        "resume": {"stage": "q", "step": "name", "option": "", "pending": ""},
        "version": 4, "schema": 1, "flow_version": 3, "last_updated": clock.now() - 9.0,
        "update_from": "w",
    }  # fmt: skip
    raw = msgspec.msgpack.encode(v1)
    snap = decode_snapshot(raw)
    assert snap.schema == SCHEMA_VERSION == 3
    assert snap.auth == Auth(token="a.b.c", subject="s", expires_at=5.0, issued_at=1.0)
    assert snap.resume == Resume(stage="q", step="name")
    assert (snap.data, snap.version, snap.flow_version) == ({"name": "Bo"}, 4, 3)
    store = MemoryStore(clock=clock)
    store.save("u", raw, version=4, expected_version=0, ttl=60)
    Engine(SurveyV3(), store, clock=clock).handle("u", "Harare")
    rewritten = store.load("u").record
    assert rewritten is not None and rewritten.payload[0] in (*range(0x90, 0xA0), 0xDC)  # array
    assert decode_snapshot(rewritten.payload).auth == snap.auth  # the token came through
    assert len(rewritten.payload) < len(raw)


def test_a_newer_schema_is_refused_even_if_its_fields_changed_type() -> None:
    from fsm import decode_snapshot
    from fsm.errors import SchemaTooNew
    from fsm.snapshot import SCHEMA_VERSION

    fields = ["survey", "q", "name", "", {}, None, None, 1, SCHEMA_VERSION + 1, 1, 0.0, ""]
    fields[0] = {"renamed": True}  # a type this code cannot read
    with pytest.raises(SchemaTooNew):
        decode_snapshot(msgspec.msgpack.encode(fields))


def test_a_release_that_writes_schema_2_refuses_todays_sessions_as_too_new(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rolling deploy: a session saved today (schema 3, a file in its outbox) read by a
    worker of the release before (schema 2) is refused as too new (a newer worker takes the
    message), never decoded without what it does not know, nor taken for corrupt."""
    import msgspec.structs

    from fsm import Snapshot, document, encode_snapshot
    from fsm import snapshot as snapshot_module
    from fsm.errors import SchemaTooNew
    from fsm.snapshot import Outgoing

    reply = document(b"a,b\n", filename="s.csv", mime_type="text/plain")
    assert reply.media is not None
    kept = msgspec.structs.replace(reply, media=reply.media.uploaded("m-1"))
    today = Snapshot(flow="f", stage="s", step="x", version=4,
                     outbox=(Outgoing(4, 0, "w1", kept, id="o1"),))  # fmt: skip
    raw = encode_snapshot(today)
    monkeypatch.setattr(snapshot_module, "SCHEMA_VERSION", 2)
    with pytest.raises(SchemaTooNew):
        snapshot_module.decode_snapshot(raw)
