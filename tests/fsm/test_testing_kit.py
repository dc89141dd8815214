"""fsm.testing and fsm.transcript on the framework's own sample flows (not the Credex bot)."""

from __future__ import annotations

import pytest

from adapters import MemoryStore
from fsm import Engine, FakeClock
from fsm.testing import ABSENT, Conversation
from fsm.transcript import TranscriptError, contains_in_order, duration, parse
from tests.fsm.conftest import VaultWorld, make_engine
from tests.fsm.sample_flows import Counter


@pytest.fixture
def counter(clock: FakeClock, engine_kind: str) -> Conversation:
    """The kit on both engines (an AsyncEngine is given to Conversation as it is)."""
    engine = make_engine(
        engine_kind, Counter(), MemoryStore(clock=clock), clock=clock, session_ttl=60
    )
    return Conversation(getattr(engine, "engine", engine), "ann", clock=clock)


def test_say_and_expect_chain(counter: Conversation) -> None:
    counter.say("go").expect("counting", stage="counting", step="count", data={"count": 0})
    turn = counter.say("+1").expect("1", data={"count": 1}, absent=("stopped",))
    assert (turn.stage, turn.step, turn.texts) == ("counting", "count", ["1"])
    assert counter.snapshot is not None and counter.snapshot.version == 2


def test_a_failed_expectation_quotes_the_bot(counter: Conversation) -> None:
    counter.say("go")
    with pytest.raises(AssertionError) as info:
        counter.say("+1").expect("2", stage="idle", data={"count": 5, "missing": 1})
    message = str(info.value)
    assert "after '+1' (counting.count v2)" in message
    assert "expected '2' in the replies" in message
    assert "expected stage 'idle', at 'counting'" in message
    assert "expected data['count'] == 5, got 1" in message
    assert "expected data['missing'] == 1, got <absent>" in message
    assert "    | 1" in message


def test_absent_data(counter: Conversation) -> None:
    counter.say("go")
    counter.say("stop").expect("stopped", stage="idle", data={"count": ABSENT})
    with pytest.raises(AssertionError, match=r"expected data\['count'\] to be absent, got 0"):
        counter.say("go").expect(data={"count": ABSENT})


def test_fragments_must_appear_in_order() -> None:
    assert contains_in_order("a b c", ["a", "c"]) is None
    assert contains_in_order("a b c", ["c", "a"]) == "a"
    assert contains_in_order("", []) is None


def test_twice_is_a_redelivery_applied_once(counter: Conversation) -> None:
    counter.say("go")
    first, again = counter.twice("+1")
    assert not first.result.duplicate and again.result.duplicate
    assert again.texts == [] and counter.snapshot.data["count"] == 1  # type: ignore[union-attr]


def test_concurrently_same_message_applies_once(counter: Conversation) -> None:
    counter.say("go")
    turns = counter.concurrently("+1", workers=6)
    assert sum(not t.result.duplicate for t in turns) == 1
    assert counter.snapshot.data["count"] == 1  # type: ignore[union-attr]


def test_concurrently_separate_taps_apply_each(counter: Conversation) -> None:
    counter.say("go")
    turns = counter.concurrently("+1", workers=6, same_message=False)
    assert sorted(t.snapshot.data["count"] for t in turns) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="workers"):
        counter.concurrently("+1", workers=1)


def test_advance_moves_the_engines_clock(counter: Conversation) -> None:
    counter.say("go")
    counter.advance("2m")  # past the 60 s session TTL
    counter.say("+1").expect(counter.engine.expired_notice, "counting", data={"count": 0})
    without = Conversation(Engine(Counter(), MemoryStore()), "bo")  # the system clock
    with pytest.raises(RuntimeError, match="clock"):
        without.advance(5)


def test_run_a_transcript_with_every_line_kind(vault: VaultWorld) -> None:
    chat = Conversation(vault.engine, "ann", clock=vault.clock)
    chat.run(
        """
        # comments and blank lines are skipped

        hi
        < password?
        = auth.password
        > open sesame
        < welcome
        < menu (balance 0)
        <! wrong password
        = home
        ! again
        ! clock +9m
        > what
        < say deposit or logout
        ! clock +2m
        > deposit
        < Your sign-in has expired.
        = auth
        ! user bob
        > hi
        = auth.password
        """
    )
    assert chat.user == "bob"  # "! user" carries over to later says
    assert [t.result.duplicate for t in chat.turns] == [False, False, True, False, False, False]


def test_runs_in_one_conversation_never_reuse_message_ids(counter: Conversation) -> None:
    counter.run("> go\n")
    counter.run("> +1\n= counting\n")
    counter.run("> +1\n")
    assert counter.snapshot.data["count"] == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("+30m", 1800), ("2h", 7200), ("1d", 86400), ("1.5s", 1.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


def test_parse_classifies_lines() -> None:
    lines = parse("hi\n> yes\n< ok\n<! no\n= a.b\n! clock 5\n# c\n")
    assert [(ln.number, ln.kind, ln.text) for ln in lines] == [
        (1, "say", "hi"),
        (2, "say", "yes"),
        (3, "expect", "ok"),
        (4, "refuse", "no"),
        (5, "state", "a.b"),
        (6, "directive", "clock 5"),
    ]
    with pytest.raises(TranscriptError, match="line 2"):
        parse("hi\n=\n")


def test_the_engines_fake_clock_is_used_by_default(clock: FakeClock) -> None:
    engine = Engine(Counter(), MemoryStore(clock=clock), clock=clock, session_ttl=60)
    chat = Conversation(engine, "ann")
    assert chat.clock is clock
    run = chat.run("> go\n! clock +2m\n> +1\n< Your session expired\n")
    assert len(run.turns) == 2


def test_an_empty_message_id_is_refused(counter: Conversation) -> None:
    with pytest.raises(ValueError, match="message_id"):
        counter.say("go", message_id="")


def test_expectations_within_one_message_match_in_order(counter: Conversation) -> None:
    counter.say("go")
    counter.run("> stop\n< stopped\n")
    with pytest.raises(AssertionError, match="after the previous expectation"):
        counter.run("> go\n< counting\n< counting\n")
