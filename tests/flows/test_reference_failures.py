"""REFERENCE_BOT.md "Failures we must make impossible", one test (or more) per failure, by name.

This file covers the failures the login and menu stages can show: 1, 4, 6, 7, 8 and 14.
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec
import pytest

from adapters import MemoryStore
from flows.credex import build_engine
from flows.credex.api import LoginResult
from flows.credex.fake import FakeCredexApi
from flows.credex.flow import CredexBot
from fsm import FakeClock, Snapshot, decode_snapshot
from fsm.errors import FsmError, StepFailed, StoreUnavailable, TransitionNotAllowed
from fsm.records import HistoryEntry
from tests.flows.conftest import ALICE, BOB, Bot
from tests.flows.test_credex_bot import REFERENCE_EDGES
from tests.support import FailingSaves

# -- 1. An unknown stage, or a transition not in the graph, is accepted ----------------------


def test_failure_01_transition_not_in_the_graph_is_refused() -> None:
    machine = CredexBot.spec.machine
    stages = list(CredexBot.spec.stages)
    refused = 0
    for source in stages:
        for event in sorted(machine.events):
            dest = machine.destination(source, event)
            if dest is None:
                with pytest.raises(TransitionNotAllowed) as info:
                    machine.fire(source, event, token_preserved=True, token_valid=True)
                assert (info.value.stage, info.value.event) == (source, event)
                refused += 1
            else:
                assert (source, dest) in REFERENCE_EDGES
    assert refused > 0


def test_failure_01_unknown_stage_in_storage_is_not_accepted(bot: Bot) -> None:
    bot.engine.handle(ALICE, "hi")
    snap = bot.engine.peek(ALICE)
    assert snap is not None
    forged = msgspec.structs.replace(snap, stage="payments", step="anything")
    raw = msgspec.msgpack.encode(forged)
    bot.store.save(ALICE, raw, version=2, expected_version=1, ttl=600)
    result = bot.engine.handle(ALICE, "hi")
    assert [q.raw for q in bot.store.quarantined()] == [raw]  # kept, byte-for-byte
    assert result.snapshot.stage in CredexBot.spec.stages
    assert result.texts[0] == bot.engine.reset_notice


def test_failure_01_handler_asking_for_an_unlisted_move_is_refused(bot: Bot) -> None:
    class Broken(CredexBot):
        name = "credex"

        def greeting(self, ctx: Any) -> Any:  # overrides the decorated handler's body
            return ctx.go("open_credex")  # init -> credex is not an edge

    from fsm import Engine

    engine = Engine(Broken(bot.api), bot.store, verifier=bot.engine.verifier, clock=bot.clock)
    with pytest.raises(TransitionNotAllowed) as info:
        engine.handle(BOB, "hi")
    assert (info.value.stage, info.value.event) == ("init", "open_credex")
    assert bot.raw(BOB) is None


# -- 4. A partial or invalid update is swallowed by a broad except and lost -------------------


class _ExplodingApi(FakeCredexApi):
    def get_member_dashboard_by_phone(self, phone: str, *, token: str) -> Any:
        raise RuntimeError("a bug in the API client")


def test_failure_04_unexpected_error_surfaces_and_nothing_is_lost(bot: Bot) -> None:
    api = _ExplodingApi(clock=bot.clock)
    engine = build_engine(bot.store, api, clock=bot.clock)
    engine.handle(ALICE, "hi")
    before = bot.raw(ALICE)
    with pytest.raises(StepFailed) as info:
        engine.handle(ALICE, "menu")  # the refresh hits the bug
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.user_key == ALICE and info.value.stage == "menu"
    assert bot.raw(ALICE) == before
    assert engine.stats["step_failures"] == 1
    assert engine.handle(ALICE, "6").snapshot.stage == "account"  # and the user carries on


def test_failure_04_unstorable_update_is_refused_not_dropped(bot: Bot) -> None:
    class Sloppy(CredexBot):
        name = "credex"

        def greeting(self, ctx: Any) -> Any:
            return ctx.stay("saved?", set={"when": object()})  # not representable

    from fsm import Engine

    engine = Engine(Sloppy(bot.api), bot.store, verifier=bot.engine.verifier, clock=bot.clock)
    with pytest.raises(StepFailed) as info:
        engine.handle(BOB, "hi")
    assert info.value.__cause__ is not None
    assert bot.raw(BOB) is None


# -- 6. A stale JWT overwrites a freshly refreshed one ----------------------------------------


class _SlowLoginApi(FakeCredexApi):
    """The first login blocks until told to go: a slow response carrying an older token."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.first_issued = threading.Event()
        self.release = threading.Event()
        self._slow_done = False

    def login(self, phone: str) -> LoginResult:
        result = super().login(phone)
        if not self._slow_done:
            self._slow_done = True
            self.first_issued.set()
            assert self.release.wait(10)
        return result


def test_failure_06_stale_jwt_never_overwrites_a_fresh_one() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    api = _SlowLoginApi(clock=clock)
    slow = build_engine(store, api, clock=clock)
    fast = build_engine(store, api, clock=clock)
    outcome: dict[str, Any] = {}

    def slow_worker() -> None:
        outcome["slow"] = slow.handle(ALICE, "hi")

    thread = threading.Thread(target=slow_worker)
    thread.start()
    assert api.first_issued.wait(10)  # the slow worker holds the older token now
    clock.advance(60)
    fresh = fast.handle(ALICE, "hi")  # a newer login lands first
    fresh_token = fresh.snapshot.auth.token  # type: ignore[union-attr]
    api.release.set()
    thread.join(10)
    stored = decode_snapshot(store.load(ALICE).record.payload)  # type: ignore[union-attr]
    assert stored.auth is not None and stored.auth.token == fresh_token
    assert outcome["slow"].snapshot.auth.token == fresh_token  # its retry saw the fresh one
    assert slow.stats["conflicts"] == 1


def test_failure_06_older_token_refused_even_without_a_race(bot: Bot) -> None:
    from fsm.errors import TokenRefused

    old = bot.api.login(ALICE).token  # issued now
    bot.clock.advance(60)
    bot.engine.handle(ALICE, "hi")  # logs in with a newer token
    current = bot.engine.peek(ALICE)
    assert current is not None and current.auth is not None
    assert bot.engine.verifier is not None
    with pytest.raises(TokenRefused, match="stale"):
        bot.engine.verifier.replacement(current.auth, old)


# -- 7. The JWT is lost, duplicated in several places, or expires separately from the state ---


def test_failure_07_jwt_is_stored_once_and_kept_byte_identical(bot: Bot) -> None:
    first = bot.engine.handle(ALICE, "hi")
    token = first.snapshot.auth.token  # type: ignore[union-attr]
    for message in ["6", "ok", "menu", "2", "back", "nonsense"]:
        result = bot.engine.handle(ALICE, message)
        assert result.snapshot.auth is not None
        assert result.snapshot.auth.token == token  # not lost, not changed
    raw = bot.raw(ALICE) or b""
    assert raw.count(token.encode()) == 1  # one copy, inside the one session record
    for entry in bot.store.history(ALICE):
        assert token not in msgspec.json.encode(entry).decode()
    assert isinstance(bot.store.history(ALICE)[0], HistoryEntry)


def test_failure_07_jwt_expires_with_the_state_not_separately(bot: Bot) -> None:
    bot.engine.handle(ALICE, "hi")
    bot.clock.advance(1799)
    snap = bot.engine.peek(ALICE)
    assert snap is not None and snap.auth is not None and snap.stage == "menu"
    bot.clock.advance(2)
    assert bot.store.load(ALICE).record is None  # token, stage and data went together


# -- 8. Parts of one conversation expire separately --------------------------------------------


def test_failure_08_one_record_one_ttl(bot: Bot) -> None:
    bot.engine.handle(ALICE, "hi")
    bot.engine.handle(ALICE, "6")
    assert list(bot.store.scan()) == [ALICE]
    assert bot.store.ttl(ALICE) == pytest.approx(1800)
    bot.clock.advance(1000)
    bot.engine.handle(ALICE, "menu")  # a save refreshes the TTL of everything at once
    assert bot.store.ttl(ALICE) == pytest.approx(1800)
    snap = bot.engine.peek(ALICE)
    assert snap is not None
    assert (snap.stage, snap.auth is not None, "dashboard" in snap.data) == ("menu", True, True)
    bot.clock.advance(1801)
    assert bot.store.load(ALICE).record is None
    restarted = bot.engine.handle(ALICE, "hello")
    assert restarted.texts[0] == bot.engine.expired_notice  # told, not silently reset


# -- 14. Any error leaves the state half-updated ------------------------------------------------


def test_failure_14_no_error_leaves_a_half_updated_state() -> None:
    clock = FakeClock()
    store = FailingSaves(clock=clock)
    api = FakeCredexApi(clock=clock)
    engine = build_engine(store, api, clock=clock)
    engine.handle(ALICE, "hi")

    def stored() -> Snapshot:
        rec = store.load(ALICE).record
        assert rec is not None
        return decode_snapshot(rec.payload)

    cases = {
        "store down during save": lambda: setattr(store, "failing", 1),
        "API changed its shape": lambda: api.raw_response_override(
            "getMemberDashboardByPhone", {"unexpected": True}
        ),
    }
    for label, arrange in cases.items():
        before = store.load(ALICE).record
        arrange()
        try:
            result = engine.handle(ALICE, "menu")
        except FsmError as exc:
            assert isinstance(exc, StoreUnavailable), label  # only the store case raises
            assert store.load(ALICE).record == before, label  # all or nothing
        else:
            assert label == "API changed its shape", label
            # Handled as a clear reply: the new snapshot is whole and consistent.
            snap = stored()
            assert snap.version == before.version + 1, label  # type: ignore[union-attr]
            assert snap == result.snapshot, label
            assert snap.auth is not None and snap.data.get("dashboard"), label
    assert engine.handle(ALICE, "6").snapshot.stage == "account"
