"""The engine's message path on the memory store, with the sample flows."""

from __future__ import annotations

import logging

import msgspec
import pytest

from adapters import MemoryStore
from fsm import SCHEMA_VERSION, Engine, Reply, Snapshot, decode_snapshot, encode_snapshot
from fsm.errors import (
    CorruptSnapshot,
    InvalidUserKey,
    SchemaTooNew,
    StepFailed,
    StepNotFound,
    TokenRefused,
    TransitionNotAllowed,
)
from tests.fsm.conftest import VaultWorld
from tests.fsm.sample_flows import SECRET, issue_token


def test_first_message_starts_at_initial_stage_and_saves_version_1(vault: VaultWorld) -> None:
    result = vault.engine.handle("ann", "hi")
    assert result.snapshot.stage == "auth"
    assert result.snapshot.version == 1
    assert result.texts == ["password?"]
    stored = decode_snapshot(vault.raw("ann") or b"")
    assert stored == result.snapshot
    assert stored.update_from == "test-worker"
    assert stored.last_updated == vault.clock.now()


def test_full_conversation_keeps_earlier_step_data(vault: VaultWorld) -> None:
    vault.say("ann", "hi", "open sesame", "deposit", "12")
    snap = vault.engine.peek("ann")
    assert snap is not None and (snap.stage, snap.step) == ("deposit", "confirm")
    assert snap.data == {"amount": 12}
    assert vault.say("ann", "yes") == ["done", "menu (balance 12)"]
    snap = vault.engine.peek("ann")
    assert snap is not None and snap.data == {"balance": 12}  # amount deleted, not left over


def test_versions_grow_by_one_and_history_records_each_move(vault: VaultWorld) -> None:
    vault.say("ann", "hi", "wrong", "open sesame", "deposit")
    history = vault.store.history("ann")
    assert [h.version for h in history] == [4, 3, 2, 1]
    assert [(h.from_stage, h.to_stage, h.event) for h in history] == [
        ("home", "deposit", "open_deposit"),
        ("auth", "home", "open_home"),
        ("auth", "auth", ""),
        ("start", "auth", "sign_in"),
    ]
    assert all(h.update_from == "test-worker" for h in history)


def test_event_not_in_graph_raises_and_leaves_bytes_unchanged(vault: VaultWorld) -> None:
    vault.say("ann", "bogus")  # start -> auth
    before = vault.raw("ann")
    # "teleport" fires open_deposit from start: not an edge of the graph.
    with pytest.raises(TransitionNotAllowed) as info:
        vault.engine.handle("dora", "teleport")
    assert info.value.stage == "start" and info.value.event == "open_deposit"
    assert vault.raw("dora") is None  # nothing was saved for the refused first message
    assert vault.raw("ann") == before


def test_guard_refuses_protected_stage_without_token(vault: VaultWorld) -> None:
    with pytest.raises(TransitionNotAllowed) as info:
        vault.engine.handle("eve", "sneak")
    assert info.value.event == "sneak_in"
    assert "valid token" in info.value.reason
    assert vault.raw("eve") is None


def test_handler_exception_is_wrapped_and_state_unchanged(counter_engine: Engine) -> None:
    counter_engine.handle("u", "go")
    counter_engine.handle("u", "+1")
    before = counter_engine.store.load("u").record
    with pytest.raises(StepFailed) as info:
        counter_engine.handle("u", "boom")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert (info.value.stage, info.value.step, info.value.version) == ("counting", "count", 2)
    assert counter_engine.store.load("u").record == before
    assert counter_engine.stats["step_failures"] == 1


def test_unknown_step_is_refused(counter_engine: Engine) -> None:
    counter_engine.handle("u", "go")
    with pytest.raises(StepNotFound):
        counter_engine.handle("u", "jump")
    snap = counter_engine.peek("u")
    assert snap is not None and snap.version == 1


def test_redelivered_message_id_is_applied_once(counter_engine: Engine) -> None:
    counter_engine.handle("u", "go", message_id="m0")
    first = counter_engine.handle("u", "+1", message_id="m1")
    again = counter_engine.handle("u", "+1", message_id="m1")
    assert first.snapshot.data["count"] == 1 and not first.duplicate
    assert again.duplicate and again.replies == ()
    assert again.snapshot == first.snapshot
    other_user = counter_engine.handle("v", "go", message_id="m1")  # ids are per user
    assert not other_user.duplicate
    assert counter_engine.stats["duplicates"] == 1


def test_session_expiry_restarts_with_notice(vault: VaultWorld) -> None:
    vault.say("ann", "hi", "open sesame")
    vault.clock.advance(601)
    assert vault.engine.peek("ann") is None
    result = vault.engine.handle("ann", "hello again")
    assert result.texts[0] == vault.engine.expired_notice
    assert result.snapshot.stage == "auth"
    assert result.snapshot.version == 3  # the version chain continues: no version is reused
    assert vault.engine.stats["expired"] == 1


def test_new_user_gets_no_expiry_notice(vault: VaultWorld) -> None:
    result = vault.engine.handle("new", "hi")
    assert vault.engine.expired_notice not in result.texts


def test_sliding_ttl_is_refreshed_by_each_save(vault: VaultWorld) -> None:
    vault.say("ann", "hi")
    for _ in range(5):
        vault.clock.advance(500)
        vault.say("ann", "wrong")  # each save slides the TTL
    assert vault.store.ttl("ann") == pytest.approx(600)
    assert vault.engine.peek("ann") is not None


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\xff\xfe\xfd",
        b"\xc1",
        msgspec.msgpack.encode({"flow": "vault", "stage": 7, "step": "x", "version": 1}),
        msgspec.msgpack.encode({"flow": "vault", "stage": "nowhere", "step": "x", "version": 1}),
        msgspec.msgpack.encode(
            {"flow": "other", "stage": "auth", "step": "password", "version": 1}
        ),
        msgspec.msgpack.encode({"flow": "vault", "stage": "auth", "step": "nope", "version": 1}),
    ],
    ids=["empty", "junk", "reserved-byte", "mistyped", "unknown-stage", "other-flow", "bad-step"],
)
def test_corrupt_bytes_are_quarantined_unchanged_and_user_restarts(
    vault: VaultWorld, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    vault.store.save("ann", garbage, version=1, expected_version=0, ttl=600)
    with caplog.at_level(logging.WARNING, logger="fsm.engine"):
        result = vault.engine.handle("ann", "hi")
    entries = list(vault.store.quarantined())
    assert len(entries) == 1
    assert entries[0].raw == garbage and entries[0].user_key == "ann"
    assert result.texts[0] == vault.engine.reset_notice
    assert result.snapshot.stage == "auth"  # the message then ran from the safe stage
    assert vault.engine.stats["corrupt"] == 1
    assert any("quarantined" in r.getMessage() for r in caplog.records)


def test_newer_schema_is_not_overwritten(vault: VaultWorld) -> None:
    newer = Snapshot(
        flow="vault", stage="auth", step="password", version=1, schema=SCHEMA_VERSION + 1
    )
    raw = msgspec.msgpack.encode(newer)
    vault.store.save("ann", raw, version=1, expected_version=0, ttl=600)
    with pytest.raises(SchemaTooNew):
        vault.engine.handle("ann", "open sesame")
    assert vault.raw("ann") == raw
    with pytest.raises(SchemaTooNew):  # reading it is refused too: fields would be dropped
        vault.engine.peek("ann")
    with pytest.raises(SchemaTooNew):
        encode_snapshot(newer)


def test_expired_token_mid_flow_goes_to_auth_and_resumes(vault: VaultWorld) -> None:
    vault.flow.token_ttl = 100
    vault.say("ann", "hi", "open sesame", "deposit", "40")
    vault.clock.advance(101)
    result = vault.engine.handle("ann", "yes")  # would confirm, but the token has expired
    assert result.snapshot.stage == "auth"
    assert result.snapshot.resume is not None
    assert (result.snapshot.resume.stage, result.snapshot.resume.step) == ("deposit", "confirm")
    assert result.events == ("open_home", "sign_in")  # along the graph's own edges
    assert result.snapshot.data == {"amount": 40}
    back = vault.engine.handle("ann", "open sesame")
    assert (back.snapshot.stage, back.snapshot.step) == ("deposit", "confirm")
    assert back.snapshot.resume is None
    assert back.snapshot.data == {"amount": 40}
    assert vault.say("ann", "yes") == ["done", "menu (balance 40)"]


def test_refreshed_token_replaces_and_stale_token_is_refused(vault: VaultWorld) -> None:
    vault.say("ann", "hi", "open sesame")
    vault.clock.advance(10)
    old = issue_token(vault.clock, sub="ann", iat=vault.clock.now() - 5)
    newer = issue_token(vault.clock, sub="ann")
    vault.flow.next_token = newer
    vault.say("ann", "refresh")
    fresh = vault.engine.peek("ann")
    assert fresh is not None and fresh.auth is not None
    assert fresh.auth.token == newer
    raw_before = vault.raw("ann")
    vault.flow.next_token = old  # a slow response carrying an older token
    with pytest.raises(TokenRefused, match="stale"):
        vault.engine.handle("ann", "refresh")
    assert vault.raw("ann") == raw_before


def test_forged_login_token_is_refused(vault: VaultWorld) -> None:
    vault.say("ann", "hi")
    vault.flow.next_token = issue_token(vault.clock, key=b"not-the-secret-but-32-bytes-long!")
    before = vault.raw("ann")
    with pytest.raises(TokenRefused, match="bad signature"):
        vault.engine.handle("ann", "open sesame")
    assert vault.raw("ann") == before


def test_logout_clears_the_token(vault: VaultWorld) -> None:
    vault.say("ann", "hi", "open sesame", "logout")
    snap = vault.engine.peek("ann")
    assert snap is not None and snap.stage == "auth" and snap.auth is None


@pytest.mark.parametrize("bad", ["", "   ", "x" * 300, "a\x00b"])
def test_invalid_user_keys_are_refused(vault: VaultWorld, bad: str) -> None:
    with pytest.raises(InvalidUserKey):
        vault.engine.handle(bad, "hi")


def test_user_keys_are_exact(vault: VaultWorld) -> None:
    for key in ["{a}", "a:b", "a*", "a b", "a\nb", "ü", "A"]:
        vault.engine.handle(key, "hi")
    assert sorted(vault.store.scan()) == sorted(["{a}", "a:b", "a*", "a b", "a\nb", "ü", "A"])


def test_engine_requires_verifier_for_protected_flow() -> None:
    from fsm import FakeClock
    from tests.fsm.sample_flows import Vault

    with pytest.raises(ValueError, match="TokenVerifier"):
        Engine(Vault(FakeClock()), MemoryStore())


def test_repr_logs_and_errors_never_show_the_token(
    vault: VaultWorld, caplog: pytest.LogCaptureFixture
) -> None:
    vault.say("ann", "hi", "open sesame")
    snap = vault.engine.peek("ann")
    assert snap is not None and snap.auth is not None
    token = snap.auth.token
    assert token not in repr(snap) and token not in str(snap) and token not in repr(snap.auth)
    # Corrupt bytes that contain the token: quarantined and logged, the token not shown.
    garbage = b"\xc1" + token.encode()
    vault.store.save("zed", garbage, version=1, expected_version=0, ttl=60)
    with caplog.at_level(logging.DEBUG):
        result = vault.engine.handle("zed", "hi")
    assert result.texts[0] == vault.engine.reset_notice
    assert token not in caplog.text and token not in repr(result)
    with pytest.raises(CorruptSnapshot) as info:
        decode_snapshot(garbage)
    assert token not in str(info.value) and token not in repr(info.value)
    assert SECRET.decode() not in repr(vault.engine.verifier)


def test_rich_pretty_printing_never_shows_the_token(vault: VaultWorld) -> None:
    from rich.pretty import pretty_repr

    result = vault.engine.handle("ann", "hi")
    result = vault.engine.handle("ann", "open sesame")
    assert result.snapshot.auth is not None
    token = result.snapshot.auth.token
    for thing in (result, result.snapshot, result.snapshot.auth):
        assert token not in pretty_repr(thing)


def test_a_context_an_outcome_and_a_record_never_show_the_token(vault: VaultWorld) -> None:
    """Context, Outcome and Record are msgspec Structs, whose default reprs show every field:
    each defines its own, for repr() and for rich alike."""
    from rich.pretty import pretty_repr

    from fsm.step import Context, Login

    vault.say("ann", "hi", "open sesame")
    loaded = vault.store.load("ann").record
    assert loaded is not None
    snap = decode_snapshot(loaded.payload)
    assert snap.auth is not None
    token = snap.auth.token
    ctx = Context("ann", "hi", "home", "menu", "", {}, "ann", None, 0.0, None, _token=token)
    assert ctx.token == token
    outcome = ctx.stay(auth=Login(token), set={"note": token})
    for thing in (ctx, outcome, loaded, vault.store.load("ann")):
        assert token not in repr(thing) and token not in pretty_repr(thing)


def test_nested_data_cannot_be_changed_behind_the_outcome(counter_engine: Engine) -> None:
    from fsm.step import Context

    frozen = Context.readonly({"cart": {"items": [1, 2]}})
    with pytest.raises(TypeError):
        frozen["cart"]["items"] += (3,)  # type: ignore[index]
    with pytest.raises(TypeError):
        frozen["cart"]["n"] = 1  # type: ignore[index]


def test_result_snapshot_equals_what_a_later_load_returns(vault: VaultWorld) -> None:
    for text in ["hi", "open sesame", "deposit", "5"]:
        result = vault.engine.handle("ann", text)
        assert result.snapshot == vault.engine.peek("ann")


def test_newer_flow_version_is_refused_not_quarantined(vault: VaultWorld) -> None:
    newer = Snapshot(flow="vault", stage="auth", step="password", version=1, flow_version=2)
    raw = msgspec.msgpack.encode(newer)
    vault.store.save("ann", raw, version=1, expected_version=0, ttl=600)
    with pytest.raises(SchemaTooNew) as info:
        vault.engine.handle("ann", "hi")
    assert info.value.what == "flow version"
    assert vault.raw("ann") == raw and list(vault.store.quarantined()) == []


def test_handle_takes_the_contract_keyword_names(vault: VaultWorld) -> None:
    result = vault.engine.handle(user_id="ann", text="hi", message_id="wamid.1")
    assert result.snapshot.stage == "auth" and not result.duplicate


def test_a_stalled_writer_cannot_land_on_a_restarted_session(vault: VaultWorld) -> None:
    vault.say("ann", "hi", "wrong")  # v2
    stalled = vault.store.load("ann").record  # a worker loads v2, then stalls
    assert stalled is not None and stalled.version == 2
    vault.clock.advance(601)  # the session expires
    vault.say("ann", "hi", "wrong")  # the new conversation reaches v4, not v2 again
    late = vault.store.save("ann", stalled.payload, version=3, expected_version=2, ttl=600)
    assert not late.saved
    assert vault.engine.peek("ann").version == 4  # type: ignore[union-attr]


def test_quarantine_restart_continues_above_the_corrupt_version(vault: VaultWorld) -> None:
    vault.store.save("ann", b"\xff", version=7, expected_version=0, ttl=600)
    result = vault.engine.handle("ann", "hi")
    assert result.snapshot.version == 8
    assert result.texts[0] == vault.engine.reset_notice


def test_the_writer_named_in_each_save_is_this_process_even_after_a_fork() -> None:
    """Without a configured source, saves name host:pid. The pid is read once per process
    (not per message), so a forked worker must still name its own pid, not its parent's."""
    import os
    import socket

    from tests.fsm.sample_flows import Counter

    engine = Engine(Counter(), MemoryStore())
    host = socket.gethostname()
    assert engine.handle("u", "go").snapshot.update_from == f"{host}:{os.getpid()}"
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            named = engine.handle("v", "go").snapshot.update_from
            os.write(write, f"{named}|{os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        named, pid = pipe.read().decode().split("|")
    os.waitpid(child, 0)
    assert pid != str(os.getpid())
    assert named == f"{host}:{pid}"
    assert engine.handle("u", "+1").snapshot.update_from == f"{host}:{os.getpid()}"


def test_a_token_that_expires_while_the_handler_runs_cannot_enter_a_protected_stage(
    vault: VaultWorld,
) -> None:
    """The token is verified once per message, before the handler; a move is checked against
    its expiry again after the handler ran (it may take long: an API call), so a token that
    expired meanwhile cannot carry the user into another protected stage."""
    from fsm.step import Context, Outcome

    vault.flow.token_ttl = 60
    vault.say("ann", "hi", "open sesame")  # a 60 s token
    menu = vault.flow.menu

    def slow_menu(ctx: Context) -> Outcome:
        vault.clock.advance(61)  # the API call took a minute
        return menu(ctx)

    vault.flow.menu = slow_menu  # type: ignore[method-assign]
    with pytest.raises(TransitionNotAllowed):
        vault.engine.handle("ann", "deposit")
    snap = vault.engine.peek("ann")
    assert snap is not None and snap.stage == "home"  # nothing saved


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param({"set": {1: "x"}}, id="int-data-name"),
        pytest.param({"option": 7}, id="int-option"),
    ],
)
def test_data_names_and_options_that_cannot_be_read_back_are_refused(
    outcome: dict[str, object],
) -> None:
    """A data name or an option that is not a str would be stored but not read back (every
    later load would quarantine the session): the step fails instead, nothing saved."""
    from fsm import Context, Flow, Outcome, Stage, step

    class Odd(Flow):
        name = "odd"
        takes_first_message = True
        stages = (Stage("s", ("a",)),)
        transitions = ()

        @step("s", "a")
        def a(self, ctx: Context) -> Outcome:
            return ctx.stay("ok", **outcome)  # type: ignore[arg-type]

    engine = Engine(Odd(), MemoryStore())
    with pytest.raises(StepFailed) as info:
        engine.handle("u", "x")
    assert isinstance(info.value.__cause__, TypeError)
    assert engine.peek("u") is None


def test_a_str_enum_option_is_kept_as_it_is_read_back() -> None:
    import enum

    from fsm import Context, Flow, Outcome, Stage, step

    class Colour(enum.StrEnum):
        RED = "red"

    class Painter(Flow):
        name = "painter"
        takes_first_message = True
        stages = (Stage("s", ("a",)),)
        transitions = ()

        @step("s", "a")
        def a(self, ctx: Context) -> Outcome:
            return ctx.stay("ok", option=Colour.RED)

    engine = Engine(Painter(), MemoryStore())
    kept = engine.handle("u", "x").snapshot
    assert kept == engine.peek("u") and type(kept.option) is str


def test_a_store_that_takes_no_lease_on_save_still_runs_actions_under_the_lease() -> None:
    """A store written before ``Store.save(lease=...)`` (it does not set
    ``takes_lease_on_save``) never sees the option: the engine takes the lease with
    ``lock_and_load`` before the action, as it did before."""
    from typing import Any

    from fsm.records import SaveResult
    from tests.benchmarks.common import Ping

    class OldStore(MemoryStore):
        takes_lease_on_save = False
        locked_with: list[str] = []

        def save(self, user_key: str, payload: bytes, **kw: Any) -> SaveResult:
            assert "lease" not in kw
            return super().save(user_key, payload, **kw)

        def lock_and_load(self, user_key: str, owner: str, ttl: float, **kw: Any) -> Any:
            self.locked_with.append(owner)
            return super().lock_and_load(user_key, owner, ttl, **kw)

    store = OldStore()
    engine = Engine(Ping(), store)
    assert engine.handle("u", "x").texts == ["done"]
    assert len(store.locked_with) == 1 and store.lock_info("u") is None
    assert engine.stats["lock_acquisitions"] == 1 and engine.stats["actions"] == 1


def test_ctx_data_cannot_be_changed_through_its_attributes() -> None:
    from fsm.step import FrozenData

    stored: dict[str, object] = {"cart": {"items": [1, 2]}, "n": 1}
    view = FrozenData(stored)
    with pytest.raises(AttributeError):
        view._data = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        view._data["n"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        view["cart"]["items"] += (3,)  # type: ignore[index]
    assert stored == {"cart": {"items": [1, 2]}, "n": 1}
    assert view == {"cart": {"items": (1, 2)}, "n": 1}


def test_a_warm_message_reuses_its_tokens_verified_claims_but_not_past_their_expiry(
    vault: VaultWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claims this process verified for the token the kept snapshot holds are kept with
    it: the next message checks only their expiry. Past it, the token is refused as before."""
    vault.flow.token_ttl = 60
    vault.say("ann", "hi", "open sesame", "nothing")
    assert vault.engine.verifier is not None
    looked_up: list[str] = []
    real = vault.engine.verifier.verify

    def counting(token: str) -> object:
        looked_up.append("verify")
        return real(token)

    monkeypatch.setattr(vault.engine.verifier, "verify", counting)
    assert vault.say("ann", "nothing") == ["say deposit or logout"]
    assert looked_up == []  # warm: the kept claims, their expiry checked
    vault.clock.advance(61)
    texts = vault.say("ann", "nothing")
    assert texts[0] == vault.engine.auth_notice  # expired: sent to sign in again
    snap = vault.engine.peek("ann")
    assert snap is not None and snap.stage == "auth"


def test_the_state_of_a_message_in_flight_shows_neither_its_text_nor_its_lease() -> None:
    """The protocol's per-message state is a msgspec Struct too (a debugger, a rich
    traceback with locals or an error tracker shows it): its repr names the user only."""
    from rich.pretty import pretty_repr

    from fsm.inflight import Message as _Message

    m = _Message("ann", "my secret answer", "wamid.1", None)
    m.owner = "lease-owner-token"
    m.said.append(Reply("a reply with a one-time code"))
    for shown in (repr(m), pretty_repr(m)):
        assert "ann" in shown
        for hidden in ("my secret answer", "lease-owner-token", "one-time code"):
            assert hidden not in shown
