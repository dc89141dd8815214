"""fsm.template: a reply that is a message template outside WhatsApp's 24-hour window and its
free-form fallback everywhere else. Parameters checked against Meta's limits when made, the
flow's declarations (Flow.templates) checked when the class is built, and a reply that does
not fit them refused when the step makes it (StepFailed). Stored in an outbox as before."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from adapters import MemoryStore
from fsm import (
    Context,
    Engine,
    FakeClock,
    Flow,
    Outcome,
    Stage,
    TemplateSpec,
    buttons,
    currency,
    date_time,
    media,
    on_enter,
    step,
    template,
    text,
)
from fsm.errors import InvalidFlowDefinition, StepFailed
from fsm.reply import Reply, check_whatsapp
from fsm.snapshot import Outgoing, Snapshot, decode_snapshot, encode_snapshot
from fsm.templates import Currency, DateTime, Media, Template, TextParam, mismatch
from fsm.testing import Conversation

SECRET_TEXT = "Alice owes 25 USD"  # stands for message content: never in an error or a repr


def reminder(**changes: Any) -> Reply:
    made: dict[str, Any] = {
        "params": ["Alice", currency("25", "USD", "$25.00"), date_time("March 3, 2026")],
        "header": "Your offer",
        "buttons": ["offer_accept", "offer_decline"],
        "fallback": buttons("Alice offered you $25.00", [("offer_accept", "Accept")]),
    }
    return template("offer_waiting", "en_US", **(made | changes))


# -- 1. made and checked ----------------------------------------------------------------------
def test_a_template_reply_is_its_fallback_everywhere_but_outside_the_window() -> None:
    reply = reminder()
    assert (reply.body, reply.kind) == ("Alice offered you $25.00", "buttons")
    assert reply.render() == "Alice offered you $25.00\n  1. Accept"  # the terminal's view
    sent = reply.template
    assert sent is not None and (sent.name, sent.language) == ("offer_waiting", "en_US")
    assert sent.body == (
        TextParam("Alice"),
        Currency(25_000, "USD", "$25.00"),
        DateTime("March 3, 2026"),
    )
    assert sent.header == TextParam("Your offer")
    assert sent.buttons == ("offer_accept", "offer_decline")
    plain = template("weekly_digest", "en", fallback="Your week")
    assert plain == Reply("Your week", template=Template("weekly_digest", "en"))
    assert reply.with_body("Alice offered you 25 USD").template == sent  # kept


def test_parameters_are_typed_and_checked_against_metas_limits() -> None:
    assert currency(12.345, "ZWG", "ZWG 12.345").amount_1000 == 12345
    assert currency(7, "USD", "$7").amount_1000 == 7000
    assert media("image", id="1234") == Media("image", id="1234")
    bad: list[tuple[Any, str]] = [
        (lambda: template("Offer-Waiting", "en", fallback="x"), "lowercase letters"),
        (lambda: template("x" * 513, "en", fallback="x"), "lowercase letters"),
        (lambda: template("offer", "english", fallback="x"), "en_US"),
        (lambda: template("offer", "en", params=["a\nb"], fallback="x"), "new line"),
        (lambda: template("offer", "en", params=["a     b"], fallback="x"), "4 spaces"),
        (lambda: template("offer", "en", params=[" "], fallback="x"), "is empty"),
        (lambda: template("offer", "en", params=["x" * 1025], fallback="x"), "at most 1024"),
        (lambda: template("offer", "en", header="x" * 61, fallback="x"), "at most 60"),
        (lambda: template("offer", "en", buttons=["b"] * 11, fallback="x"), "at most 10"),
        (lambda: template("offer", "en", buttons=[""], fallback="x"), "1 to 256"),
        (lambda: template("offer", "en", params=[Media("image", id="1")], fallback="x"), "not"),  # type: ignore[list-item]
        (lambda: template("offer", "en", fallback=reminder()), "not another template"),
        (lambda: currency("1.2345", "USD", "$1.23"), "3 decimals"),
        (lambda: currency("nan", "USD", "?"), "finite"),
        (lambda: currency("one", "USD", "?"), "a number"),
        (lambda: currency(5, "usd", "$5"), "ISO 4217"),
        (lambda: currency(5, "USD", ""), "empty"),
        (lambda: date_time("3\n4"), "new line"),
        (lambda: media("audio", id="1"), "image, document, video"),  # type: ignore[arg-type]
        (lambda: media("image"), "either an id or a link"),
        (lambda: media("image", id="1", link="https://x.example/a.png"), "either an id"),
        (lambda: media("video", link="file:///etc/passwd"), "http(s)"),
    ]
    for make, problem in bad:
        with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            make()
    with pytest.raises(TypeError, match="not a single string"):
        template("offer", "en", buttons="offer_accept", fallback="x")
    with pytest.raises(TypeError, match="a bool"):
        currency(True, "USD", "$1")


def test_the_kit_checks_a_template_made_by_hand() -> None:
    assert check_whatsapp(reminder()) == []
    by_hand = Reply("Hello", template=Template("Hello World", "en", (TextParam("a\tb"),)))
    with pytest.raises(ValueError, match="its template: the name must be") as caught:
        check_whatsapp(by_hand)
    assert "its template: body parameter 1 has a new line, a tab" in str(caught.value)


def test_no_parameter_shows_in_an_error_or_a_repr() -> None:
    with pytest.raises(ValueError) as caught:
        template("offer", "en", params=[SECRET_TEXT + "\n"], header="x" * 70, fallback="x")
    assert "Alice" not in str(caught.value) and "xxxx" not in str(caught.value)
    made = template(
        "offer",
        "en",
        params=[SECRET_TEXT, currency(25, "USD", SECRET_TEXT)],
        header=media("image", link="https://cdn.example/a.png?signature=s3cr3t"),
        fallback="x",
    )
    shown = repr(made.template) + repr(made.template.body if made.template else ())
    assert "Alice" not in shown and "s3cr3t" not in shown
    assert "offer" in shown and "body=2 params" in shown


# -- 2. stored in an outbox ---------------------------------------------------------------------
def test_a_template_reply_is_stored_and_read_back_and_others_are_stored_as_before() -> None:
    snapshot = Snapshot(flow="f", stage="s", step="t", version=3)
    kept = msgspec.structs.replace(snapshot, outbox=(Outgoing(3, 0, "", reminder()),))
    assert decode_snapshot(encode_snapshot(kept)).outbox[0].reply == reminder()
    # A reply without a template has no "template" key, and one written before templates
    # existed (every field present) reads back the same.
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(text("hi"))) == {"body": "hi"}
    fields = msgspec.msgpack.decode(encode_snapshot(snapshot))
    old = {"body": "hi", "kind": "text", "options": []}
    fields[Snapshot.__struct_fields__.index("outbox")] = [[3, 0, "wamid.1", old]]
    [entry] = decode_snapshot(msgspec.msgpack.encode(fields)).outbox
    assert entry.reply == text("hi") and entry.reply.template is None


# -- 3. declared by the flow ---------------------------------------------------------------------
OFFER = TemplateSpec("offer_waiting", "en_US", body_params=3, header="text", buttons=2)


def offers_flow(said: Reply, **attributes: Any) -> type[Flow]:
    """A one-step flow whose step says ``said``, declaring ``templates`` (OFFER unless given)."""

    class Offers(Flow):
        name = "offers"
        takes_first_message = True
        stages = (Stage("main", ("home",)),)
        transitions = ()
        templates = attributes.get("templates", (OFFER,))

        @step("main", "home")
        def home(self, ctx: Context) -> Outcome:
            return ctx.stay(said)

    return Offers


def test_the_flow_keeps_its_declarations_by_name_and_language() -> None:
    flow = offers_flow(reminder(), templates=(OFFER, TemplateSpec("offer_waiting", "en")))
    assert flow.spec.templates == {
        ("offer_waiting", "en_US"): OFFER,
        ("offer_waiting", "en"): TemplateSpec("offer_waiting", "en"),
    }
    assert offers_flow(text("hi"), templates=()).spec.templates == {}


@pytest.mark.parametrize(
    ("templates", "problem"),
    [
        ("offer_waiting", "must be a tuple of TemplateSpec"),
        (OFFER, "must be a tuple of TemplateSpec"),
        (({"name": "offer_waiting"},), "must hold TemplateSpec objects"),
        ((TemplateSpec("Offer", "en"),), "lowercase letters"),
        ((TemplateSpec("offer", "EN"),), "en_US"),
        ((TemplateSpec("offer", "en", body_params=-1),), "`body_params` must be an int >= 0"),
        ((TemplateSpec("offer", "en", buttons=11),), "`buttons` is at most 10"),
        ((TemplateSpec("offer", "en", header="audio"),), "`header` is None or one of"),  # type: ignore[arg-type]
        ((OFFER, OFFER), "declared twice"),
    ],
)
def test_a_bad_declaration_is_refused_when_the_class_is_built(templates: Any, problem: str) -> None:
    with pytest.raises(InvalidFlowDefinition, match=problem.replace("(", r"\(")):
        offers_flow(text("hi"), templates=templates)


def engine_for(flow: type[Flow]) -> Engine:
    clock = FakeClock()
    return Engine(flow(), MemoryStore(clock=clock), clock=clock)


def test_a_declared_template_reply_is_saved_and_said_as_its_fallback() -> None:
    chat = Conversation(engine_for(offers_flow(reminder())), "263770000001")
    turn = chat.say("hi").expect("Alice offered you $25.00", "1. Accept")
    assert turn.result.replies == (reminder(),)


@pytest.mark.parametrize(
    ("said", "problem"),
    [
        (template("offer_waiting", "en", fallback="x"), "is not declared"),
        (reminder(params=["Alice"]), "takes 3 body parameters, the reply gives 1"),
        (
            reminder(header=media("image", id="1")),
            "declares header 'text', the reply gives 'image'",
        ),
        (reminder(header=None), "declares header 'text', the reply gives None"),
        (reminder(buttons=["offer_accept"]), "has 2 quick-reply buttons, the reply gives 1"),
    ],
)
def test_a_reply_that_does_not_fit_the_declarations_is_the_flows_bug(
    said: Reply, problem: str
) -> None:
    engine = engine_for(offers_flow(said))
    with pytest.raises(StepFailed) as caught:
        engine.handle("263770000001", "hi")
    assert problem in str(caught.value.__cause__)
    assert engine.peek("263770000001") is None  # nothing was saved
    assert engine.stats["step_failures"] == 1


def test_a_prompt_that_does_not_fit_is_refused_at_its_step() -> None:
    class Prompted(Flow):
        name = "prompted"
        stages = (Stage("main", ("home",)),)
        transitions = ()

        @on_enter("main", "home")
        def home_prompt(self, ctx: Context) -> list[Reply]:
            return [template("welcome", "en", fallback="Welcome")]

        @step("main", "home")
        def home(self, ctx: Context) -> Outcome:
            return ctx.stay("ok")

    with pytest.raises(StepFailed) as caught:
        engine_for(Prompted).handle("263770000001", "hi")
    assert (caught.value.stage, caught.value.step) == ("main", "home")
    assert "declared: none" in str(caught.value.__cause__)


def test_mismatch_names_what_is_declared() -> None:
    declared = {("a", "en"): TemplateSpec("a", "en"), ("b", "pt_BR"): TemplateSpec("b", "pt_BR")}
    assert mismatch(declared, Template("a", "en")) is None
    assert "(declared: a (en), b (pt_BR))" in str(mismatch(declared, Template("a", "pt_BR")))
