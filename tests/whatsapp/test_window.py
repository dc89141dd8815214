"""WhatsApp's 24-hour window, decided before sending: served for real on loopback with a fake
clock and the fake Graph API. Inside the window a reply goes out free-form; 25 hours after the
user's last message a timer's or an event's reply goes out as its message template, with the
payload the Graph API takes; one without a template is not attempted (dropped, or kept until
the user writes), counted; a 131047 met anyway is answered with the template, once."""

from __future__ import annotations

import time
from typing import Any

import pytest

from adapters.whatsapp import WhatsAppBot
from adapters.whatsapp.fake_graph import describe
from adapters.whatsapp.window import WINDOW, window_closed
from fsm import (
    Context,
    Flow,
    Outcome,
    Stage,
    TemplateSpec,
    buttons,
    currency,
    date_time,
    media,
    on_event,
    step,
    template,
    timeout,
)

from . import payloads as p
from .conftest import stored
from .fake_graph import FakeGraph
from .proactive import ALICE, Bot, event_body, served, until

HOUR = 3600.0
LABEL = "https://files.example/labels/TX1.pdf"
TICK = 0.05


class Orders(Flow):
    """A conversation that lives 3 days: a reminder 25 hours after the user's last message
    (with a template), a parcel event (with a template) and a note event (without one)."""

    name = "orders"
    takes_first_message = True
    session_ttl = 72 * HOUR
    stages = (Stage("open", ("note",)),)
    transitions = ()
    templates = (
        TemplateSpec("order_reminder", "en", body_params=2, header="text", buttons=2),
        TemplateSpec("parcel_sent", "en_US", body_params=1, header="document"),
    )

    @step("open", "note")
    def note(self, ctx: Context) -> Outcome:
        if ctx.pressed == "keep_order":
            return ctx.stay("Good, your order stays.")
        if ctx.text == "boom":
            raise RuntimeError("the step's own bug")
        return ctx.stay(f"noted {ctx.text}")

    @timeout("open", "note", after="25h")
    def remind(self, ctx: Context) -> Outcome:
        asked = buttons("Still want your order?", [("keep_order", "Yes"), ("drop_order", "No")])
        return ctx.stay(
            template(
                "order_reminder",
                "en",
                header="Your order",
                params=[currency("12.5", "USD", "$12.50"), date_time("March 3, 2026")],
                buttons=["keep_order", "drop_order"],
                fallback=asked,
            )
        )

    @on_event("parcel_sent", reprompt=False)
    def parcel_sent(self, ctx: Context) -> Outcome:
        assert ctx.event is not None
        tracking = ctx.event.data["tracking"]
        return ctx.stay(
            template(
                "parcel_sent",
                "en_US",
                params=[tracking],
                header=media("document", link=LABEL),
                fallback=f"Your parcel {tracking} is on its way.",
            )
        )

    @on_event("note", reprompt=False)
    def noted(self, ctx: Context) -> Outcome:
        assert ctx.event is not None
        return ctx.stay(f"Note: {ctx.event.data['note']}")


PARCEL_TEMPLATE = {
    "name": "parcel_sent",
    "language": {"code": "en_US"},
    "components": [
        {"type": "header", "parameters": [{"type": "document", "document": {"link": LABEL}}]},
        {"type": "body", "parameters": [{"type": "text", "text": "TX1"}]},
    ],
}


def hello(bot: Bot, text: str = "hello") -> None:
    assert bot.message(p.body([p.text(ALICE, text)])).status_code == 200


def post(bot: Bot, event: str, event_id: str, **data: Any) -> None:
    answer = bot.event(event_body(ALICE, event, data=data, event_id=event_id))
    assert answer.status_code == 200, answer.text


def window_metric(bot: Bot, outcome: str) -> float:
    return bot.metric("fsm_whatsapp_window_closed_total", outcome=outcome)


def test_the_window_is_judged_from_the_last_message_and_unknown_is_not_closed() -> None:
    assert not window_closed(1_000.0, 1_000.0 + WINDOW - 1)
    assert window_closed(1_000.0, 1_000.0 + WINDOW)
    assert not window_closed(0.0, 1e9)  # not known: tried, the Graph API decides


def test_inside_the_window_a_template_reply_goes_out_free_form(graph: FakeGraph) -> None:
    with served(graph, flow=Orders()) as bot:
        hello(bot)
        bot.clock.advance(23 * HOUR)
        post(bot, "parcel_sent", "p-1", tracking="TX1")
        assert graph.texts(ALICE) == ["noted hello", "Your parcel TX1 is on its way."]
        assert graph.templates() == []
        assert window_metric(bot, "template") == 0


def test_outside_the_window_an_event_reply_goes_out_as_its_template(graph: FakeGraph) -> None:
    with served(graph, flow=Orders()) as bot:
        hello(bot)
        bot.clock.advance(25 * HOUR)
        post(bot, "parcel_sent", "p-1", tracking="TX1")
        assert graph.templates(ALICE) == [PARCEL_TEMPLATE]
        attempts = graph.sends(accepted=False)
        assert [a.body["type"] for a in attempts] == ["text", "template"]  # no free-form try
        assert [a.answered for a in attempts] == [200, 200]
        assert window_metric(bot, "template") == 1
        assert stored(bot.store, ALICE).outbox == ()
        post(bot, "parcel_sent", "p-1", tracking="TX1")  # the caller's retry: a duplicate
        assert len(graph.templates(ALICE)) == 1


def test_a_timer_25_hours_on_sends_its_template_and_a_tap_on_it_comes_back_as_pressed(
    graph: FakeGraph,
) -> None:
    with served(graph, flow=Orders(), timer_tick=TICK) as bot:
        hello(bot)
        time.sleep(4 * TICK)
        bot.clock.advance(25 * HOUR)
        until(lambda: graph.templates(ALICE), "the reminder's template")
        [sent] = graph.templates(ALICE)
        assert sent == {
            "name": "order_reminder",
            "language": {"code": "en"},
            "components": [
                {"type": "header", "parameters": [{"type": "text", "text": "Your order"}]},
                {
                    "type": "body",
                    "parameters": [
                        {
                            "type": "currency",
                            "currency": {
                                "fallback_value": "$12.50",
                                "code": "USD",
                                "amount_1000": 12500,
                            },
                        },
                        {"type": "date_time", "date_time": {"fallback_value": "March 3, 2026"}},
                    ],
                },
                *(
                    {
                        "type": "button",
                        "sub_type": "quick_reply",
                        "index": str(n),
                        "parameters": [{"type": "payload", "payload": payload}],
                    }
                    for n, payload in enumerate(["keep_order", "drop_order"])
                ),
            ],
        }
        until(lambda: stored(bot.store, ALICE).outbox == (), "the confirmation")
        assert bot.message(p.body([p.template_button(ALICE, "keep_order")])).status_code == 200
        assert graph.texts(ALICE)[-1] == "Good, your order stays."  # the window is open again
        assert graph.sends()[-1].body["type"] == "text"
        assert window_metric(bot, "template") == 1


def test_a_131047_met_anyway_is_answered_with_the_template_once(graph: FakeGraph) -> None:
    """The bot's clock says the window is open; Meta's says it closed (the clocks differ)."""
    with served(graph, flow=Orders()) as bot:
        hello(bot)
        graph.close_window(ALICE)
        post(bot, "parcel_sent", "p-1", tracking="TX1")
        attempts = graph.sends(accepted=False)[1:]
        assert [(a.body["type"], a.answered) for a in attempts] == [
            ("text", 400),
            ("template", 200),
        ]
        assert graph.templates(ALICE) == [PARCEL_TEMPLATE]
        assert describe(attempts[0]).startswith("refused (400): outside the 24-hour window")
        assert describe(attempts[1]) == f"to {ALICE} (template): [template parcel_sent en_US]"
        assert bot.metric("fsm_whatsapp_sends_total", outcome="failed", code="131047") == 1
        assert window_metric(bot, "template") == 1
        assert stored(bot.store, ALICE).outbox == ()


def test_a_131047_for_a_reply_without_a_template_gives_it_up(graph: FakeGraph) -> None:
    with served(graph, flow=Orders()) as bot:
        hello(bot)
        graph.close_window(ALICE)
        post(bot, "note", "n-1", note="bring the receipt")
        assert [a.answered for a in graph.sends(accepted=False)] == [200, 400]  # tried once
        assert window_metric(bot, "dropped") == 1
        assert stored(bot.store, ALICE).outbox == ()


def test_outside_the_window_a_reply_without_a_template_is_not_attempted(
    graph: FakeGraph,
) -> None:
    with served(graph, flow=Orders()) as bot:
        hello(bot)
        bot.clock.advance(25 * HOUR)
        post(bot, "note", "n-1", note="bring the receipt")
        assert len(graph.sends(accepted=False)) == 1  # hello's reply only
        assert window_metric(bot, "dropped") == 1
        assert stored(bot.store, ALICE).outbox == ()  # dropped: confirmed unsent
        post(bot, "note", "n-1", note="bring the receipt")  # a duplicate: nothing again
        hello(bot, "back again")  # the user writes: the dropped reply does not come back
        assert graph.texts(ALICE) == ["noted hello", "noted back again"]
        assert window_metric(bot, "dropped") == 1


def test_kept_replies_wait_for_the_users_next_message_and_go_first(graph: FakeGraph) -> None:
    with served(graph, flow=Orders(), closed_window="keep") as bot:
        hello(bot)
        bot.clock.advance(25 * HOUR)
        post(bot, "note", "n-1", note="one")
        post(bot, "parcel_sent", "p-1", tracking="TX1")  # a template goes out meanwhile
        post(bot, "note", "n-2", note="two")
        assert graph.texts(ALICE) == ["noted hello", "[template parcel_sent en_US]"]
        assert [o.reply.body for o in stored(bot.store, ALICE).outbox] == ["Note: one", "Note: two"]
        assert window_metric(bot, "kept") == 2  # each counted once, though looked at again
        hello(bot, "back again")
        assert graph.texts(ALICE)[2:] == ["Note: one", "Note: two", "noted back again"]
        assert stored(bot.store, ALICE).outbox == ()
        assert window_metric(bot, "kept") == 2 and window_metric(bot, "dropped") == 0


def test_a_message_that_fails_still_opens_the_window_for_what_is_pending(
    graph: FakeGraph,
) -> None:
    """The user wrote, though the step failed and nothing was saved: what was kept goes out
    before the failure notice, free-form."""
    with served(graph, flow=Orders(), closed_window="keep") as bot:
        hello(bot)
        bot.clock.advance(25 * HOUR)
        post(bot, "note", "n-1", note="one")
        hello(bot, "boom")
        assert graph.texts(ALICE) == ["noted hello", "Note: one", Orders.failure_reply]
        assert stored(bot.store, ALICE).outbox == ()


def test_the_bot_refuses_an_unknown_setting(graph: FakeGraph) -> None:
    with served(graph) as bot, pytest.raises(ValueError, match="closed_window"):
        WhatsAppBot(bot.bot.engine, bot.bot.client, closed_window="wait")  # type: ignore[arg-type]
