"""``! window 24h`` in a transcript: the run plays WhatsApp's side of the 24-hour rule, so what
the bot says on its own to a user who last wrote longer ago shows as it would go out (its
template, or not sent); and an event that begins a new conversation after the old one expired
does not tell the user their session expired (they did not write)."""

from __future__ import annotations

import pytest

from adapters import MemoryStore
from fsm import (
    Context,
    Engine,
    FakeClock,
    Flow,
    Outcome,
    Stage,
    TemplateSpec,
    on_event,
    step,
    template,
)
from fsm.testing import Conversation
from fsm.transcript import NOT_SENT, TranscriptError

from .timer_flows import Nudge


class Parcels(Flow):
    """Each message is noted; ``parcel_sent`` says so with a template, ``ping`` without."""

    name = "parcels"
    takes_first_message = True
    session_ttl = 96 * 3600
    stages = (Stage("open", ("note",)),)
    transitions = ()
    templates = (TemplateSpec("parcel_sent", "en_US", body_params=1, buttons=1),)

    @step("open", "note")
    def note(self, ctx: Context) -> Outcome:
        return ctx.stay(f"noted {ctx.text}")

    @on_event("parcel_sent", reprompt=False)
    def parcel_sent(self, ctx: Context) -> Outcome:
        assert ctx.event is not None
        tracking = ctx.event.data["tracking"]
        return ctx.stay(
            template(
                "parcel_sent",
                "en_US",
                params=[tracking],
                buttons=["track"],
                fallback=f"Your parcel {tracking} is on its way.",
            )
        )

    @on_event("ping", reprompt=False)
    def ping(self, ctx: Context) -> Outcome:
        return ctx.stay("Ping!")


def chat(flow: Flow) -> Conversation:
    clock = FakeClock()
    return Conversation(Engine(flow, MemoryStore(clock=clock), clock=clock), "263770000001")


def test_outside_the_window_a_reply_shows_as_its_template_or_as_not_sent() -> None:
    run = chat(Parcels()).run(
        """
! window 24h
> hi
! clock +23h
! event parcel_sent {"tracking": "p-1"}
< Your parcel p-1 is on its way.
! clock +1h
! event parcel_sent {"tracking": "p-2"}
< [template parcel_sent en_US] p-2 [buttons: track]
<! on its way
! event ping
< (not sent: outside the window) Ping!
> back
< noted back
! event parcel_sent {"tracking": "p-3"}
< Your parcel p-3 is on its way.
! window off
! clock +30h
! event parcel_sent {"tracking": "p-4"}
< Your parcel p-4 is on its way.
"""
    )
    assert run.ok, run.failures
    assert NOT_SENT == "(not sent: outside the window)"


def test_a_user_who_never_wrote_has_no_window() -> None:
    run = chat(Nudge()).run('! window 1d\n! event gift {"amount": 3}\n< (not sent: outside')
    assert run.ok, run.failures


def test_without_a_window_replies_show_free_form() -> None:
    run = chat(Parcels()).run(
        '> hi\n! clock +25h\n! event parcel_sent {"tracking": "p-1"}\n< on its way\n<! [template'
    )
    assert run.ok, run.failures


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("! window", "use: ! window 24h"),
        ("! window 24h 1h", "use: ! window 24h"),
        ("! window soon", "soon"),
        ("! window 0", "longer than 0 seconds"),
    ],
)
def test_a_bad_window_says_how_to_write_it(line: str, message: str) -> None:
    with pytest.raises(TranscriptError, match=message):
        chat(Parcels()).run(line)


def test_a_window_needs_a_fake_clock() -> None:
    conversation = Conversation(Engine(Parcels(), MemoryStore()), "263770000001")
    with pytest.raises(TranscriptError, match="no fake clock"):
        conversation.run("! window 24h")


def test_an_event_that_restarts_an_expired_conversation_says_nothing_of_it() -> None:
    run = chat(Nudge()).run(
        """
> hi
< Menu: 1 to order
! clock +1h
! event gift {"amount": 3}
< A gift of 3
<! Your session expired
> hi
<! Your session expired
"""
    )
    assert run.ok, run.failures
    expired = chat(Nudge()).run("> hi\n! clock +1h\n> hi\n< Your session expired")
    assert expired.ok, expired.failures  # a user who writes is still told
