"""Transcripts with timers and events: ``! clock +10m`` fires what falls due on the way and
``<`` checks what it said, ``! event NAME {json} id=ID`` applies an event; on the memory
store and on a real redis-server alike, in pytest and in ``fsm chat --script``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapters import MemoryStore
from fsm import Engine, FakeClock
from fsm.blocking import BlockingEngine
from fsm.cli import main
from fsm.testing import Conversation
from fsm.transcript import Runner, TranscriptError, event_arguments

from .kit_stores import STORES, engine_on
from .timer_flows import Nudge

ORDER = """
> hi
< Menu: 1 to order
> 1
< How much?
> 5
< Confirm 5? yes/no
"""

NUDGED = (
    ORDER
    + """
! clock +9m
<! Still there?
= order.confirm
! clock +1m
< Still there? Confirm 5? yes/no
= order.confirm
! event ping {"note": "hello there"}
< Ping: hello there
< Confirm 5? yes/no
! event ping {} id=ev-1
< Ping:
! event ping {} id=ev-1
<! Ping
! clock +15m
< Your order was dropped.
< Menu: 1 to order
= menu.home
! event buy
<! Bought
= menu.home
"""
)


@pytest.fixture(params=STORES)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine | BlockingEngine]:
    yield from engine_on(request.param)


def test_clock_and_events_in_a_transcript(engine: Engine | BlockingEngine) -> None:
    chat = Conversation(engine, "ann")
    run = chat.run(NUDGED)
    assert run.ok and run.checks == 16
    assert [(p.user, p.cause) for p in run.proactive] == [
        ("ann", "! clock +1m"),
        ("ann", "! event ping"),
        ("ann", "! event ping"),
        ("ann", "! event ping"),  # the repeat: a duplicate, said nothing
        ("ann", "! clock +15m"),
        ("ann", "! event buy"),  # ignored: no handler at the menu
    ]
    assert run.proactive[3].result.duplicate and run.proactive[5].result.ignored
    assert chat.proactive == run.proactive  # the kit keeps them too
    assert len(run.turns) == 3  # the messages
    snap = chat.snapshot
    assert snap is not None and snap.stage == "menu" and not snap.timers


def test_what_the_clock_said_is_checked(engine: Engine | BlockingEngine) -> None:
    chat = Conversation(engine, "ann")
    with pytest.raises(AssertionError) as info:
        chat.run(ORDER + "! clock +10m\n< Your order was dropped.\n= menu\n")
    message = str(info.value)
    assert "transcript:9: expected 'Your order was dropped.' in:" in message
    assert "    | Still there? Confirm 5? yes/no" in message
    assert "transcript:10: expected to be at menu, at order" in message
    with pytest.raises(AssertionError, match=r"expected 'Still there\?' in:\n    \| \(no reply\)"):
        chat.run("! clock +1m\n< Still there?\n")  # nothing fired: nothing was said


def test_other_users_firings_are_not_the_current_users(engine: Engine | BlockingEngine) -> None:
    chat = Conversation(engine, "ann")
    run = chat.run(
        ORDER
        + "! clock +3m\n! user bob\n"
        + ORDER
        + """
! clock +7m
<! Still there?
= order.confirm
! clock +3m
< Still there?
! user cid
! event gift {"amount": 3}
< A gift of 3
= menu.home
"""
    )
    assert [(p.user, p.cause) for p in run.proactive] == [
        ("ann", "! clock +7m"),  # ann's reminder, while the transcript spoke as bob
        ("bob", "! clock +3m"),
        ("cid", "! event gift"),
    ]
    assert chat.user == "cid"


def test_a_transcript_runner_on_its_own_fires_too() -> None:
    clock = FakeClock()
    engine = Engine(Nudge(), MemoryStore(clock=clock), clock=clock)
    lines: list[str] = []
    runner = Runner(engine, "263770000001", clock=clock, echo=lines.append)
    run = runner.run(ORDER + "! user 263770000002\n" + ORDER + "! clock +10m\n< Still there?\n")
    assert run.ok and len(run.proactive) == 2
    at = lines.index("     (! clock +10m)")
    assert lines[at + 1 :] == [
        "bot> Still there? Confirm 5? yes/no",
        "     [order.confirm v4]",
        "     (1 timer fired for other users)",
    ]
    assert all("263770000001" not in line for line in lines)  # whose it was is not shown


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("! event nope", "transcript:2: flow 'nudge' declares no event 'nope'"),
        ("! event", "transcript:2: use: ! event NAME"),
        ('! event ping {"note": ', "transcript:2: the event's data is not a JSON object"),
        ("! event ping [1]", "transcript:2: use: ! event NAME"),
        ("! event ping {} idx=3", "transcript:2: use: ! event NAME"),
        ("! clock", "transcript:2: use: ! clock +SECONDS"),
        ("! tick", "unknown directive 'tick' (known: again, clock, event, send, user, window)"),
    ],
)
def test_bad_directive_lines_name_the_line(line: str, message: str) -> None:
    clock = FakeClock()
    chat = Conversation(Engine(Nudge(), MemoryStore(clock=clock), clock=clock), "u")
    with pytest.raises(TranscriptError) as info:
        chat.run(f"> hi\n{line}\n")
    assert message in str(info.value)


def test_event_arguments() -> None:
    assert event_arguments("ping") == ("ping", {}, None)
    assert event_arguments("ping id=e-9") == ("ping", {}, "e-9")
    data = '{"who": {"name": "A id=b"}, "n": [1, 2]}'
    assert event_arguments(f"offer  {data}   id=x") == (
        "offer",
        {"who": {"name": "A id=b"}, "n": [1, 2]},
        "x",
    )
    for bad in ("", "{}", "ping id=", "ping id=a b", "ping {} {}", 'ping "x"'):
        with pytest.raises(ValueError, match="use: ! event NAME"):
            event_arguments(bad)


def nudge(clock: FakeClock) -> Engine:
    """``fsm chat --engine`` takes this: the Nudge flow on the memory store."""
    return Engine(Nudge(), MemoryStore(clock=clock), clock=clock)


def test_fsm_chat_script_shows_what_timers_and_events_said(tmp_path: Path) -> None:
    script = tmp_path / "nudge.txt"
    script.write_text(NUDGED, encoding="utf-8")
    ref = f"{__name__}:nudge"
    result = CliRunner().invoke(main, ["chat", "--engine", ref, "--script", str(script)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "     (! clock +1m)\nbot> Still there? Confirm 5? yes/no\n" in out
    assert '     (! event ping {"note": "hello there"})\nbot> Ping: hello there\n' in out
    assert "     (! event buy)\n     [menu.home v7]\n     (not applied: no handler for " in out
    assert "transcript ok: 3 messages and 16 expectations checked" in out
