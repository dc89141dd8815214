"""The webhook through a real uvicorn server and a fake Graph API on loopback."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from adapters import MemoryStore

from . import payloads as p
from .conftest import Webhook, settle, stored
from .fake_graph import FakeGraph, body_text

ALICE, BOB = "263770000001", "263770000002"


def stage_step(store: MemoryStore, user: str) -> tuple[str, int]:
    snap = stored(store, user)
    return snap.step, snap.version


# -- the handshake ---------------------------------------------------------------------------
def test_handshake_answers_the_challenge(hook: Webhook) -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": p.VERIFY_TOKEN, "hub.challenge": "4242"}
    answer = hook.http.get("/webhook", params=params)
    assert answer.status_code == 200 and answer.text == "4242"
    assert answer.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": p.VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.challenge": "1"},
    ],
)
def test_handshake_refuses_a_wrong_token(hook: Webhook, params: dict[str, str]) -> None:
    answer = hook.http.get("/webhook", params=params)
    assert answer.status_code == 403 and "1" not in answer.text


# -- signatures -------------------------------------------------------------------------------
def test_signatures_missing_wrong_or_over_another_body_apply_nothing(
    hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    raw = p.body([p.text(ALICE, "hi")])
    altered = raw.replace(b"hi", b"ho")
    cases = [
        (raw, {"Content-Type": "application/json"}, 401),
        (raw, {"X-Hub-Signature-256": "sha256=" + "0" * 64}, 403),
        (raw, p.signed(raw, "another-secret"), 403),
        (altered, p.signed(raw), 403),  # signed, then changed on the way
        (raw, {"X-Hub-Signature-256": "md5=abc"}, 403),
    ]
    for content, headers, expected in cases:
        assert hook.post(content, headers).status_code == expected
    assert store.load(ALICE).record is None
    assert graph.requests == []
    assert hook.metric("fsm_whatsapp_signature_failures_total", reason="missing") == 1
    assert hook.metric("fsm_whatsapp_signature_failures_total", reason="mismatch") == 3


# -- into the flow ----------------------------------------------------------------------------
def test_text_list_reply_and_button_reply_reach_their_steps(
    hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    assert hook.post(p.body([p.text(ALICE, "hi")])).status_code == 200
    first = graph.sends()
    assert [body_text(r.body) for r in first] == ["Hello, you said hi", "Pick a fruit"]
    listed = first[1].body["interactive"]
    assert listed["type"] == "list"
    rows = listed["action"]["sections"][0]["rows"]
    assert [r["id"] for r in rows] == ["fruit-apple", "fruit-pear"]
    assert stage_step(store, ALICE)[0] == "fruit"

    assert hook.post(p.body([p.list_reply(ALICE, "fruit-pear", "Pear")])).status_code == 200
    confirm = graph.sends()[-1].body["interactive"]
    assert confirm["type"] == "button" and confirm["body"]["text"] == "Buy one Pear?"
    ids = [b["reply"]["id"] for b in confirm["action"]["buttons"]]
    assert ids == ["cancel", "ok"]

    # A typed "cancel" is text; a pressed Cancel is the button: the flow tells them apart.
    assert hook.post(p.body([p.text(ALICE, "cancel")])).status_code == 200
    assert graph.texts()[-2] == "You typed 'cancel': please press a button."
    assert hook.post(p.body([p.button_reply(ALICE, "cancel", "Cancel")])).status_code == 200
    assert graph.texts()[-1] == "Cancelled (button)."
    assert stage_step(store, ALICE)[0] == "hello"


def test_a_template_quick_reply_is_a_press(hook: Webhook, graph: FakeGraph) -> None:
    hook.post(p.body([p.text(ALICE, "hi")]))
    hook.post(p.body([p.list_reply(ALICE, "fruit-apple")]))
    assert hook.post(p.body([p.template_button(ALICE, "ok")])).status_code == 200
    assert graph.texts()[-1] == "Bought one Apple."


def test_every_field_of_every_send_is_what_meta_expects(hook: Webhook, graph: FakeGraph) -> None:
    hook.post(p.body([p.text(ALICE, "hi")]))
    for request in graph.sends():
        assert request.authorization == f"Bearer {graph.token}"
        assert request.path == f"/v99.0/{graph.phone_number_id}/messages"
        assert request.body["messaging_product"] == "whatsapp"
        assert request.body["to"] == ALICE
        assert request.body["recipient_type"] == "individual"


def test_a_status_update_sends_nothing(hook: Webhook, graph: FakeGraph, store: MemoryStore) -> None:
    raw = p.body(statuses=[p.status("wamid.out.1", "delivered"), p.status("wamid.out.1", "read")])
    assert hook.post(raw).status_code == 200
    assert graph.requests == [] and store.load(ALICE).record is None
    assert hook.metric("fsm_whatsapp_statuses_total", status="delivered") == 1
    assert hook.metric("fsm_whatsapp_statuses_total", status="read") == 1


def test_three_messages_from_two_users_in_one_body_all_apply(
    hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    raw = p.body([p.text(ALICE, "hi"), p.text(BOB, "hello"), p.list_reply(ALICE, "fruit-apple")])
    assert hook.post(raw).status_code == 200
    assert stage_step(store, ALICE)[0] == "confirm"  # both of Alice's, in order
    assert stage_step(store, BOB)[0] == "fruit"
    assert graph.texts(ALICE) == ["Hello, you said hi", "Pick a fruit", "Buy one Apple?"]
    assert graph.texts(BOB) == ["Hello, you said hello", "Pick a fruit"]


def test_several_entries_and_changes_are_all_read(hook: Webhook, store: MemoryStore) -> None:
    import json

    one = json.loads(p.body([p.text(ALICE, "hi")]))
    two = json.loads(p.body([p.text(BOB, "hi")]))
    one["entry"].append(two["entry"][0])
    one["entry"][0]["changes"].append({"field": "account_update", "value": {"phone_number": "1"}})
    raw = json.dumps(one).encode()
    assert hook.post(raw).status_code == 200
    assert store.load(ALICE).record is not None and store.load(BOB).record is not None


def test_another_phone_number_id_is_ignored(
    hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    raw = p.body([p.text(ALICE, "hi")], phone_number_id="999")
    assert hook.post(raw).status_code == 200
    assert store.load(ALICE).record is None and graph.requests == []
    assert hook.metric("fsm_whatsapp_updates_total", outcome="ignored") == 1


def test_an_image_at_a_text_only_step_gets_the_unsupported_reply_once(
    hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    message = p.image(ALICE)
    raw = p.body([message])
    assert hook.post(raw).status_code == 200
    assert hook.post(raw).status_code == 200  # re-delivered: a duplicate, not said again
    settle(hook.bot.engine)
    assert graph.texts() == ["Sorry, I can only read text and button answers."]
    step, _version = stage_step(store, ALICE)
    assert step == "hello"  # the conversation stays where it was (its first step)
    assert hook.metric("fsm_attachments_refused_total") == 1


def test_the_same_body_posted_five_times_concurrently_applies_and_sends_once(
    hook: Webhook, graph: FakeGraph, store: MemoryStore
) -> None:
    raw = p.body([p.text(ALICE, "hi")])

    async def post_all() -> list[int]:
        async with httpx.AsyncClient(base_url=hook.url, timeout=30) as client:
            answers = await asyncio.gather(
                *(client.post("/webhook", content=raw, headers=p.signed(raw)) for _ in range(5))
            )
        return [a.status_code for a in answers]

    assert asyncio.run(post_all()) == [200] * 5
    settle(hook.bot.engine)
    assert graph.texts() == ["Hello, you said hi", "Pick a fruit"]
    step, version = stage_step(store, ALICE)
    assert step == "fruit" and version == 2  # applied once (1), its replies confirmed (2)
    assert hook.metric("fsm_whatsapp_messages_total", outcome="duplicate") == 4


# -- bad input --------------------------------------------------------------------------------
def _bad_bodies() -> list[tuple[str, bytes]]:
    huge = b'{"object": "whatsapp_business_account", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    many = p.body([p.text(f"2637{n:08d}", "hi") for n in range(10_000)])
    no_fields = (
        b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages",'
        b' "value": {"metadata": {"phone_number_id": "106540352242922"}, "messages": [{"id": '
        b'"wamid.x"}, {"from": "263770000001"}, 5, null]}}]}]}'
    )
    return [
        ("2 MB", huge),
        ("10,000 messages", many),
        ("invalid JSON", b'{"object": '),
        ("not an object", b"[1, 2, 3]"),
        ("wrong object", b'{"object": "page", "entry": []}'),
        ("wrong types", b'{"object": "whatsapp_business_account", "entry": {"a": 1}}'),
        ("entry of strings", b'{"object": "whatsapp_business_account", "entry": ["x"]}'),
        ("missing fields", no_fields),
        ("empty", b""),
        ("binary", bytes(range(256))),
    ]


@pytest.mark.parametrize(("name", "raw"), _bad_bodies(), ids=[n for n, _ in _bad_bodies()])
def test_bad_bodies_get_a_4xx_or_200_never_a_500(
    hook: Webhook, graph: FakeGraph, store: MemoryStore, name: str, raw: bytes
) -> None:
    answer = hook.post(raw)
    assert answer.status_code in (200, 400, 413), (name, answer.status_code)
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    assert graph.requests == []
    assert list(store.scan()) == []


def _malformed_bodies() -> list[tuple[str, bytes]]:
    """Bodies that are not updates, each signed and answered 400: some valid-looking."""
    deep_objects, deep_arrays = b'{"a":' * 1000 + b"1" + b"}" * 1000, b"[" * 1000 + b"]" * 1000
    envelope = b'{"object": "whatsapp_business_account", "entry": '
    valid = p.body([p.text(ALICE, "MARK")])

    def in_message(value: bytes) -> bytes:  # as the text of a message in a valid update
        assert valid.count(b'"MARK"') == 1
        return valid.replace(b'"MARK"', value)

    return [
        ("deep objects", deep_objects),
        ("deep arrays", deep_arrays),
        ("deep arrays in entry", envelope + b"[" + deep_arrays + b"]}"),
        ("deep objects in entry", envelope + b'[{"id": "WABA-1", "x": ' + deep_objects + b"}]}"),
        ("deep objects in a message", in_message(deep_objects)),
        ("deep arrays in a message", in_message(deep_arrays)),
        ("40 deep in a message", in_message(b"[" * 40 + b"]" * 40)),
        ("invalid UTF-8", envelope + b'[], "x": "\xff\xfe\xc3\x28"}'),
        ("invalid UTF-8 in a message", in_message(b'"\xc3\x28 \xff"')),
        ("entry an object", envelope + b'{"a": 1}}'),
        ("entry of numbers", envelope + b"[1, 2]}"),
        ("changes a string", envelope + b'[{"changes": "x"}]}'),
        ("value an array", envelope + b'[{"changes": [{"field": "messages", "value": [1]}]}]}'),
        ("object a number", b'{"object": 5, "entry": []}'),
        ("huge integer in a message", in_message(b"9" * 5000)),
        ("huge float in a message", in_message(b"1e99999")),
        ("a string", b'"whatsapp_business_account"'),
        ("a number", b"42"),
        ("null", b"null"),
        ("true", b"true"),
        ("an array", b"[]"),
        ("empty", b""),
        ("truncated", valid[: len(valid) // 2]),
        ("truncated after a key", b'{"object": '),
    ]


@pytest.mark.parametrize(
    ("name", "raw"), _malformed_bodies(), ids=[n for n, _ in _malformed_bodies()]
)
def test_a_malformed_body_gets_a_400_and_one_warning_never_a_500(
    hook: Webhook,
    graph: FakeGraph,
    store: MemoryStore,
    caplog: pytest.LogCaptureFixture,
    name: str,
    raw: bytes,
) -> None:
    with caplog.at_level(logging.WARNING):
        answer = hook.post(raw)  # signed: it passes the signature check
    assert answer.status_code == 400, (name, answer.status_code, answer.text[:200])
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    assert answer.text.startswith("not a webhook update")
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelname, r.getMessage().splitlines()[0]) for r in logged] == [
        ("WARNING", f"webhook body refused (400): {answer.text}")
    ]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in logged)
    assert graph.requests == []
    assert list(store.scan()) == []
    assert hook.metric("fsm_whatsapp_updates_total", outcome="bad_request") == 1


@pytest.mark.parametrize("sender", [" ", "1" * 300, "2637\x00"], ids=["blank", "long", "nul"])
def test_a_message_from_a_sender_no_conversation_can_have_is_counted_as_malformed(
    hook: Webhook, graph: FakeGraph, store: MemoryStore, sender: str
) -> None:
    """Not a 503 at every re-delivery: the engine would refuse the key every time."""
    for message in (p.image(sender), p.text(sender, "hi")):
        answer = hook.post(p.body([message]))
        assert answer.status_code == 200, answer.text
    assert hook.metric("fsm_whatsapp_messages_total", outcome="malformed") == 2
    assert graph.requests == [] and list(store.scan()) == []


def test_unicode_and_nul_in_texts(hook: Webhook, graph: FakeGraph, store: MemoryStore) -> None:
    texts = ["héllo 👋🏽 مرحبا", "nul\x00inside", "a" * 5000]
    for user, body_text_ in zip(("2631", "2632", "2634"), texts, strict=True):
        answer = hook.post(p.body([p.text(user, body_text_)]))
        assert answer.status_code == 200, (body_text_[:20], answer.text)
    # A lone surrogate is not valid JSON text (no store could keep it): 400, nothing applied.
    answer = hook.post(p.body([p.text("2633", "\ud800 lone surrogate")]))
    assert answer.status_code == 400 and "Traceback" not in answer.text
    assert store.load("2633").record is None
    said = graph.texts()
    assert "Hello, you said héllo 👋🏽 مرحبا" in said
    assert "Hello, you said nul\x00inside" in said
    # The 5,000-character text came back split at WhatsApp's 4,096.
    long_parts = [t for t in said if t.startswith("Hello, you said aaa") or set(t) == {"a"}]
    assert len(long_parts) == 2 and all(len(t) <= 4096 for t in long_parts)


def test_metrics_and_health_are_served(hook: Webhook) -> None:
    hook.post(p.body([p.text(ALICE, "hi")]))
    metrics = hook.http.get("/metrics")
    assert metrics.status_code == 200
    assert 'fsm_whatsapp_messages_total{outcome="applied"} 1.0' in metrics.text
    assert 'fsm_whatsapp_sends_total{code="",outcome="sent"} 2.0' in metrics.text
    assert p.VERIFY_TOKEN not in metrics.text and "EAAG" not in metrics.text
    assert hook.http.get("/healthz").status_code == 200
