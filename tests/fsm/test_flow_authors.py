"""What a flow author declares instead of hand-writing: ways out (:class:`fsm.Exit`), retries
that keep their idempotency key (``ctx.retry_later``), and a first message that is never
applied to a question the user was not asked. Both engines; the booking API is the tests' own
(it applies a call and can then time out, as a real gateway does)."""

from __future__ import annotations

from typing import Any

import pytest

from adapters import MemoryStore
from fsm import Context, Exit, FakeClock, Flow, Outcome, Reply, Stage, action, on_enter, pick, step
from fsm.decide import LEAVE_ID, STAY_ID
from fsm.errors import InvalidFlowDefinition, StepFailed
from fsm.reply import choices
from fsm.testing import ABSENT, Conversation
from tests.fsm.conftest import make_engine

SERVICES = choices("What would you like to book?", [("haircut", "Haircut"), ("massage", "Massage")])


class Timeout(Exception):
    """The booking API did not answer in time (it may have applied the call)."""


class Refused(Exception):
    """The booking API refused the call (nothing was applied)."""


class BookingApi:
    """Bookings by idempotency key: a key seen before returns the same booking."""

    def __init__(self) -> None:
        self.bookings: dict[str, tuple[str, str]] = {}
        self.keys: list[str] = []
        self.timeout_after_applying = 0
        self.refuse = 0

    def book(self, service: str, name: str, key: str) -> str:
        self.keys.append(key)
        if self.refuse:
            self.refuse -= 1
            raise Refused("no free slot")
        self.bookings.setdefault(key, (service, name))
        if self.timeout_after_applying:
            self.timeout_after_applying -= 1
            raise Timeout
        return f"B{len(self.bookings)}"


class Booking(Flow):
    name = "booking"
    stages = (
        Stage("menu", ("choose",)),
        Stage(
            "book",
            ("name", "confirm", "place"),
            exit=Exit("home", say="Booking cancelled.", ask="Stop the booking?", unset=("who",)),
        ),
    )
    transitions = (("start", "menu", "book"), ("home", "book", "menu"))

    def __init__(self, api: BookingApi) -> None:
        self.api = api

    @on_enter("menu", "choose")
    def show_services(self, ctx: Context) -> list[Reply]:
        return [SERVICES]

    @step("menu", "choose")
    def choose(self, ctx: Context) -> Outcome:

        chosen = pick(SERVICES, ctx.text)
        if chosen is None:
            return ctx.stay("Please pick a service.", SERVICES)
        return ctx.go("start", option=chosen.id)

    @on_enter("book", "name")
    def ask_name(self, ctx: Context) -> list[str]:
        return ["Your name?"]

    @step("book", "name", free_text=True)
    def name_step(self, ctx: Context) -> Outcome:
        return ctx.stay(step="confirm", set={"who": ctx.text.strip()})

    @on_enter("book", "confirm")
    def ask_confirm(self, ctx: Context) -> list[str]:
        return [f"Book a {ctx.option} for {ctx.data['who']}? (yes / change)"]

    @step("book", "confirm")
    def confirm(self, ctx: Context) -> Outcome:
        if ctx.text == "change":
            return ctx.stay(step="name", unset=["who"])
        if ctx.text == "yes":
            return ctx.stay(step="place")
        return ctx.stay("yes or change?")

    @action("book", "place")
    def place(self, ctx: Context) -> Outcome:
        try:
            ref = self.api.book(ctx.option, ctx.data["who"], ctx.idempotency_key)
        except Timeout:
            return ctx.retry_later("It may or may not have gone through.", step="confirm")
        except Refused:
            return ctx.stay("Refused: no free slot.", step="confirm")
        return ctx.go("home", f"Booked: {ref}.", unset=["who"])


@pytest.fixture
def api() -> BookingApi:
    return BookingApi()


@pytest.fixture
def chat(api: BookingApi, engine_kind: str) -> Conversation:
    clock = FakeClock()
    engine = make_engine(engine_kind, Booking(api), MemoryStore(clock=clock), clock=clock)
    return Conversation(engine, "u1", clock=clock)


def at_confirm(chat: Conversation) -> None:
    chat.run("> hi\n> 2\n< Your name?\n> Ann\n< Book a massage for Ann?\n= book.confirm\n")


# -- 1. retries keep their idempotency key -----------------------------------------------------


def test_applied_then_timed_out_then_confirmed_again_books_once(
    chat: Conversation, api: BookingApi
) -> None:
    at_confirm(chat)
    api.timeout_after_applying = 1
    turn = chat.say("yes").expect("may or may not have gone through", step="confirm")
    assert turn.snapshot.pending == api.keys[0]  # the key waits at the confirm step
    chat.say("maybe").expect("yes or change?")  # an unrelated answer keeps it too
    chat.say("yes").expect("Booked: B1.", stage="menu")
    assert api.keys == [api.keys[0]] * 2 and len(api.bookings) == 1


def test_a_definite_refusal_starts_a_new_request(chat: Conversation, api: BookingApi) -> None:
    at_confirm(chat)
    api.refuse = 1
    turn = chat.say("yes").expect("Refused", step="confirm")
    assert turn.snapshot.pending == ""
    chat.say("yes").expect("Booked")
    assert len(set(api.keys)) == 2


def test_changing_the_request_or_leaving_starts_a_new_request(
    chat: Conversation, api: BookingApi
) -> None:
    at_confirm(chat)
    api.timeout_after_applying = 1
    chat.say("yes").expect(step="confirm")
    chat.say("change").expect("Your name?", data={"who": ABSENT})
    turn = chat.say("Bea").expect("Book a massage for Bea?")
    assert turn.snapshot.pending == ""  # other data: another request
    chat.say("yes").expect("Booked")
    assert len(set(api.keys)) == 2 and len(api.bookings) == 2
    # Leaving the stage drops a kept key as well.
    at_confirm(chat)
    api.timeout_after_applying = 1
    chat.say("yes").expect(step="confirm")
    chat.say("cancel").expect("Booking cancelled.", stage="menu")
    at_confirm(chat)
    chat.say("yes").expect("Booked")
    assert len(set(api.keys)) == 4


def test_retry_later_from_a_step_that_is_no_action_is_refused(engine_kind: str) -> None:
    class Wrong(Flow):
        name = "wrong"
        takes_first_message = True
        stages = (Stage("a", ("x", "y")),)
        transitions = ()

        @step("a", "x")
        def x(self, ctx: Context) -> Outcome:
            return ctx.retry_later("no", step="y")

        @step("a", "y")
        def y(self, ctx: Context) -> Outcome:
            return ctx.stay()

    engine = make_engine(engine_kind, Wrong(), MemoryStore())
    with pytest.raises(StepFailed) as info:
        engine.handle("u", "hi")
    assert "retry_later() is for actions" in str(info.value.__cause__)


# -- 2. declared ways out ---------------------------------------------------------------------


def test_an_exit_word_at_a_choice_step_leaves_at_once(chat: Conversation) -> None:
    at_confirm(chat)
    turn = chat.say("  CANCEL ").expect("Booking cancelled.", stage="menu", data={"who": ABSENT})
    assert turn.texts[-1].startswith("What would you like to book?")  # the menu's prompt
    assert turn.result.events == ("home",)  # the declared trigger, checked by the machine


def test_an_exit_word_at_a_free_text_step_asks_and_no_takes_it_as_the_answer(
    chat: Conversation,
) -> None:
    chat.run("> hi\n> 1\n= book.name\n")
    asked = chat.say("Cancel").expect("Stop the booking?", step="name")
    assert asked.snapshot.asked == "Cancel"
    assert [(o.id, o.title) for o in asked.result.replies[-1].options] == [
        (LEAVE_ID, "Yes"),
        (STAY_ID, "No"),
    ]
    chat.say("no").expect("Book a haircut for Cancel?", step="confirm", data={"who": "Cancel"})


def test_at_the_question_yes_the_word_again_or_a_tap_leave(chat: Conversation) -> None:
    for leave in ("yes", "stop", None):
        chat.run("> hi\n> 1\n= book.name\n> stop\n< Stop the booking?\n")
        turn = chat.press(LEAVE_ID) if leave is None else chat.say(leave)
        turn.expect("Booking cancelled.", stage="menu")
        assert turn.snapshot.asked == ""


def test_at_the_question_another_answer_is_taken_in_its_place(chat: Conversation) -> None:
    chat.run("> hi\n> 1\n> menu\n< Stop the booking?\n")
    chat.say("Dora").expect("Book a haircut for Dora?", data={"who": "Dora"})
    chat.run("> change\n> back\n< Stop the booking?\n")
    chat.press(STAY_ID).expect("Book a haircut for back?")  # the No button: the held word


def test_a_slash_command_or_a_pressed_exit_id_leaves_at_once(chat: Conversation) -> None:
    chat.run("> hi\n> 1\n= book.name\n")
    chat.say("/cancel").expect("Booking cancelled.", stage="menu")
    chat.run("> hi\n> 1\n> Ann\n= book.confirm\n")
    chat.press("cancel").expect("Booking cancelled.", stage="menu")


def test_a_pressed_id_that_is_no_exit_reaches_the_handler(chat: Conversation) -> None:
    chat.run("> hi\n> 1\n= book.name\n")
    chat.press("stop").expect("Book a haircut for stop?")  # a tap is a choice, not a word


def test_an_exit_does_not_apply_at_its_own_target_step(engine_kind: str) -> None:
    class Wizard(Flow):
        name = "wizard"
        takes_first_message = True
        stages = (Stage("w", ("start", "more"), exit=Exit("start", say="Stopped.")),)
        transitions = ()

        @step("w", "start")
        def start(self, ctx: Context) -> Outcome:
            return ctx.stay(f"start got {ctx.text}", step="more")

        @step("w", "more")
        def more(self, ctx: Context) -> Outcome:
            return ctx.stay("more")

    chat = Conversation(make_engine(engine_kind, Wizard(), MemoryStore()), "u")
    chat.say("cancel").expect("start got cancel", step="more")
    chat.say("cancel").expect("Stopped.", step="start")


@pytest.mark.parametrize(
    ("exit_", "problem"),
    [
        (Exit("nowhere"), "leads to 'nowhere', which is neither a trigger"),
        (Exit("home", words=(), ids=()), "has no words and no ids"),
    ],
)
def test_an_exit_must_lead_somewhere(exit_: Exit, problem: str) -> None:
    with pytest.raises(InvalidFlowDefinition, match=problem):

        class Broken(Flow):
            name = "broken"
            takes_first_message = True
            stages = (Stage("a", ("x",)), Stage("b", ("y",), exit=exit_))
            transitions = (("go", "a", "b"), ("home", "b", "a"))

            @step("a", "x")
            def x(self, ctx: Context) -> Outcome:
                return ctx.go("go")

            @step("b", "y")
            def y(self, ctx: Context) -> Outcome:
                return ctx.stay()


def test_an_exit_refuses_a_string_where_a_list_is_meant() -> None:
    with pytest.raises(TypeError, match="takes a list of strings"):
        Exit("home", unset="who")


# -- 3. first messages ------------------------------------------------------------------------


def test_a_first_message_gets_the_prompt_and_is_not_applied(
    chat: Conversation, api: BookingApi
) -> None:
    turn = chat.say("2").expect("What would you like to book?", stage="menu", step="choose")
    assert turn.snapshot.version == 1 and turn.snapshot.option == ""  # no Massage booked
    assert chat.say("2").expect("Your name?", stage="book").snapshot.option == "massage"


def test_an_expired_conversation_shows_the_prompt_again(chat: Conversation) -> None:
    chat.run("> hi\n> 2\n= book.name\n")
    chat.advance("2d")
    turn = chat.say("Ann").expect("What would you like to book?", stage="menu")
    assert "who" not in turn.snapshot.data


def test_a_flow_that_takes_its_first_message_applies_it(engine_kind: str) -> None:
    class Greeter(Flow):
        name = "greeter"
        takes_first_message = True
        stages = (Stage("a", ("hello",)),)
        transitions = ()

        @on_enter("a", "hello")
        def prompt(self, ctx: Context) -> list[str]:
            return ["Say something."]

        @step("a", "hello")
        def hello(self, ctx: Context) -> Outcome:
            return ctx.stay(f"You said {ctx.text}.")

    chat = Conversation(make_engine(engine_kind, Greeter(), MemoryStore()), "u")
    chat.say("hi").expect("You said hi.")


def test_an_initial_step_without_a_prompt_must_say_it_takes_the_first_message() -> None:
    with pytest.raises(InvalidFlowDefinition, match="set `takes_first_message = True`"):

        class Silent(Flow):
            name = "silent"
            stages = (Stage("a", ("x",)),)
            transitions = ()

            @step("a", "x")
            def x(self, ctx: Context) -> Outcome:
                return ctx.stay()


# -- papercuts --------------------------------------------------------------------------------


def test_a_string_as_steps_is_refused_with_the_fix() -> None:
    with pytest.raises(InvalidFlowDefinition, match=r"write a tuple, \('question',\)"):
        Stage("ask", "question")


@pytest.mark.parametrize("bad", [42, None, ["a list"], {"step": "x"}])
def test_a_reply_that_is_not_a_reply_is_a_type_error_at_once(bad: Any) -> None:
    ctx = Context("u", "", "s", "x", "", {}, "", None, 0.0, None)
    for make in (lambda: ctx.stay(bad), lambda: ctx.go("e", "ok", bad)):
        with pytest.raises(TypeError, match="a reply is a Reply or a str"):
            make()


def test_the_fake_clock_starts_at_its_documented_instant() -> None:
    from datetime import UTC, datetime
    from pathlib import Path

    from fsm.clock import FAKE_EPOCH

    assert FakeClock().now() == FAKE_EPOCH
    stated = datetime.fromtimestamp(FAKE_EPOCH, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert stated == "2023-11-14 22:13:20 UTC"
    docs = " ".join((Path(__file__).parents[2] / "docs" / "testing.md").read_text().split())
    assert stated in docs and "expires a conversation on Redis exactly as on the memory" in docs


def test_a_held_exit_word_survives_the_stored_bytes() -> None:
    from fsm import Snapshot, decode_snapshot, encode_snapshot

    snap = Snapshot(flow="booking", stage="book", step="name", version=3, asked="Cancel")
    assert decode_snapshot(encode_snapshot(snap)).asked == "Cancel"
    older = Snapshot(flow="booking", stage="book", step="name", version=3)  # written before
    assert decode_snapshot(encode_snapshot(older)).asked == ""


def test_a_late_tap_on_an_earlier_questions_yes_leaves(chat: Conversation) -> None:
    chat.run("> hi\n> 1\n> Ann\n= book.confirm\n")
    chat.press(LEAVE_ID).expect("Booking cancelled.", stage="menu")


def test_at_the_question_a_pressed_exit_id_leaves(chat: Conversation) -> None:
    chat.run("> hi\n> 1\n> stop\n< Stop the booking?\n")
    chat.press("cancel").expect("Booking cancelled.", stage="menu")  # an older Cancel button


def test_a_late_tap_on_an_earlier_questions_no_asks_the_step_again(chat: Conversation) -> None:
    chat.run("> hi\n> 1\n= book.name\n")
    turn = chat.press(STAY_ID).expect("Your name?", step="name", data={"who": ABSENT})
    assert turn.snapshot.asked == ""  # not taken as a name


# -- 3. an honest cancel after a timeout, and a user who always hears something ---------------


class Honest(Booking):
    """The documented pattern: "no" at confirm leaves by the stage's exit (``ctx.exit()``),
    whose words depend on ``ctx.uncertain``; the confirm step records what it saw."""

    name = "honest"
    seen: list[tuple[bool, str]] = []
    stages = (
        Stage("menu", ("choose",)),
        Stage(
            "book",
            ("name", "confirm", "place"),
            exit=Exit(
                "home",
                say=lambda ctx: (
                    "Stopped: it may have gone through, check your bookings."
                    if ctx.uncertain
                    else "Booking cancelled."
                ),
                unset=("who",),
            ),
        ),
    )

    @step("book", "confirm")
    def confirm(self, ctx: Context) -> Outcome:
        self.seen.append((ctx.uncertain, ctx.idempotency_key))
        if ctx.text == "no":
            return ctx.exit()
        return super().confirm(ctx)


def test_the_retry_step_sees_the_kept_key_and_no_says_it_may_have_gone_through(
    api: BookingApi, engine_kind: str
) -> None:
    clock = FakeClock()
    flow = Honest(api)
    flow.seen = []
    engine = make_engine(engine_kind, flow, MemoryStore(clock=clock), clock=clock)
    chat = Conversation(engine, "u1", clock=clock)
    at_confirm(chat)
    chat.say("maybe")
    assert flow.seen[-1] == (False, "")  # nothing attempted yet
    api.timeout_after_applying = 1
    chat.say("yes").expect("may or may not have gone through", step="confirm")
    chat.say("maybe").expect("yes or change?")
    assert flow.seen[-1] == (True, api.keys[0])  # the kept key, visible
    turn = chat.say("no").expect("it may have gone through", stage="menu", data={"who": ABSENT})
    assert "cancelled" not in turn.said and turn.snapshot.pending == ""
    assert len(api.bookings) == 1
    # With nothing attempted, the same "no" says it was cancelled.
    at_confirm(chat)
    chat.say("no").expect("Booking cancelled.", stage="menu")


def test_ctx_exit_in_a_stage_without_an_exit_fails_clearly(engine_kind: str) -> None:
    class NoWayOut(Flow):
        name = "nowayout"
        takes_first_message = True
        stages = (Stage("a", ("x",)),)
        transitions = ()

        @step("a", "x")
        def x(self, ctx: Context) -> Outcome:
            return ctx.exit()

    engine = make_engine(engine_kind, NoWayOut(), MemoryStore())
    with pytest.raises(StepFailed) as info:
        engine.handle("u", "hi")
    assert "declares no Exit" in str(info.value.__cause__)


class Wrapped(Exception):
    """An HTTP client's own error, raised from the socket's."""


class Fails(Flow):
    """A step that moves to an action, which fails the way the message says."""

    name = "fails"
    takes_first_message = True
    failure_reply = "Our side failed; try again."
    transient_errors = (TimeoutError, ConnectionError, Wrapped)
    stages = (Stage("a", ("x", "act")),)
    transitions = ()

    @step("a", "x")
    def x(self, ctx: Context) -> Outcome:
        if ctx.text == "step-timeout":
            raise TimeoutError("the lookup timed out")
        return ctx.stay(step="act", set={"how": ctx.text})

    @action("a", "act")
    def act(self, ctx: Context) -> Outcome:
        how = ctx.data["how"]
        if how == "reset":
            raise ConnectionResetError("reset by peer")
        if how in ("wrapped", "hidden"):
            try:
                raise TimeoutError("read timed out")
            except TimeoutError as exc:
                if how == "hidden":
                    raise RuntimeError("not I/O, says the code") from None
                raise RuntimeError("the client gave up") from exc
        if how == "declared":
            raise Wrapped("the client's own error")
        raise KeyError("a bug")


@pytest.mark.parametrize(
    ("text", "where", "transient"),
    [
        ("bug", "a.act", False),
        ("reset", "a.act", True),
        ("wrapped", "a.act", True),
        ("declared", "a.act", True),
        ("hidden", "a.act", False),  # `from None`: the code said it is not I/O
        ("step-timeout", "a.x", False),  # nothing saved: not worth a re-delivery
    ],
)
def test_a_failure_carries_what_to_tell_the_user_and_whether_io_caused_it(
    engine_kind: str, text: str, where: str, transient: bool, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(engine_kind, Fails(), MemoryStore())
    with caplog.at_level("WARNING", logger="fsm.engine"), pytest.raises(StepFailed) as info:
        engine.handle("u", text, message_id="m-1")
    failure = info.value
    assert failure.transient is transient
    expected = Fails.delay_reply if transient else "Our side failed; try again."
    assert failure.notice == Reply(expected)
    line = next(r.getMessage() for r in caplog.records if "m-1" in r.getMessage())
    assert where in line and type(failure.__cause__).__name__ in line
    assert "a bug" not in line and "reset by peer" not in line  # never the exception's text


def test_failure_texts_are_checked_when_the_class_is_built() -> None:
    with pytest.raises(InvalidFlowDefinition, match="failure_reply"):

        class Silent(Fails):
            name = "silent"
            failure_reply = ""

    with pytest.raises(InvalidFlowDefinition, match="transient_errors"):

        class Odd(Fails):
            name = "odd"
            transient_errors = (TimeoutError, "timeout")  # type: ignore[assignment]


def test_ctx_exit_from_an_action_is_refused(engine_kind: str) -> None:
    """An action whose call may have gone through returns retry_later; leaving from there
    would say "cancelled" with nothing known."""

    class ExitsFromAction(Flow):
        name = "exitsfromaction"
        takes_first_message = True
        stages = (Stage("a", ("x", "act"), exit=Exit("x", say="cancelled")),)
        transitions = ()

        @step("a", "x")
        def x(self, ctx: Context) -> Outcome:
            return ctx.stay(step="act")

        @action("a", "act")
        def act(self, ctx: Context) -> Outcome:
            return ctx.exit()

    engine = make_engine(engine_kind, ExitsFromAction(), MemoryStore())
    with pytest.raises(StepFailed) as info:
        engine.handle("u", "go")
    assert "ctx.exit() is for steps" in str(info.value.__cause__)


def test_a_session_expired_with_a_kept_key_is_logged_and_counted(
    chat: Conversation, api: BookingApi, caplog: pytest.LogCaptureFixture
) -> None:
    at_confirm(chat)
    api.timeout_after_applying = 1
    key = chat.say("yes").expect(step="confirm").snapshot.pending
    chat.advance("31m")
    with caplog.at_level("WARNING", logger="fsm.engine"):
        chat.say("yes").expect(chat.engine.expired_notice, stage="menu")
    assert any(key in r.getMessage() for r in caplog.records)  # for follow-up by hand
    assert chat.engine.stats["expired_unfinished"] == 1
