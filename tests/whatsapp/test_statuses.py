"""Delivery statuses of the bot's own messages, posted as Meta posts them (signed webhook bodies)
to the app served on loopback: a ``failed`` status is counted by its error code (a bounded
label) once per message, and reaches the flow as the event ``whatsapp.failed`` when the flow
declares a handler for it, once per message however often Meta delivers it; without a
handler it is only counted. No status moves a conversation by itself."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.whatsapp.updates import FAILED_EVENT
from fsm import Context, Flow, Outcome, Stage, on_event, step

from . import payloads as p
from .conftest import stored
from .fake_graph import FakeGraph
from .proactive import ALICE, Bot, served
from .proactive_flows import Reminder

BOB = "263770000002"
FAILURES = "fsm_whatsapp_delivery_failures_total"


class Watched(Flow):
    """Notes what the user says; records each failed delivery it is told of, and answers a
    re-engagement failure (131047) with nothing but a note in its data."""

    name = "watched"
    takes_first_message = True
    stages = (Stage("open", ("note",)),)
    transitions = ()

    @step("open", "note")
    def note(self, ctx: Context) -> Outcome:
        return ctx.stay(f"noted {ctx.text}")

    @on_event(FAILED_EVENT, reprompt=False)
    def failed(self, ctx: Context) -> Outcome:
        assert ctx.event is not None
        seen = [*ctx.data.get("failures", []), dict(ctx.event.data)]
        return ctx.stay(set={"failures": seen})


def failed(message_id: str, *codes: int, user: str = ALICE) -> dict[str, Any]:
    """A ``failed`` status in Meta's shape, with an error per code."""
    errors = [
        {
            "code": code,
            "title": "Message failed",
            "message": "Message failed",
            "error_data": {"details": "details of the failure"},
        }
        for code in codes
    ]
    return {**p.status(message_id, "failed", user), "errors": errors}


def first_send(bot: Bot, graph: FakeGraph, user: str = ALICE) -> str:
    """The user writes; the wamid of the bot's answer."""
    assert bot.message(p.body([p.text(user, "hi")])).status_code == 200
    return graph.sends()[-1].message_id


def payload(bot: Bot, user: str = ALICE) -> bytes:
    record = bot.store.load(user).record
    assert record is not None
    return record.payload


@pytest.mark.parametrize("code", [131047, 131026])
def test_a_failed_status_is_counted_and_applied_once(graph: FakeGraph, code: int) -> None:
    with served(graph, flow=Watched()) as bot:
        wamid = first_send(bot, graph)
        raw = p.body(statuses=[failed(wamid, code)])
        for _ in range(3):  # Meta delivers the same status again
            assert bot.message(raw).status_code == 200
        snapshot = stored(bot.store, ALICE)
        assert snapshot.data["failures"] == [{"code": code, "message_id": wamid}]
        assert (snapshot.stage, snapshot.step) == ("open", "note")  # it moved nothing
        assert bot.metric(FAILURES, code=str(code)) == 1
        assert bot.metric("fsm_whatsapp_statuses_total", status="failed") == 3
        assert graph.texts(ALICE) == ["noted hi"]  # the handler said nothing


def test_each_failed_message_is_applied_and_counted_by_its_code(graph: FakeGraph) -> None:
    with served(graph, flow=Watched()) as bot:
        first = first_send(bot, graph)
        second = first_send(bot, graph)
        raw = p.body(statuses=[failed(first, 131047), failed(second, 131026, 131000)])
        assert bot.message(raw).status_code == 200
        assert stored(bot.store, ALICE).data["failures"] == [
            {"code": 131047, "message_id": first},
            {"code": 131026, "message_id": second},  # the first of its codes
        ]
        assert bot.metric(FAILURES, code="131047") == 1
        assert bot.metric(FAILURES, code="131026") == 1


def test_an_unknown_code_is_counted_as_other_and_no_code_as_none(graph: FakeGraph) -> None:
    with served(graph, flow=Watched()) as bot:
        first = first_send(bot, graph)
        second = first_send(bot, graph)
        raw = p.body(statuses=[failed(first, 987654), failed(second)])
        assert bot.message(raw).status_code == 200
        assert bot.metric(FAILURES, code="other") == 1
        assert bot.metric(FAILURES, code="none") == 1
        assert bot.metric(FAILURES, code="987654") == 0  # never a label of its own
        codes = [f["code"] for f in stored(bot.store, ALICE).data["failures"]]
        assert codes == [987654, 0]


def test_without_a_declared_handler_a_failed_status_is_only_counted(graph: FakeGraph) -> None:
    with served(graph, flow=Reminder()) as bot:
        wamid = first_send(bot, graph)
        before = payload(bot)
        for _ in range(2):
            assert bot.message(p.body(statuses=[failed(wamid, 131047)])).status_code == 200
        assert payload(bot) == before  # the conversation is as it was
        assert bot.metric(FAILURES, code="131047") == 1
        assert graph.texts(ALICE) == ["noted hi"]


@pytest.mark.parametrize("state", ["sent", "delivered", "read"])
def test_a_delivered_or_read_status_changes_nothing(graph: FakeGraph, state: str) -> None:
    with served(graph, flow=Watched()) as bot:
        wamid = first_send(bot, graph)
        before = payload(bot)
        assert bot.message(p.body(statuses=[p.status(wamid, state)])).status_code == 200
        assert payload(bot) == before
        assert bot.metric("fsm_whatsapp_statuses_total", status=state) == 1
        assert bot.bot.metrics.registry.get_sample_value(FAILURES, {"code": "none"}) is None
        assert len(graph.sends()) == 1


def test_a_failed_status_for_a_user_without_a_conversation_is_acknowledged(
    graph: FakeGraph,
) -> None:
    with served(graph, flow=Watched()) as bot:
        raw = p.body(statuses=[failed("wamid.out.77", 131026, user=BOB)])
        assert bot.message(raw).status_code == 200  # not applied: the handler starts none
        assert bot.store.load(BOB).record is None
        assert bot.metric(FAILURES, code="131026") == 1
        assert graph.sends() == []
