"""``POST /events`` served for real on loopback: signatures checked before anything is parsed,
bad bodies answered 4xx (never 5xx), an event applied once per id with its replies sent once
through the outbox, and 503 whenever the caller should post it again."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from adapters.whatsapp import WebhookConfig
from adapters.whatsapp.events import MAX_EVENT_BODY, BadEvent, EventsEndpoint, parse_event
from tests.support import FailingSaves

from . import payloads as p
from .conftest import stored
from .fake_graph import FakeGraph, error
from .proactive import ALICE, EVENTS_SECRET, Bot, event_body, served, sign_event

BOB = "263770000002"


@pytest.fixture
def bot(graph: FakeGraph) -> Iterator[Bot]:
    with served(graph) as running:
        yield running


def nothing_happened(bot: Bot, graph: FakeGraph) -> None:
    assert bot.store.load(ALICE).record is None
    assert graph.sends(accepted=False) == []


def test_no_secret_no_route(graph: FakeGraph) -> None:
    with served(graph, events_secret="") as bot:
        raw = event_body(ALICE, "gift", data={"amount": 5})
        answer = bot.event(raw)
        assert answer.status_code == 404
        nothing_happened(bot, graph)


def test_an_unsigned_event_is_401_and_not_applied(bot: Bot, graph: FakeGraph) -> None:
    raw = event_body(ALICE, "gift", data={"amount": 5})
    answer = bot.event(raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 401
    assert answer.json() == {"applied": False, "error": "signature missing"}
    assert bot.metric("fsm_whatsapp_events_total", outcome="bad_signature") == 1
    nothing_happened(bot, graph)


@pytest.mark.parametrize(
    "header",
    [
        sign_event(b"another body")["X-Fsm-Signature-256"],  # right secret, another body
        sign_event(event_body(ALICE, "gift"), "another-secret")["X-Fsm-Signature-256"],
        "sha256=" + "0" * 64,
        "sha256=short",
        "sha1=" + "0" * 40,
    ],
    ids=["other-body", "other-secret", "zeros", "malformed", "other-scheme"],
)
def test_a_wrong_signature_is_403_and_not_applied(bot: Bot, graph: FakeGraph, header: str) -> None:
    raw = event_body(ALICE, "gift")
    answer = bot.event(raw, headers={"X-Fsm-Signature-256": header})
    assert answer.status_code == 403
    nothing_happened(bot, graph)


def test_the_webhooks_signature_does_not_sign_an_event(bot: Bot, graph: FakeGraph) -> None:
    """A body signed with the app secret (Meta's header, or ours with the app secret) is
    refused: the events secret is another."""
    raw = event_body(ALICE, "gift")
    assert bot.event(raw, headers=p.signed(raw)).status_code == 401
    assert bot.event(raw, headers=sign_event(raw, p.APP_SECRET)).status_code == 403
    nothing_happened(bot, graph)


BAD_BODIES = {
    "not-json": (b"user=263770000001&event=gift", 400),
    "not-utf8": (b'{"user": "\xff", "event": "gift"}', 400),
    "array": (b'[{"user": "263770000001", "event": "gift"}]', 400),
    "string": (b'"gift"', 400),
    "empty": (b"", 400),
    "no-user": (b'{"event": "gift"}', 400),
    "no-event": (b'{"user": "263770000001"}', 400),
    "blank-user": (b'{"user": "  ", "event": "gift"}', 400),
    "blank-event": (b'{"user": "263770000001", "event": ""}', 400),
    "user-number": (b'{"user": 263770000001, "event": "gift"}', 400),
    "data-list": (b'{"user": "263770000001", "event": "gift", "data": [1]}', 400),
    "data-string": (b'{"user": "263770000001", "event": "gift", "data": "x"}', 400),
    "id-number": (b'{"user": "263770000001", "event": "gift", "event_id": 7}', 400),
    "id-blank": (b'{"user": "263770000001", "event": "gift", "event_id": " "}', 400),
    "unknown-field": (b'{"user": "263770000001", "event": "gift", "eventid": "e1"}', 400),
    "nested": (
        b'{"user": "263770000001", "event": "gift", "data": {"a": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}}",
        400,
    ),
    "undeclared-event": (b'{"user": "263770000001", "event": "nope"}', 422),
    "nul-user": (b'{"user": "2637\\u0000", "event": "gift"}', 422),
    "long-user": (json.dumps({"user": "9" * 5000, "event": "gift"}).encode(), 422),
    "surrogate-user": (b'{"user": "\\ud800", "event": "gift"}', 400),  # not UTF-8
    "too-large": (event_body(ALICE, "gift", data={"x": "y" * MAX_EVENT_BODY}), 413),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_a_bad_body_is_4xx_and_not_applied(bot: Bot, graph: FakeGraph, name: str) -> None:
    raw, status = BAD_BODIES[name]
    answer = bot.event(raw)
    assert answer.status_code == status, answer.text
    assert answer.json()["applied"] is False and answer.json()["error"]
    nothing_happened(bot, graph)


def test_an_event_is_applied_once_and_its_reply_sent_once(bot: Bot, graph: FakeGraph) -> None:
    raw = event_body(ALICE, "gift", data={"amount": 5}, event_id="gift-1")
    answer = bot.event(raw)
    assert answer.status_code == 200
    assert answer.json() == {"applied": True, "duplicate": False, "ignored": ""}
    assert graph.texts(ALICE) == ["A gift of 5"]
    before = stored(bot.store, ALICE)
    assert before.outbox == ()  # confirmed sent
    again = bot.event(raw)  # the caller's retry
    assert again.status_code == 200
    assert again.json() == {"applied": False, "duplicate": True, "ignored": ""}
    assert graph.texts(ALICE) == ["A gift of 5"]
    assert stored(bot.store, ALICE).version == before.version  # nothing written
    assert bot.metric("fsm_whatsapp_events_total", outcome="applied") == 1
    assert bot.metric("fsm_whatsapp_events_total", outcome="duplicate") == 1


def test_an_event_reaches_a_conversation_wherever_it_is(bot: Bot, graph: FakeGraph) -> None:
    assert bot.message(p.body([p.text(ALICE, "hello")])).status_code == 200
    raw = event_body(ALICE, "ping", data={"note": "your parcel left"}, event_id="ping-1")
    assert bot.event(raw).json()["applied"] is True
    assert graph.texts(ALICE) == ["noted hello", "Ping: your parcel left"]
    snapshot = stored(bot.store, ALICE)
    assert (snapshot.stage, snapshot.step, snapshot.data["last"]) == ("open", "note", "hello")


def test_an_event_that_does_not_apply_is_acknowledged_with_why(bot: Bot, graph: FakeGraph) -> None:
    answer = bot.event(event_body(ALICE, "ping", event_id="ping-1"))
    assert answer.status_code == 200
    assert answer.json() == {
        "applied": False,
        "duplicate": False,
        "ignored": "no conversation (the handler does not start one)",
    }
    nothing_happened(bot, graph)


def test_a_failing_handler_is_500_without_its_text(
    bot: Bot, graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    assert bot.message(p.body([p.text(ALICE, "hello")])).status_code == 200
    with caplog.at_level(logging.INFO):
        answer = bot.event(event_body(ALICE, "boom", event_id="boom-1"))
    assert answer.status_code == 500
    assert answer.json() == {"applied": False, "error": "the flow's handler failed (StepFailed)"}
    assert "own bug" not in answer.text and "own bug" not in caplog.text
    assert ALICE not in caplog.text
    assert graph.texts(ALICE) == ["noted hello"]  # no failure notice: the user did not write


def test_an_unavailable_store_is_503_then_the_retry_applies_once(graph: FakeGraph) -> None:
    store = FailingSaves()
    with served(graph, store=store) as bot:
        raw = event_body(ALICE, "gift", data={"amount": 7}, event_id="gift-7")
        store.failing = -1
        answer = bot.event(raw)
        assert answer.status_code == 503
        assert answer.json()["applied"] is False
        assert bot.store.load(ALICE).record is None and graph.sends() == []
        store.failing = 0
        assert bot.event(raw).json() == {"applied": True, "duplicate": False, "ignored": ""}
        assert bot.event(raw).json()["duplicate"] is True
        assert graph.texts(ALICE) == ["A gift of 7"]


def test_a_reply_the_graph_api_refuses_for_now_is_503_and_sent_by_the_retry(
    bot: Bot, graph: FakeGraph
) -> None:
    graph.plan(error(503, 0), error(503, 0))  # both attempts of the delivery fail
    raw = event_body(BOB, "gift", data={"amount": 3}, event_id="gift-3")
    answer = bot.event(raw)
    assert answer.status_code == 503
    assert answer.json()["error"].startswith("replies pending")
    assert len(stored(bot.store, BOB).outbox) == 1  # kept, not lost
    retry = bot.event(raw)
    assert retry.status_code == 200
    assert retry.json() == {"applied": False, "duplicate": True, "ignored": ""}
    assert graph.texts(BOB) == ["A gift of 3"]  # once
    assert stored(bot.store, BOB).outbox == ()


def test_parse_event_says_why_without_values() -> None:
    with pytest.raises(BadEvent, match="'user' is blank"):
        parse_event(b'{"user": " ", "event": "e"}')
    with pytest.raises(BadEvent) as caught:
        parse_event(b'{"user": "secret-value", "event": 5}')
    assert "secret-value" not in str(caught.value)
    assert parse_event(b'{"user": "u", "event": "e"}').data is None


def test_the_secret_is_in_no_repr(bot: Bot) -> None:
    config = WebhookConfig("a", "v", "1", events_secret=EVENTS_SECRET)
    endpoint = EventsEndpoint(bot.bot, EVENTS_SECRET)
    for text in (repr(config), repr(endpoint), repr(bot.bot)):
        assert EVENTS_SECRET not in text
    assert "events_secret=<redacted>" in repr(config)
