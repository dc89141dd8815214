"""A user always hears something: a step, a prompt or an action that raises under the webhook.

A refill flow whose pharmacy API applies an order and then drops the connection (the call went
through, the answer was lost), whose prompt has a bug, and whose step can fail on I/O.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from adapters.whatsapp.bot import MAX_REDELIVERIES
from fsm import Context, Flow, Outcome, Stage, action, on_enter, step
from fsm.async_engine import AsyncEngine
from fsm.errors import StoreUnavailable
from fsm.records import SaveResult

from . import payloads as p
from .conftest import Webhook, start_webhook, stored
from .fake_graph import FakeGraph, error

ALICE = "263770000001"
SORRY = "Sorry, the pharmacy system had a problem. Please try again."


class Pharmacy:
    """Places refills; ``drop_after_apply`` makes the next call apply the order, then fail as
    a reset connection would."""

    def __init__(self) -> None:
        self.orders: dict[str, str] = {}  # idempotency key -> drug
        self.drop_after_apply = 0
        self.lock = threading.Lock()

    def place(self, drug: str, key: str) -> str:
        with self.lock:
            self.orders.setdefault(key, drug)
            if self.drop_after_apply:
                self.drop_after_apply -= 1
                raise ConnectionResetError(104, "Connection reset by peer")
        return f"R{len(self.orders)}"


class Refill(Flow):
    name = "refill"
    takes_first_message = True
    failure_reply = SORRY
    stages = (Stage("start", ("hello", "confirm", "place", "broken")),)
    transitions = ()

    def __init__(self, api: Pharmacy) -> None:
        self.api = api

    @step("start", "hello")
    def hello(self, ctx: Context) -> Outcome:
        if ctx.text == "broken":
            return ctx.stay(step="broken")
        if ctx.text == "lookup":
            raise TimeoutError("the prescriptions API timed out")
        return ctx.stay("Refill your insulin?", step="confirm", set={"drug": "insulin"})

    @step("start", "confirm")
    def confirm(self, ctx: Context) -> Outcome:
        return ctx.stay("Placing it...", step="place")

    @action("start", "place")
    def place(self, ctx: Context) -> Outcome:
        receipt = self.api.place(ctx.data["drug"], ctx.idempotency_key)
        return ctx.stay(f"Refill placed (receipt {receipt}).", step="hello", unset=["drug"])

    @on_enter("start", "broken")
    def show_broken(self, ctx: Context) -> list[str]:
        raise ValueError("a bug in the prompt")

    @step("start", "broken")
    def broken(self, ctx: Context) -> Outcome:
        return ctx.stay(step="hello")


@pytest.fixture
def api() -> Pharmacy:
    return Pharmacy()


@pytest.fixture
def refill_hook(graph: FakeGraph, store: MemoryStore, api: Pharmacy):  # type: ignore[no-untyped-def]
    engine = AsyncEngine(Refill(api), AsyncMemoryStore(store))
    with start_webhook(graph, engine, store=store) as running:
        yield running


def test_an_action_that_fails_on_io_after_applying_answers_503_and_the_redelivery_finishes_it(
    refill_hook: Webhook,
    graph: FakeGraph,
    store: MemoryStore,
    api: Pharmacy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refill_hook.post(p.body([p.text(ALICE, "hi")]))
    api.drop_after_apply = 1
    yes = p.body([p.text(ALICE, "yes", message_id="wamid.YES")])
    with caplog.at_level(logging.WARNING):
        first = refill_hook.post(yes)
    # Meta will deliver it again; the user hears at once that it is on its way.
    assert first.status_code == 503
    assert graph.texts()[-2:] == ["Placing it...", Refill.delay_reply]
    assert stored(store, ALICE).step == "place"  # the action is still pending, key kept
    assert len(api.orders) == 1
    logged = [r.getMessage() for r in caplog.records if "wamid.YES" in r.getMessage()]
    assert any("ConnectionResetError" in line and "start.place" in line for line in logged)
    assert not any("Connection reset by peer" in line for line in logged)  # never its text

    again = refill_hook.post(yes)  # the re-delivery, without the user writing again
    assert again.status_code == 200
    assert graph.texts()[-1] == "Refill placed (receipt R1)."
    assert len(api.orders) == 1  # the same key: applied once
    assert stored(store, ALICE).step == "hello"
    assert graph.texts().count(Refill.delay_reply) == 1
    assert refill_hook.metric("fsm_whatsapp_messages_total", outcome="retried") == 1


def test_a_prompt_that_raises_tells_the_user_every_time_and_answers_200(
    refill_hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    refill_hook.post(p.body([p.text(ALICE, "hi")]))
    refill_hook.post(p.body([p.text(ALICE, "yes")]))  # the refill, placed
    before = stored(store, ALICE)
    for _ in range(2):
        answer = refill_hook.post(p.body([p.text(ALICE, "broken")]))
        assert answer.status_code == 200  # the same body would fail the same way
        assert graph.texts()[-1] == SORRY
    assert stored(store, ALICE).version == before.version  # nothing saved
    assert refill_hook.metric("fsm_whatsapp_messages_total", outcome="failed") == 2


def test_a_step_that_times_out_answers_200_and_asks_to_try_again(
    refill_hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    """Nothing of it was saved: delivered again later, it could land after a newer message."""
    refill_hook.post(p.body([p.text(ALICE, "hi")]))
    refill_hook.post(p.body([p.text(ALICE, "yes")]))
    before = stored(store, ALICE)
    lookup = p.body([p.text(ALICE, "lookup", message_id="wamid.LOOKUP")])
    assert refill_hook.post(lookup).status_code == 200
    assert graph.texts()[-1] == SORRY
    assert stored(store, ALICE).version == before.version


def test_an_action_that_keeps_failing_on_io_is_redelivered_a_bounded_number_of_times(
    refill_hook: Webhook, graph: FakeGraph, store: MemoryStore, api: Pharmacy
) -> None:
    refill_hook.post(p.body([p.text(ALICE, "hi")]))
    api.drop_after_apply = 100
    yes = p.body([p.text(ALICE, "yes", message_id="wamid.DOWN")])
    answers = [refill_hook.post(yes).status_code for _ in range(MAX_REDELIVERIES + 2)]
    assert answers == [503] * MAX_REDELIVERIES + [200, 200]
    assert graph.texts().count(Refill.delay_reply) == 1
    assert stored(store, ALICE).step == "place"  # still pending, its key kept
    assert len(api.orders) == 1
    api.drop_after_apply = 0
    refill_hook.post(p.body([p.text(ALICE, "hello?")]))  # the next message finishes it first
    assert "Refill placed (receipt R1)." in graph.texts()
    assert len(api.orders) == 1


class _FlakyStore(MemoryStore):
    """Refuses saves while ``down``, as Redis would: the driver's error quotes the key."""

    down = False

    def save(self, user_key: str, payload: bytes, **options: Any) -> SaveResult:
        if self.down:
            raise StoreUnavailable(
                "save", user_key=user_key, detail=f"ResponseError: READONLY fsm:{{{user_key}}}:s"
            )
        return super().save(user_key, payload, **options)


def test_no_log_line_shows_more_than_the_tail_of_the_users_number(
    graph: FakeGraph, api: Pharmacy, caplog: pytest.LogCaptureFixture
) -> None:
    """Failures of the flow, of the store and of the Graph API are logged with ``...0001``."""
    store = _FlakyStore()
    engine = AsyncEngine(Refill(api), AsyncMemoryStore(store))
    with caplog.at_level(logging.DEBUG), start_webhook(graph, engine, store=store) as hook:
        graph.plan(error(400, 131047))  # the first reply is given up: outside the window
        assert hook.post(p.body([p.text(ALICE, "hi")])).status_code == 200
        api.drop_after_apply = 1
        yes = p.body([p.text(ALICE, "yes", message_id="wamid.YES")])
        assert hook.post(yes).status_code == 503  # the action failed on I/O after applying
        store.down = True
        assert hook.post(yes).status_code == 503  # the store refused the save
        store.down = False
        assert hook.post(yes).status_code == 200
        lookup = p.body([p.text(ALICE, "lookup")])
        assert hook.post(lookup).status_code == 200  # the step timed out
    assert len(api.orders) == 1
    logged = [r.getMessage() for r in caplog.records]
    assert sum(f"...{ALICE[-4:]}" in line for line in logged) >= 4
    assert not [line for line in logged if ALICE[:-4] in line]
    assert ALICE[:-4] not in caplog.text  # tracebacks included
