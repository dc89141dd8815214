"""The ticker in the webhook app's lifespan, served for real on loopback with a fake clock: a due
timer's reply reaches the Graph API once, through the outbox; a reply the Graph API refused is
sent by a later round; failures are counted, not fatal; the backlog is on /metrics."""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters import AsyncMemoryStore
from adapters.whatsapp import GraphClient, WhatsAppBot
from adapters.whatsapp import ticker as ticker_module
from adapters.whatsapp.ticker import Ticker
from fsm import Engine, FakeClock
from fsm.async_engine import AsyncEngine
from tests.support import FailingSaves

from . import payloads as p
from .conftest import stored
from .fake_graph import FakeGraph, error
from .proactive import ALICE, Bot, served, until
from .proactive_flows import Reminder

REMINDER = "Still there? You said hello."
TICK = 0.05


def hello(bot: Bot, user: str = ALICE) -> None:
    assert bot.message(p.body([p.text(user, "hello")])).status_code == 200


def test_a_due_timer_is_fired_by_the_ticker_and_its_reply_sent_once(graph: FakeGraph) -> None:
    with served(graph, timer_tick=TICK) as bot:
        hello(bot)
        time.sleep(5 * TICK)  # rounds go by: nothing is due yet
        assert graph.texts(ALICE) == ["noted hello"]
        bot.clock.advance(1)
        until(lambda: len(graph.texts(ALICE)) == 2, "reminder")
        time.sleep(10 * TICK)  # more rounds: it fired once
        assert graph.texts(ALICE) == ["noted hello", REMINDER]
        until(lambda: stored(bot.store, ALICE).outbox == (), "confirmation")
        snapshot = stored(bot.store, ALICE)
        assert snapshot.timers == () and list(bot.store.indexed_due()) == []
        assert bot.metric("fsm_timers_fired_total") == 1
        assert bot.metric("fsm_timer_ticks_total", outcome="ok") >= 3
        assert bot.metric("fsm_timer_ticks_total", outcome="failed") == 0


def test_many_users_each_get_their_reminder_once(graph: FakeGraph) -> None:
    users = [f"2637700001{n:02d}" for n in range(30)]
    with served(graph, timer_tick=TICK) as bot:
        for user in users:
            hello(bot, user)
        bot.clock.advance(1)
        until(lambda: len(graph.sends()) == 60, "30 reminders")
        time.sleep(10 * TICK)
        for user in users:
            assert graph.texts(user) == ["noted hello", REMINDER]


def test_a_reply_the_graph_api_refused_is_sent_by_a_later_round(
    graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ticker_module, "RETRY_FIRST", 0.1)
    with served(graph, timer_tick=TICK) as bot:
        hello(bot)
        graph.plan(error(503, 0), error(503, 0))  # the firing's delivery: both attempts fail
        bot.clock.advance(1)
        until(lambda: graph.texts(ALICE) == ["noted hello", REMINDER], "the retried reminder")
        time.sleep(10 * TICK)
        assert graph.texts(ALICE) == ["noted hello", REMINDER]
        assert len(graph.sends(accepted=False)) == 4  # hello, two refused, the one sent
        until(lambda: stored(bot.store, ALICE).outbox == (), "confirmation")


def test_a_firing_whose_save_fails_is_tried_again_when_its_claim_runs_out(
    graph: FakeGraph,
) -> None:
    clock = FakeClock()
    store = FailingSaves(clock=clock)
    with served(graph, timer_tick=TICK, store=store, clock=clock) as bot:
        hello(bot)
        bot.bot.engine.claim_hold = 5.0
        store.failing = -1  # the firing's save fails: left to its claim, tried again later
        bot.clock.advance(1)
        until(lambda: bot.metric("fsm_timer_errors_total") >= 1, "a failed firing")
        time.sleep(5 * TICK)
        assert graph.texts(ALICE) == ["noted hello"]
        assert bot.metric("fsm_timer_errors_total") == 1  # claimed: not tried every round
        store.failing = 0
        bot.clock.advance(5)  # the claim's hold is over, by the engine's clock
        until(lambda: graph.texts(ALICE) == ["noted hello", REMINDER], "the reminder")
        assert bot.metric("fsm_timers_fired_total") == 1


def test_metrics_show_the_backlog_when_no_ticker_runs(graph: FakeGraph) -> None:
    with served(graph, timer_tick=None) as bot:
        assert bot.bot.engine.store.keeps_timers
        hello(bot)
        bot.clock.advance(91)
        text = bot.http.get("/metrics").text
        assert "fsm_timers_due 1.0" in text
        assert "fsm_timers_overdue_seconds 90.0" in text
        assert "fsm_timer_lag_seconds_count 0.0" in text
        assert graph.texts(ALICE) == ["noted hello"]  # nothing fires it


def test_the_loop_alone_fires_until_stopped_then_closes(graph: FakeGraph) -> None:
    """The loop as ``fsm timers run`` drives it, with a bot of its own on the webhook's store:
    no round once stopped; rounds until stopped; then the bot's last confirmations."""
    with served(graph, timer_tick=None) as bot:
        hello(bot)
        bot.clock.advance(1)
        engine = AsyncEngine(Reminder(), AsyncMemoryStore(bot.store), clock=bot.clock)
        client = GraphClient(
            access_token=graph.token, phone_number_id=graph.phone_number_id, api_url=graph.url
        )
        alone = WhatsAppBot(engine, client, mark_as_read=False)

        async def run() -> int:
            ticker = Ticker(alone, interval=TICK)
            stop = asyncio.Event()
            stop.set()  # asked before it starts: no round at all
            await ticker.run(stop)
            assert ticker.fired == 0
            stop.clear()
            asyncio.get_running_loop().call_later(0.5, stop.set)
            await asyncio.wait_for(ticker.run(stop), 10)
            await alone.aclose()
            return ticker.fired

        assert asyncio.run(run()) == 1
        assert graph.texts(ALICE) == ["noted hello", REMINDER]
        assert stored(bot.store, ALICE).outbox == ()  # confirmed before the loop closed


def test_the_interval_must_be_positive(graph: FakeGraph) -> None:
    with served(graph, timer_tick=None) as bot, pytest.raises(ValueError, match="> 0"):
        Ticker(bot.bot, interval=0)


def test_one_round_fires_a_backlog_larger_than_a_batch(graph: FakeGraph) -> None:
    users = [f"2637700002{n:02d}" for n in range(100)] + [f"2637700003{n:02d}" for n in range(100)]
    with served(graph, timer_tick=3.0) as bot:
        seeding = Engine(Reminder(), bot.store, clock=bot.clock)  # the same store, directly
        for user in users:
            seeding.handle(user, "hello", message_id=f"{user}-hello")
        rounds = bot.metric("fsm_timer_ticks_total", outcome="ok")
        bot.clock.advance(1)  # 200 due at once: more than one claim's batch (64)
        until(lambda: len(graph.sends()) == 200, "200 reminders", timeout=15)
        # All in the round that came next, batch after batch, not one batch per round.
        assert bot.metric("fsm_timer_ticks_total", outcome="ok") <= rounds + 1
        for user in users[:5]:
            assert graph.texts(user) == [REMINDER]
