"""The transport's parts on their own: parsing, rendering, signatures, settings, pacing and
secrets kept out of every repr and message."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from adapters.whatsapp import GraphClient, Settings, SettingsError, WebhookConfig, parse_update
from adapters.whatsapp.graph import GraphError, Pacer
from adapters.whatsapp.render import render, render_template, split_text
from adapters.whatsapp.signature import signature, signature_problem
from adapters.whatsapp.updates import MAX_NESTING, BadUpdate
from fsm.reply import buttons, check_whatsapp, choices, template, text, whatsapp_problems
from fsm.templates import media

from . import payloads as p
from .fake_graph import PHONE_NUMBER_ID


def test_parse_reads_every_kind_and_counts_the_broken() -> None:
    raw = p.body(
        [
            p.text("1", "hello"),
            p.button_reply("1", "ok", "OK"),
            p.list_reply("2", "row-3"),
            p.template_button("2", "stop"),
            p.image("3"),
            {"id": "wamid.no-sender", "type": "text", "text": {"body": "x"}},
            {"from": "4", "id": "wamid.no-body", "type": "text"},
        ],
        [p.status("wamid.out.1", "failed") | {"errors": [{"code": 131047}]}],
    )
    update = parse_update(raw, phone_number_id=PHONE_NUMBER_ID)
    got = [(m.user, m.kind, m.text, m.pressed) for m in update.messages]
    assert got == [
        ("1", "text", "hello", None),
        ("1", "interactive", "ok", "ok"),
        ("2", "interactive", "row-3", "row-3"),
        ("2", "button", "stop", "stop"),
        ("3", "image", "", None),
        ("4", "text:unreadable", "", None),
    ]
    assert [m.readable for m in update.messages] == [True] * 5 + [False]  # an image is read
    assert update.malformed == 1
    assert update.statuses[0].status == "failed" and update.statuses[0].error_codes == (131047,)


def test_parse_refuses_what_is_not_an_update() -> None:
    for raw in (b"", b"nope", b"[]", b'{"entry": 5}', b'{"entry": [{"changes": 1}]}'):
        with pytest.raises(BadUpdate):
            parse_update(raw, phone_number_id=PHONE_NUMBER_ID)
    many = p.body([p.text("1", "x")] * 3)
    with pytest.raises(BadUpdate, match="more than 2 messages"):
        parse_update(many, phone_number_id=PHONE_NUMBER_ID, max_messages=2)
    other = parse_update(b'{"object": "instagram"}', phone_number_id=PHONE_NUMBER_ID)
    assert other.messages == [] and other.ignored == 1


def test_parse_refuses_a_value_nested_deeper_than_the_limit_whatever_the_stack() -> None:
    def nested(depth: int) -> bytes:  # the text of a message, nested: the value is 4 deep
        inner = b"[" * (depth - 4) + b"]" * (depth - 4)
        return p.body([p.text("1", "MARK")]).replace(b'"MARK"', inner)

    [message] = parse_update(nested(MAX_NESTING), phone_number_id=PHONE_NUMBER_ID).messages
    assert message.kind == "text:unreadable"  # read, and answered as unreadable
    for depth in (MAX_NESTING + 1, 500, 5000):
        with pytest.raises(BadUpdate, match="nested"):
            parse_update(nested(depth), phone_number_id=PHONE_NUMBER_ID)


def test_render_text_buttons_and_list() -> None:
    [plain] = render(text("hi"), "263")
    assert plain["type"] == "text" and plain["text"] == {"body": "hi", "preview_url": False}
    [pressed] = render(buttons("Sure?", [("y", "Yes"), ("n", "No")]), "263")
    assert pressed["interactive"]["action"]["buttons"][1] == {
        "type": "reply",
        "reply": {"id": "n", "title": "No"},
    }
    [listed] = render(choices("Pick", [("a", "A"), ("b", "B")]), "263")
    action = listed["interactive"]["action"]
    assert action["button"] == "Choose" and [r["id"] for r in action["sections"][0]["rows"]] == [
        "a",
        "b",
    ]
    json.dumps([plain, pressed, listed])  # all plain JSON


def test_render_a_template_message() -> None:
    reply = template("weekly_digest", "pt_BR", header=media("image", id="4321"), fallback="x")
    assert reply.template is not None
    sent = render_template(reply.template, "263")
    assert sent == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "263",
        "type": "template",
        "template": {
            "name": "weekly_digest",
            "language": {"code": "pt_BR"},
            "components": [
                {"type": "header", "parameters": [{"type": "image", "image": {"id": "4321"}}]}
            ],
        },
    }
    bare = render_template(template("hello_world", "en", fallback="x").template, "263")  # type: ignore[arg-type]
    assert bare["template"] == {"name": "hello_world", "language": {"code": "en"}}
    assert render(reply, "263")[0]["type"] == "text"  # render: always the free-form form
    json.dumps([sent, bare])


def test_a_reply_over_a_limit_goes_out_as_numbered_text() -> None:
    reply = buttons("Pick one", [("x" * 300, "A title")])  # an id cannot be cut short
    assert whatsapp_problems(reply)
    with pytest.raises(ValueError, match="button id"):
        check_whatsapp(reply)
    [sent] = render(reply, "263")
    assert sent["type"] == "text" and "1. A title" in sent["text"]["body"]


def test_long_texts_split_at_boundaries() -> None:
    words = " ".join(f"word{n}" for n in range(2000))  # 16,889 characters
    parts = split_text(words)
    assert all(len(part) <= 4096 for part in parts) and len(parts) == 5
    assert " ".join(parts) == words  # cut between words, nothing lost
    assert split_text("a\n\nb", limit=3) == ["a", "b"]
    assert split_text("x" * 10, limit=4) == ["xxxx", "xxxx", "xx"]  # one long word: hard cut


def test_signature_problems() -> None:
    body = b'{"a": 1}'
    good = signature(body, "s3cret")
    assert signature_problem(good, body, "s3cret") is None
    assert signature_problem(None, body, "s3cret") == "missing"
    assert signature_problem("sha256=abc", body, "s3cret") == "malformed"
    assert signature_problem(good, body + b" ", "s3cret") == "mismatch"
    assert signature_problem(good, body, "other") == "mismatch"


def test_settings_name_what_is_missing_and_never_a_value() -> None:
    env = {
        "WHATSAPP_ACCESS_TOKEN": "EAAG-secret-token",
        "WHATSAPP_APP_SECRET": "app-secret-value",
        "WHATSAPP_VERIFY_TOKEN": "verify-value",
        "WHATSAPP_PHONE_NUMBER_ID": "123",
    }
    settings = Settings.from_env(env)
    assert settings.store_url is None and settings.rate == 80.0 and settings.mark_as_read
    shown = repr(settings)
    assert "EAAG" not in shown and "app-secret" not in shown and "verify-value" not in shown
    with pytest.raises(SettingsError, match="WHATSAPP_VERIFY_TOKEN") as caught:
        Settings.from_env({k: v for k, v in env.items() if k != "WHATSAPP_VERIFY_TOKEN"})
    assert "EAAG" not in str(caught.value)
    for name, bad in (
        ("WHATSAPP_RATE", "fast"),
        ("WHATSAPP_MARK_READ", "maybe"),
        ("WHATSAPP_API_URL", "ftp://x"),
        ("WHATSAPP_CLOSED_WINDOW", "wait"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({**env, name: bad})
    assert Settings.from_env({**env, "FSM_STORE": "memory"}).store_url is None
    assert settings.closed_window == "drop"
    assert Settings.from_env({**env, "WHATSAPP_CLOSED_WINDOW": " Keep "}).closed_window == "keep"


def test_no_secret_in_reprs_or_errors() -> None:
    client = GraphClient(access_token="EAAG-very-secret", phone_number_id="123")
    config = WebhookConfig("app-secret", "verify-secret", "123")
    assert "EAAG" not in repr(client)
    assert "app-secret" not in repr(config) and "verify-secret" not in repr(config)
    error = GraphError(401, 190, "Invalid OAuth access token", retryable=False)
    assert "EAAG" not in str(error) and error.label == "190"
    asyncio.run(client.aclose())


def test_the_pacer_spaces_requests() -> None:
    async def timed() -> float:
        pacer = Pacer(200.0)  # 5 ms apart
        started = time.perf_counter()
        await asyncio.gather(*(pacer.wait() for _ in range(21)))
        return time.perf_counter() - started

    assert asyncio.run(timed()) >= 0.095  # 20 intervals of 5 ms
    unpaced = Pacer(0)
    asyncio.run(unpaced.wait())


def test_error_codes_map_to_typed_errors() -> None:
    import httpx

    from adapters.whatsapp.graph import (
        AccountRefused,
        GraphRefused,
        GraphUnavailable,
        OutsideWindow,
        RateLimited,
        _error,
    )

    def answer(status: int, code: int | None) -> httpx.Response:
        body = {"error": {"message": "m", "code": code}} if code is not None else None
        return httpx.Response(status, json=body)

    cases = [
        (400, 130429, RateLimited, True),
        (400, 131056, RateLimited, True),
        (429, None, RateLimited, True),
        (400, 131047, OutsideWindow, False),
        (503, None, GraphUnavailable, True),
        (500, 131000, GraphUnavailable, True),
        (401, 190, AccountRefused, False),
        (403, 200, AccountRefused, False),
        (400, 100, GraphRefused, False),
    ]
    for status, code, kind, retryable in cases:
        error = _error(answer(status, code))
        assert type(error) is kind and error.retryable is retryable, (status, code)
        assert error.hold is (kind is AccountRefused)


def test_pick_takes_an_exact_id_before_a_position() -> None:
    from fsm.reply import pick

    amounts = choices("How much?", [("20", "20 USD"), ("10", "10 USD")])
    assert pick(amounts, "10").title == "10 USD"  # the tapped row's id, not "row 10"
    assert pick(amounts, "2").title == "10 USD"  # a typed position still works
    assert pick(amounts, "20 usd").id == "20"


def test_option_counts_are_checked_too() -> None:
    from fsm.reply import Option, Reply

    four = Reply("Pick", "buttons", tuple(Option(str(n), f"B{n}") for n in range(4)))
    assert any("1 to 3 options" in problem for problem in whatsapp_problems(four))
    [sent] = render(four, "263")
    assert sent["type"] == "text"  # numbered, answerable by number


def test_odd_fields_in_a_signed_body_are_read_or_skipped() -> None:
    odd = [
        p.text("1", "x") | {"timestamp": "²"},
        p.text("2", "x") | {"timestamp": "9" * 5000},
        {"from": "3", "id": "w3", "type": "interactive", "interactive": {"type": ["list"]}},
        {"from": "4", "id": "w4", "type": "interactive", "interactive": {"type": "nope"}},
        {"from": "5", "id": "w5", "type": 7},
        {"from": ["6"], "id": "w6", "type": "text", "text": {"body": "x"}},
    ]
    update = parse_update(p.body(odd), phone_number_id=PHONE_NUMBER_ID)
    assert [(m.user, m.readable, m.timestamp) for m in update.messages] == [
        ("1", True, 0),
        ("2", True, 0),
        ("3", False, 0),
        ("4", False, 0),
    ]
    assert update.malformed == 2
