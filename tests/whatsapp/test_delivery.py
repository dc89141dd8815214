"""Sends that fail: retried with backoff when Meta says "not now", given up when it says
"never", and kept pending (never lost) when the retries run out."""

from __future__ import annotations

from adapters import AsyncMemoryStore, MemoryStore
from fsm.async_engine import AsyncEngine

from . import payloads as p
from .conftest import Webhook, start_webhook, stored
from .fake_graph import Answer, FakeGraph, error
from .shop import Shop

ALICE = "263770000001"
HELLO = ["Hello, you said hi", "Pick a fruit"]


def pending(store: MemoryStore, user: str = ALICE) -> list[str]:
    return [o.reply.body for o in stored(store, user).outbox]


def test_503_twice_then_200_delivers_once_in_order(
    hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    graph.plan(error(503, 0), error(503, 0))
    assert hook.post(p.body([p.text(ALICE, "hi")])).status_code == 200
    assert graph.texts() == HELLO
    assert len(graph.sends(accepted=False)) == 4  # two refused, then both replies
    assert pending(store) == []
    assert hook.metric("fsm_whatsapp_sends_total", outcome="retry", code="http_503") == 2


def test_throughput_limit_backs_off_then_sends(hook: Webhook, graph: FakeGraph) -> None:
    graph.plan(error(400, 130429))
    assert hook.post(p.body([p.text(ALICE, "hi")])).status_code == 200
    attempts = graph.sends(accepted=False)
    assert [a.answered for a in attempts] == [400, 200, 200]
    assert attempts[1].at - attempts[0].at >= 0.01  # a pause before the retry
    assert graph.texts() == HELLO
    assert hook.metric("fsm_whatsapp_sends_total", outcome="retry", code="130429") == 1


def test_pair_rate_limit_waits_longer(hook: Webhook, graph: FakeGraph) -> None:
    graph.plan(error(400, 131056))
    assert hook.post(p.body([p.text(ALICE, "hi")])).status_code == 200
    attempts = graph.sends(accepted=False)
    assert attempts[1].at - attempts[0].at >= 0.45  # PAIR_LIMIT_PAUSE * jitter (>= 0.5)
    assert graph.texts() == HELLO


def test_outside_the_window_is_not_retried_and_is_counted(
    hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    graph.plan(error(400, 131047))
    assert hook.post(p.body([p.text(ALICE, "hi")])).status_code == 200
    attempts = graph.sends(accepted=False)
    assert [a.answered for a in attempts] == [400, 200]  # the first given up, the second sent
    assert graph.texts() == ["Pick a fruit"]
    assert hook.metric("fsm_whatsapp_sends_total", outcome="failed", code="131047") == 1
    assert pending(store) == []  # given up: not retried at every message


def test_a_dropped_connection_is_retried(hook: Webhook, graph: FakeGraph) -> None:
    graph.plan(Answer(drop=True))
    assert hook.post(p.body([p.text(ALICE, "hi")])).status_code == 200
    assert graph.texts() == HELLO
    assert hook.metric("fsm_whatsapp_sends_total", outcome="retry", code="network") == 1


def test_when_retries_run_out_replies_stay_pending_and_go_first_later(
    hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    graph.plan(*[error(500, 2)] * 4)  # every attempt at the first reply fails
    first = p.body([p.text(ALICE, "hi")])
    assert hook.post(first).status_code == 503  # Meta will deliver it again
    assert graph.texts() == []
    assert pending(store) == HELLO  # saved with the state: not lost
    # The re-delivery is not applied again, and sends what was pending, once.
    assert hook.post(first).status_code == 200
    assert graph.texts() == HELLO
    assert pending(store) == []
    version = stored(store, ALICE).version
    assert hook.post(first).status_code == 200
    assert graph.texts() == HELLO  # not sent again
    assert stored(store, ALICE).version == version


def test_pending_replies_go_before_the_next_messages_replies(
    hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    graph.plan(*[error(500, 2)] * 4)
    assert hook.post(p.body([p.text(ALICE, "hi")])).status_code == 503
    assert hook.post(p.body([p.list_reply(ALICE, "fruit-pear")])).status_code == 200
    assert graph.texts() == [*HELLO, "Buy one Pear?"]


def test_a_refused_access_token_holds_every_reply(graph: FakeGraph, store: MemoryStore) -> None:
    engine = AsyncEngine(Shop(), AsyncMemoryStore(store))
    with start_webhook(graph, engine, store=store) as hook:
        token, graph.token = graph.token, "rotated-token"  # ours is refused: 401, code 190
        first = p.body([p.text(ALICE, "hi")])
        assert hook.post(first).status_code == 503  # not retried now, not given up
        assert hook.metric("fsm_whatsapp_sends_total", outcome="held", code="190") == 1
        assert len(graph.sends(accepted=False)) == 1 and pending(store) == HELLO
        graph.token = token  # the operator deploys a valid token; Meta re-delivers
        assert hook.post(first).status_code == 200
        assert graph.texts() == HELLO and pending(store) == []


def test_mark_as_read_on_receipt(graph: FakeGraph, store: MemoryStore) -> None:
    engine = AsyncEngine(Shop(), AsyncMemoryStore(store))
    message = p.text(ALICE, "hi")
    with start_webhook(graph, engine, store=store, mark_as_read=True) as hook:
        assert hook.post(p.body([message])).status_code == 200
        graph.wait_sends(2)
    reads = graph.reads()  # the server closed: background requests were awaited
    assert [r.body for r in reads] == [
        {"messaging_product": "whatsapp", "status": "read", "message_id": message["id"]}
    ]
