"""``fsm timers ls``, ``fsm notify`` and the refusals of ``fsm timers run``, through click's
runner on an embedded memory store (and a real Redis), and a fake Graph API over HTTP."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from adapters import MemoryStore, RedisStore
from fsm import Engine, FakeClock
from fsm.cli import main
from tests import redis_servers
from tests.timers.timer_flows import Nudge
from tests.whatsapp.fake_graph import FakeGraph, fake_graph
from tests.whatsapp.proactive_flows import Reminder

ENGINE = "tests.whatsapp.proactive_flows:reminder_engine"
ALICE = "263770000001"
#: No WhatsApp settings (``fsm notify`` prints the replies then), no store from the shell.
BARE = {k: None for k in os.environ if k.startswith(("WHATSAPP_", "FSM_"))}


def run(*args: str, obj: Any = None, **env: Any) -> Result:
    return CliRunner().invoke(main, list(args), obj=obj, env={**BARE, **env})


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with fake_graph() as fake:
        yield fake


def whatsapp(graph: FakeGraph) -> dict[str, str | None]:
    return {"WHATSAPP_ACCESS_TOKEN": graph.token, "WHATSAPP_PHONE_NUMBER_ID": graph.phone_number_id,
            "WHATSAPP_API_URL": graph.url, "WHATSAPP_MARK_READ": "0"}  # fmt: skip


# -- fsm timers ls ---------------------------------------------------------------------------
def nudged() -> tuple[Engine, MemoryStore, FakeClock]:
    """Two users at the order's confirm step (its two timers armed), and one who left it."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    engine = Engine(Nudge(), store, clock=clock)
    for user in ("263770000001", "263770000002", "263770000003"):
        for n, text in enumerate(("hi", "1", "5")):
            engine.handle(user, text, message_id=f"{user}-{n}")
        clock.advance(10)
    engine.handle("263770000003", "yes", message_id="left")
    return engine, store, clock


def test_timers_ls_lists_what_is_armed_soonest_first() -> None:
    _engine, store, clock = nudged()
    done = run("timers", "ls", obj={"store": store, "clock": clock})
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["USER", "STAGE.STEP", "TIMER", "DUE"]
    rows = [line.split()[:3] for line in lines[1:]]
    assert rows == [
        ["263770000001", "order.confirm", "remind"],
        ["263770000001", "order.confirm", "drop"],
        ["263770000002", "order.confirm", "remind"],
        ["263770000002", "order.confirm", "drop"],
        ["263770000003", "-", "(stale)"],  # it left the step: fires nothing
    ]
    assert "from now" in lines[1]
    assert done.stderr.strip().endswith("5 timer(s)")


def test_timers_ls_due_and_user_filters_and_json() -> None:
    _engine, store, clock = nudged()
    obj = {"store": store, "clock": clock}
    assert run("timers", "ls", "--due", obj=obj).stdout.splitlines()[1:] == []
    clock.advance(600 - 30)  # the first user's reminder is due now, the second's in 10 s
    due = run("timers", "ls", "--due", "--json", obj=obj)
    assert [json.loads(line) for line in due.stdout.splitlines()] == [
        {
            "user": "263770000001",
            "stage": "order",
            "step": "confirm",
            "timer": "remind",
            "due": clock.now(),
            "state": "armed",
        }
    ]
    assert due.stderr.strip().endswith("1 timer(s) due")
    mine = run("timers", "ls", "--user", "263770000002", "--json", obj=obj)
    assert {json.loads(line)["timer"] for line in mine.stdout.splitlines()} == {"remind", "drop"}


def test_timers_ls_on_redis() -> None:
    url = redis_servers.standalone().url
    namespace = f"cli-timers-{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(url, namespace=namespace)
    try:
        engine = Engine(Nudge(), store)
        for text in ("hi", "1", "5"):
            engine.handle(ALICE, text)
    finally:
        store.close()
    listed = run("timers", "ls", "--store", url, "--namespace", namespace)
    assert listed.exit_code == 0, listed.output
    assert [line.split()[2] for line in listed.stdout.splitlines()[1:]] == ["remind", "drop"]
    assert (
        run("timers", "ls", "--due", "--store", url, "--namespace", namespace).stdout.count("\n")
        == 1
    )  # the header only: nothing is due for 10 minutes


def test_timers_reindex_brings_back_timers_whose_index_entries_were_lost() -> None:
    url = redis_servers.standalone().url
    namespace = f"cli-reindex-{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    store = RedisStore.from_url(url, namespace=namespace)
    try:
        engine = Engine(Nudge(), store, clock=clock)
        for text in ("hi", "1", "5"):
            engine.handle(ALICE, text)
        lost = [d for d in store.indexed_due()]
        assert len(lost) == 1
        store.settle_due(store.claim_due(lost[0].due, limit=10, hold=1e9))  # a failover lost it
        clock.advance(600)
        assert engine.fire_due() == 0  # nothing stands for the timers any more
        done = run("timers", "reindex", "--store", url, "--namespace", namespace,
                   obj={"clock": clock})  # fmt: skip
        assert done.exit_code == 0, done.output
        assert "1 conversation(s) with timers indexed" in done.stdout
        assert engine.fire_due() == 1
        again = run("timers", "reindex", "--store", url, "--namespace", namespace,
                    obj={"clock": clock})  # fmt: skip
        assert "1 conversation(s) with timers indexed" in again.stdout  # the drop timer
        clock.advance(900)  # its entry written again by the second reindex: fires once
        assert engine.fire_due() == 1 and engine.fire_due() == 0
    finally:
        store.close()


# -- fsm notify -------------------------------------------------------------------------------
def test_notify_without_whatsapp_prints_the_replies_and_applies_once() -> None:
    store = MemoryStore()
    obj = {"store": store}
    args = (
        "notify",
        ALICE,
        "gift",
        "--data",
        '{"amount": 5}',
        "--id",
        "gift-1",
        "--engine",
        ENGINE,
    )
    done = run(*args, obj=obj)
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines() == ["applied: now at open.note", "bot> A gift of 5"]
    assert Engine(Reminder(), store).peek(ALICE) is not None
    again = run(*args, obj=obj)
    assert again.exit_code == 0
    assert again.stdout.splitlines() == [
        "already applied (this event id was seen): not applied again"
    ]


def test_notify_says_why_an_event_does_not_apply() -> None:
    done = run("notify", ALICE, "ping", "--engine", ENGINE, "--json", obj={"store": MemoryStore()})
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "applied": False,
        "duplicate": False,
        "ignored": "no conversation (the handler does not start one)",
        "replies": [],
        "sent": False,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--data", "{not json"), "not JSON"),
        (("--data", "[1, 2]"), "must be a JSON object"),
        (("--id", " "), "give an id"),
        (("--engine", "tests.nowhere:engine"), "cannot import module"),
    ],
)
def test_notify_refuses_bad_input_with_a_usage_error(args: tuple[str, ...], message: str) -> None:
    store = MemoryStore()
    done = run("notify", ALICE, "gift", "--engine", ENGINE, *args, obj={"store": store})
    assert done.exit_code == 2
    assert message in done.stderr and "Traceback" not in done.output
    assert store.load(ALICE).record is None


def test_notify_refuses_an_event_the_flow_does_not_declare() -> None:
    done = run("notify", ALICE, "nope", "--engine", ENGINE, obj={"store": MemoryStore()})
    assert done.exit_code == 2
    assert "declares no event 'nope'" in done.stderr


def test_notify_needs_a_store() -> None:
    done = run("notify", ALICE, "gift", "--engine", ENGINE)
    assert done.exit_code == 2 and "--store URL or FSM_STORE" in done.stderr


def test_notify_sends_through_whatsapp_once(graph: FakeGraph) -> None:
    store = MemoryStore()
    args = ("notify", ALICE, "gift", "--data", '{"amount": 9}', "--id", "g-9", "--engine", ENGINE)
    done = run(*args, "--json", obj={"store": store}, **whatsapp(graph))
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "applied": True,
        "duplicate": False,
        "ignored": "",
        "replies": 1,
        "sent": True,
    }
    again = run(*args, obj={"store": store}, **whatsapp(graph))
    assert again.exit_code == 0 and again.stdout.startswith("already applied")
    assert graph.texts(ALICE) == ["A gift of 9"]
    assert Engine(Reminder(), store).peek(ALICE).outbox == ()  # type: ignore[union-attr]
    assert graph.token not in done.output + again.output


def test_notify_exits_1_when_replies_stay_pending_and_a_rerun_sends_them(
    graph: FakeGraph,
) -> None:
    from tests.whatsapp.fake_graph import error

    store = MemoryStore()
    args = ("notify", ALICE, "gift", "--data", '{"amount": 2}', "--id", "g-2", "--engine", ENGINE)
    graph.plan(*[error(503, 0)] * 4)  # every attempt of the delivery fails
    first = run(*args, obj={"store": store}, **whatsapp(graph))
    assert first.exit_code == 1
    assert "some stay pending" in first.stdout
    assert graph.texts(ALICE) == []
    second = run(*args, obj={"store": store}, **whatsapp(graph))
    assert second.exit_code == 0, second.output
    assert graph.texts(ALICE) == ["A gift of 2"]


def test_notify_with_half_the_whatsapp_settings_is_one_line_and_exit_2(graph: FakeGraph) -> None:
    env = whatsapp(graph) | {"WHATSAPP_PHONE_NUMBER_ID": None}
    done = run("notify", ALICE, "gift", "--engine", ENGINE, obj={"store": MemoryStore()}, **env)
    assert done.exit_code == 2
    assert done.stderr.strip() == (
        "error: missing setting: WHATSAPP_PHONE_NUMBER_ID (see docs/whatsapp.md)"
    )


# -- fsm timers run: what it refuses (tests/whatsapp/test_serve_timers.py runs it) ------------
def test_timers_run_needs_whatsapp_and_a_shared_store(graph: FakeGraph) -> None:
    no_whatsapp = run("timers", "run", "--engine", ENGINE, "--store", "redis://127.0.0.1:1/0")
    assert no_whatsapp.exit_code == 2
    assert "missing setting: WHATSAPP_ACCESS_TOKEN" in no_whatsapp.stderr
    no_store = run("timers", "run", "--engine", ENGINE, **whatsapp(graph))
    assert no_store.exit_code == 2
    assert "needs the store the bot's workers share" in no_store.stderr
    port = redis_servers.free_port()
    down = run(
        "timers", "run", "--engine", ENGINE, "--store", f"redis://127.0.0.1:{port}/0",
        **whatsapp(graph),
    )  # fmt: skip
    assert down.exit_code == 2
    assert "error:" in down.stderr and graph.token not in down.output


def test_notify_past_the_messaging_limit_holds_the_reply_for_the_serving_workers(
    graph: FakeGraph,
) -> None:
    import asyncio

    from redis.asyncio import Redis

    from adapters.whatsapp.limits_redis import RedisMessagingLimit

    bob, namespace = "263770000002", f"notify-{uuid.uuid4().hex[:8]}"
    env = {
        **whatsapp(graph),
        "WHATSAPP_MESSAGING_LIMIT": "1",
        "FSM_STORE": redis_servers.standalone().url,
        "FSM_NAMESPACE": namespace,
    }
    graph.close_window(ALICE, bob)  # both last wrote long ago: only a template goes through
    offers = "tests.whatsapp.exactly_once_flows:offers_engine"
    for user, event_id in ((ALICE, "o-1"), (bob, "o-2")):
        args = ("notify", user, "offer", "--data", '{"amount": 5}', "--id", event_id)
        done = run(*args, "--engine", offers, **env)
        assert done.exit_code == 0, done.output
    assert "held for the messaging limit" in done.stdout  # bob's: the one slot is alice's
    assert len(graph.templates(ALICE)) == 1 and graph.templates(bob) == []

    async def counted() -> tuple[int, int]:
        client = Redis.from_url(env["FSM_STORE"])
        try:
            return await RedisMessagingLimit(client, 1, namespace=namespace).counts(time.time())
        finally:
            await client.aclose()

    assert asyncio.run(counted()) == (1, 1)  # alice counted, bob waiting for any worker
    from tests.whatsapp.exactly_once_flows import Offers

    store = RedisStore.from_url(env["FSM_STORE"], namespace=namespace)
    held = Engine(Offers(), store).peek(bob)
    assert held is not None and [o.reply.template.name for o in held.outbox] == [  # type: ignore[union-attr]
        "offer_received"
    ]
    store.close()
