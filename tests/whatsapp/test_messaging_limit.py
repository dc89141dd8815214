"""The messaging limit, served for real on loopback with a fake clock and the fake Graph API: a
template sent outside a user's 24-hour window counts that user for 24 hours; past the limit a
new user's proactive reply is held in the outbox (never refused, never lost) and the ticker
sends it once a counted user's 24 hours are over; a user counted already does not count twice;
replies inside the window are never held; nothing is sent twice."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from adapters.whatsapp import ticker as ticker_module
from adapters.whatsapp.limits import DAY, MessagingLimit
from adapters.whatsapp.server import build_bot
from adapters.whatsapp.settings import Settings, SettingsError
from fsm import Context, Flow, Outcome, Stage, TemplateSpec, on_event, step, template, timeout
from fsm.async_engine import AsyncEngine

from . import payloads as p
from .conftest import stored
from .fake_graph import FakeGraph, error
from .limit_rules import counts_unique_users_in_a_moving_day
from .proactive import Bot, event_body, served, until

HOUR = 3600.0
TICK = 0.05
USERS = [f"2637700002{n:02d}" for n in range(6)]


class Parcels(Flow):
    """Each message is noted; a ``parcel_sent`` event says so, with a template."""

    name = "parcels"
    takes_first_message = True
    session_ttl = 96 * HOUR  # conversations outlive the window, and the limit's 24 hours
    stages = (Stage("open", ("note",)),)
    transitions = ()
    templates = (TemplateSpec("parcel_sent", "en_US", body_params=1),)

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
                fallback=f"Your parcel {tracking} is on its way.",
            )
        )


class Offers(Flow):
    """An ``offer`` event starts a conversation (its window is not known: the user never
    wrote in it), with a template; conversations last the default 30 minutes."""

    name = "offers"
    takes_first_message = True
    stages = (Stage("open", ("note",)),)
    transitions = ()
    templates = (TemplateSpec("offer_received", "en", body_params=1),)

    @step("open", "note")
    def note(self, ctx: Context) -> Outcome:
        return ctx.stay(f"noted {ctx.text}")

    @on_event("offer", starts=True, reprompt=False)
    def offer(self, ctx: Context) -> Outcome:
        assert ctx.event is not None
        amount = ctx.event.data["amount"]
        return ctx.stay(
            template("offer_received", "en", params=[amount], fallback=f"An offer: {amount}.")
        )


class Reminders(Flow):
    """Each message is noted and arms a reminder 25 hours later, with a template."""

    name = "reminders"
    takes_first_message = True
    session_ttl = 96 * HOUR
    stages = (Stage("open", ("note",)),)
    transitions = ()
    templates = (TemplateSpec("still_there", "en", body_params=1),)

    @step("open", "note")
    def note(self, ctx: Context) -> Outcome:
        return ctx.stay(f"noted {ctx.text}")

    @timeout("open", "note", after="25h")
    def remind(self, ctx: Context) -> Outcome:
        return ctx.stay(template("still_there", "en", params=["you"], fallback="Still there?"))


PARCEL = "[template parcel_sent en_US]"


def hello(bot: Bot, user: str) -> None:
    assert bot.message(p.body([p.text(user, "hello")])).status_code == 200


def parcel(bot: Bot, user: str, event_id: str) -> int:
    """POST a parcel_sent event for ``user``: the answer's status."""
    raw = event_body(user, "parcel_sent", data={"tracking": event_id}, event_id=event_id)
    return bot.event(raw).status_code


def gauges(bot: Bot) -> tuple[float, float, float, float]:
    """The limit, the users counted, the users waiting, and the holds so far."""
    return (
        bot.metric("fsm_whatsapp_messaging_limit"),
        bot.metric("fsm_whatsapp_messaging_limit_users"),
        bot.metric("fsm_whatsapp_messaging_limit_waiting"),
        bot.metric("fsm_whatsapp_messaging_limit_held_total"),
    )


def test_past_the_limit_a_new_user_waits_until_the_first_counted_users_day_is_over(
    graph: FakeGraph,
) -> None:
    with served(graph, flow=Parcels(), timer_tick=TICK, messaging_limit=5) as bot:
        for user in USERS:
            hello(bot, user)
        bot.clock.advance(25 * HOUR)  # every window is closed
        for n, user in enumerate(USERS[:5]):
            assert parcel(bot, user, f"p-{n}") == 200
            bot.clock.advance(HOUR)  # the first counted user leaves the count first
        assert gauges(bot) == (5, 5, 0, 0)
        assert parcel(bot, USERS[5], "p-5") == 202  # held: a ticker sends it when a slot frees
        assert [len(graph.templates(user)) for user in USERS] == [1, 1, 1, 1, 1, 0]
        [held] = stored(bot.store, USERS[5]).outbox
        assert held.reply.template is not None
        assert gauges(bot) == (5, 5, 1, 1)
        time.sleep(10 * TICK)  # rounds go by: no slot is free, it waits
        raw = event_body(USERS[5], "parcel_sent", data={"tracking": "p-5"}, event_id="p-5")
        answer = bot.event(raw)  # posted again: a duplicate, still held
        assert answer.status_code == 202
        assert answer.json() == {"applied": False, "duplicate": True, "ignored": "", "held": True}
        assert graph.templates(USERS[5]) == [] and gauges(bot) == (5, 5, 1, 1)

        bot.clock.advance(19 * HOUR)  # 24 hours after the first template: its slot frees
        until(lambda: graph.templates(USERS[5]), "the held template")
        until(lambda: stored(bot.store, USERS[5]).outbox == (), "its confirmation")
        assert gauges(bot) == (5, 5, 0, 1)  # the first user left, the sixth came in
        time.sleep(10 * TICK)
        assert [graph.texts(user)[1:] for user in USERS] == [[PARCEL]] * 6  # each once
        assert parcel(bot, USERS[5], "p-5") == 200  # the event's retry: nothing again
        assert len(graph.templates(USERS[5])) == 1


def test_a_user_counted_already_does_not_count_twice(graph: FakeGraph) -> None:
    alice, bob, carol = USERS[:3]
    with served(graph, flow=Parcels(), messaging_limit=2) as bot:
        for user in (alice, bob, carol):
            hello(bot, user)
        bot.clock.advance(25 * HOUR)
        assert parcel(bot, alice, "a-1") == 200
        assert parcel(bot, alice, "a-2") == 200  # alice again: still one user
        assert gauges(bot)[1] == 1
        assert parcel(bot, bob, "b-1") == 200
        assert parcel(bot, carol, "c-1") == 202  # a third user: held
        assert parcel(bot, alice, "a-3") == 200  # alice is counted: she gets hers
        assert [len(graph.templates(user)) for user in (alice, bob, carol)] == [3, 1, 0]
        assert gauges(bot) == (2, 2, 1, 1)


def test_replies_inside_the_window_are_never_held(graph: FakeGraph) -> None:
    alice, bob = USERS[:2]
    with served(graph, flow=Parcels(), messaging_limit=1) as bot:
        hello(bot, alice)
        bot.clock.advance(25 * HOUR)
        assert parcel(bot, alice, "a-1") == 200  # the one slot is taken
        hello(bot, bob)  # bob writes: his window is open
        for n in range(3):
            assert parcel(bot, bob, f"b-{n}") == 200
        hello(bot, alice)  # so is alice's, now
        assert graph.texts(bob) == ["noted hello"] + [
            f"Your parcel b-{n} is on its way." for n in range(3)
        ]
        assert graph.texts(alice) == ["noted hello", PARCEL, "noted hello"]
        assert gauges(bot) == (1, 1, 0, 0)


def test_a_held_users_replies_go_first_when_they_write(graph: FakeGraph) -> None:
    alice, bob = USERS[:2]
    with served(graph, flow=Parcels(), messaging_limit=1) as bot:
        hello(bot, alice)
        hello(bot, bob)
        bot.clock.advance(25 * HOUR)
        assert parcel(bot, alice, "a-1") == 200
        assert parcel(bot, bob, "b-1") == 202  # held
        assert bot.message(p.body([p.text(bob, "any news?")])).status_code == 200
        assert graph.texts(bob) == [
            "noted hello",
            "Your parcel b-1 is on its way.",
            "noted any news?",
        ]
        assert stored(bot.store, bob).outbox == ()
        assert gauges(bot) == (1, 1, 0, 1)  # his window opened: he was not counted


def test_a_template_the_graph_api_refuses_gives_its_slot_back(graph: FakeGraph) -> None:
    alice, bob = USERS[:2]
    with served(graph, flow=Parcels(), messaging_limit=1) as bot:
        hello(bot, alice)
        hello(bot, bob)
        bot.clock.advance(25 * HOUR)
        graph.plan(error(400, 132001, "template name does not exist"))
        assert parcel(bot, alice, "a-1") == 200  # given up: a final error
        assert graph.templates(alice) == [] and gauges(bot)[1] == 0
        assert parcel(bot, bob, "b-1") == 200  # the slot was not spent
        assert len(graph.templates(bob)) == 1


def test_timers_past_the_limit_are_held_beyond_the_retries_and_sent_when_a_slot_frees(
    graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ticker_module, "RETRY_FIRST", 0.01)  # the usual retries: quickly spent
    alice, bob = USERS[:2]
    with served(graph, flow=Reminders(), timer_tick=TICK, messaging_limit=1) as bot:
        hello(bot, alice)
        hello(bot, bob)
        time.sleep(4 * TICK)
        bot.clock.advance(25 * HOUR)  # both reminders are due: one slot
        until(lambda: len(graph.templates()) == 1, "the first reminder")
        until(lambda: gauges(bot)[2] == 1, "the second held")
        first = graph.sends()[-1].body["to"]
        second = bob if first == alice else alice
        time.sleep(20 * TICK)  # far more rounds than the retries of a failed send
        assert len(graph.templates()) == 1 and len(stored(bot.store, second).outbox) == 1
        bot.clock.advance(DAY)
        until(lambda: graph.templates(second), "the held reminder")
        until(lambda: stored(bot.store, second).outbox == (), "its confirmation")
        time.sleep(10 * TICK)
        assert [len(graph.templates(user)) for user in (alice, bob)] == [1, 1]
        assert bot.metric("fsm_whatsapp_messaging_limit_held_total") == 1


def test_without_a_limit_users_are_counted_and_nothing_is_held(graph: FakeGraph) -> None:
    with served(graph, flow=Parcels()) as bot:
        for user in USERS:
            hello(bot, user)
        bot.clock.advance(25 * HOUR)
        for n, user in enumerate(USERS):
            assert parcel(bot, user, f"p-{n}") == 200
        assert gauges(bot) == (0, 6, 0, 0)


def test_the_tracker_counts_unique_users_in_a_moving_day() -> None:
    asyncio.run(counts_unique_users_in_a_moving_day(MessagingLimit(2)))
    with pytest.raises(ValueError, match="messaging limit"):
        MessagingLimit(0)


@pytest.mark.parametrize(
    ("raw", "limit"),
    [("", None), ("off", None), ("unlimited", None), ("0", None), ("250", 250), ("2,000", 2000)],
)
def test_the_setting_reaches_the_bot(raw: str, limit: int | None) -> None:
    environ = {
        "WHATSAPP_ACCESS_TOKEN": "t",
        "WHATSAPP_PHONE_NUMBER_ID": "1",
        "WHATSAPP_MESSAGING_LIMIT": raw,
    }
    settings = Settings.for_sending(environ)
    assert settings is not None and settings.messaging_limit == limit
    assert f"messaging_limit={limit}" in repr(settings)
    built = build_bot(settings, AsyncEngine(Parcels(), AsyncMemoryStore(MemoryStore())))
    asyncio.run(built.client.aclose())
    assert built.limit.limit == limit
    value = built.metrics.registry.get_sample_value("fsm_whatsapp_messaging_limit")
    assert value == (limit or 0)


@pytest.mark.parametrize("raw", ["many", "-5", "2.5"])
def test_a_bad_setting_names_the_variable(raw: str) -> None:
    environ = {
        "WHATSAPP_ACCESS_TOKEN": "t",
        "WHATSAPP_PHONE_NUMBER_ID": "1",
        "WHATSAPP_MESSAGING_LIMIT": raw,
    }
    with pytest.raises(SettingsError, match="WHATSAPP_MESSAGING_LIMIT"):
        Settings.for_sending(environ)


def test_an_unknown_window_counts_on_131047_and_a_held_reply_lives_with_its_conversation(
    graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = USERS[:2]
    graph.close_window(alice, bob)  # they last wrote long ago: Meta refuses free-form
    with served(graph, flow=Offers(), timer_tick=TICK, messaging_limit=1) as bot:
        offer = event_body(alice, "offer", data={"amount": "$5"}, event_id="o-1")
        assert bot.event(offer).status_code == 200
        assert [(a.body["type"], a.answered) for a in graph.sends(accepted=False)] == [
            ("text", 400),  # tried free-form: 131047
            ("template", 200),  # then as its template, counted
        ]
        assert gauges(bot)[1] == 1
        offer = event_body(bob, "offer", data={"amount": "$7"}, event_id="o-2")
        assert bot.event(offer).status_code == 202  # 131047, and no slot for its template
        assert graph.templates(bob) == [] and gauges(bot)[2] == 1
        bot.clock.advance(31 * 60)  # the conversation (30 minutes) expires, held reply and all
        with caplog.at_level(logging.WARNING, logger="adapters.whatsapp"):
            bot.clock.advance(DAY)  # a slot frees
            until(lambda: gauges(bot)[2] == 0, "the held user let go")
        assert "replies held for ...0201 expired with the conversation" in caplog.text
        assert graph.templates(bob) == []


class CountingLimit(MessagingLimit):
    """The in-memory count, noting each call the bot makes on it."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.calls: list[str] = []

    async def unhold(self, user: str) -> None:
        self.calls.append("unhold")
        await super().unhold(user)

    async def counts(self, now: float) -> tuple[int, int]:
        self.calls.append("counts")
        return await super().counts(now)


def test_a_plain_reply_inside_the_window_costs_the_limit_nothing(graph: FakeGraph) -> None:
    """On Redis each call on the count is a round trip: a message answered free-form inside
    the window makes none (the paced users' writes per message stay at 2.00)."""
    limit = CountingLimit(5)
    with served(graph, flow=Parcels(), messaging_limit=limit) as bot:
        for n in range(3):
            assert bot.message(p.body([p.text(USERS[0], f"hi {n}")])).status_code == 200
        assert graph.texts(USERS[0]) == ["noted hi 0", "noted hi 1", "noted hi 2"]
        assert limit.calls == []
        bot.clock.advance(25 * HOUR)
        assert parcel(bot, USERS[0], "p-9") == 200  # a template: now the count is used
        assert limit.calls != []
