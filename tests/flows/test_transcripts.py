"""Every transcript in flows/credex/transcripts runs in the suite, in-process, with the kit."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.credex.directives import directives
from fsm.testing import Conversation
from fsm.transcript import TranscriptError
from tests.flows.conftest import ALICE, Bot, HttpBot

TRANSCRIPTS = sorted((Path(__file__).parents[2] / "flows" / "credex" / "transcripts").glob("*.txt"))
FLOWS = {
    "login",
    "registration",
    "offer",
    "accept",
    "decline",
    "cancel",
    "upgrade",
    "ledger",
    "statement",
}
#: Beyond one per flow: offers arriving from outside, the confirm steps' timers, and the 24-hour
#: window.
PROACTIVE = {"offer_received", "confirm_idle", "window"}


def test_there_is_a_transcript_per_flow() -> None:
    assert {p.stem for p in TRANSCRIPTS} == FLOWS | PROACTIVE


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_transcript(bot: Bot, path: Path) -> None:
    chat = Conversation(bot.engine, ALICE, clock=bot.clock, directives=directives(bot.api))
    chat.run_file(path)
    assert chat.turns  # it really talked
    assert all("eyJ" not in "".join(t.texts) for t in chat.turns)  # no token in any reply


def test_a_wrong_expectation_fails_with_what_the_bot_said(bot: Bot) -> None:
    chat = Conversation(bot.engine, ALICE, clock=bot.clock)
    with pytest.raises(AssertionError) as info:
        chat.run("> hi\n< Welcome Bob\n<! Offer credex\n= credex.amount\n", source="t")
    message = str(info.value)
    assert "t:2: expected 'Welcome Bob' in:" in message
    assert "| Welcome Alice (@alice)." in message
    assert "t:3: did not expect 'Offer credex'" in message
    assert "t:4: expected to be at credex.amount, at menu.dashboard" in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("< before any message", "expectation before any message"),
        ("! again", "'! again' before any message"),
        ("> hi\n! clock soon", "not a duration"),
        ("> hi\n! teleport", "unknown directive 'teleport'"),
        ("> hi\n! api fail createCredex", "use: ! api fail"),
        ("> hi\n<", "needs some text"),
    ],
)
def test_bad_transcript_lines_are_named(bot: Bot, text: str, problem: str) -> None:
    chat = Conversation(bot.engine, ALICE, clock=bot.clock, directives=directives(bot.api))
    with pytest.raises(TranscriptError, match=problem):
        chat.run(text)


def test_again_redelivers_the_last_message(bot: Bot) -> None:
    chat = Conversation(bot.engine, ALICE, clock=bot.clock)
    chat.run("> hi\n! again\n= menu\n")
    assert [t.result.duplicate for t in chat.turns] == [False, True]
    assert bot.api.count("login") == 1


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_transcript_over_http(http_bot: HttpBot, path: Path) -> None:
    """The same transcripts with the bot's Credex API a real HTTP server: every call crossed
    the wire, and the directives (``! api fail``, ``! api garble``) reached it there."""
    bot = http_bot
    chat = Conversation(bot.engine, ALICE, clock=bot.clock, directives=directives(bot.api))
    chat.run_file(path)
    assert chat.turns
    assert bot.server.requests  # the bot really went over HTTP
    assert len(bot.server.requests) == len(bot.api.calls)  # and only over HTTP
    assert all("eyJ" not in "".join(t.texts) for t in chat.turns)
