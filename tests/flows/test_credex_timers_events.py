"""The reference bot's timers and events, driven directly: the clock moved by hand
(``FakeClock.advance``) and the ticker run by hand (``engine.fire_due``), on both engines.

Confirm steps where a draft waits remind after 10 idle minutes and drop the draft 20 minutes
later; an offer made to a member reaches their bot (the fake API's notification, applied at the
next tick) wherever they are, with Accept and Decline buttons that work from any step.
"""

from __future__ import annotations

import msgspec
import pytest

from adapters import MemoryStore
from flows.credex import CredexBot, build_engine
from flows.credex.api import ApiError
from flows.credex.dashboard import summary_in
from flows.credex.delivery import Mailbox
from flows.credex.fake import FakeCredexApi, Notification
from flows.credex.incoming import UNREADABLE
from fsm import FakeClock, encode_snapshot, event_option
from fsm.result import Result
from fsm.testing import Conversation
from tests.flows.conftest import ALICE, BOB, CAROL, STRANGER, Bot

MINUTE = 60.0


def tick(bot: Bot) -> dict[str, list[Result]]:
    """One round of the ticker: what it said, by user."""
    said: dict[str, list[Result]] = {}
    bot.engine.fire_due(on_result=lambda user, result: said.setdefault(user, []).append(result))
    return said


def texts(results: list[Result]) -> str:
    return "\n".join(text for result in results for text in result.texts)


def option_ids(result: Result) -> list[str]:
    return [option.id for reply in result.replies for option in reply.options]


def chat(bot: Bot, user: str) -> Conversation:
    """``user``'s conversation with ``bot``, one per user for the whole test, so message ids
    never repeat (a repeated id is a re-delivery, answered as a duplicate)."""
    chats: dict[str, Conversation] = bot.__dict__.setdefault("chats", {})
    if user not in chats:
        chats[user] = Conversation(bot.engine, user, clock=bot.clock)
    return chats[user]


def at_offer_confirm(bot: Bot, user: str = ALICE, amount: str = "25", to: str = "bob") -> None:
    chat(bot, user).run(f"> hi\n> 1\n> {amount}\n> {to}\n= credex.confirm\n")


# -- timers at the confirm steps --------------------------------------------------------------


def test_an_idle_offer_confirmation_is_reminded_then_dropped(bot: Bot) -> None:
    at_offer_confirm(bot)
    snap = bot.engine.peek(ALICE)
    assert snap is not None and [t.name for t in snap.timers] == ["remind_offer", "drop_offer"]
    bot.clock.advance(10 * MINUTE - 1)
    assert tick(bot) == {}
    bot.clock.advance(1)
    said = tick(bot)
    assert list(said) == [ALICE]
    assert texts(said[ALICE]).startswith(
        "Still there? Offer 25.00 USD from Alice Moyo Personal to Bob Dube Personal (@bob)?"
    )
    assert option_ids(said[ALICE][0]) == ["confirm", "cancel"]
    assert said[ALICE][0].snapshot.step == "confirm"
    bot.clock.advance(20 * MINUTE)
    said = tick(bot)
    assert "Your offer of 25.00 USD to @bob was dropped after 30 minutes" in texts(said[ALICE])
    assert "Nothing was sent." in texts(said[ALICE])
    snap = bot.engine.peek(ALICE)
    assert snap is not None and (snap.stage, snap.step) == ("menu", "dashboard")
    assert "amount" not in snap.data and "recipient" not in snap.data and not snap.timers
    assert bot.api.count("createCredex") == 0 and tick(bot) == {}


def test_a_message_at_the_confirmation_pushes_both_timers_back(bot: Bot) -> None:
    at_offer_confirm(bot)
    bot.clock.advance(9 * MINUTE)
    chat(bot, ALICE).say("what").expect("Please choose *Confirm* or *Cancel*.", step="confirm")
    bot.clock.advance(9 * MINUTE)
    assert tick(bot) == {}  # 18 minutes since arriving, 9 since the message
    bot.clock.advance(1 * MINUTE)
    assert "Still there?" in texts(tick(bot)[ALICE])
    bot.clock.advance(19 * MINUTE)
    assert tick(bot) == {}  # 29 minutes after the message
    bot.clock.advance(1 * MINUTE)
    assert "was dropped" in texts(tick(bot)[ALICE])


def test_the_reminders_buttons_still_confirm(bot: Bot) -> None:
    at_offer_confirm(bot)
    bot.clock.advance(10 * MINUTE)
    tick(bot)
    chat(bot, ALICE).press("confirm").expect("Offer of 25.00 USD sent to @bob.", stage="menu")
    assert bot.api.count("createCredex") == 1
    bot.clock.advance(30 * MINUTE)
    assert ALICE not in tick(bot)  # leaving the step cancelled the drop


def test_the_session_lives_until_the_draft_is_dropped(bot: Bot) -> None:
    """The drop is due when the session (30 minutes) would end: it extends the session, so
    a ticker that was down fires both timers late instead of finding the session gone."""
    at_offer_confirm(bot)
    bot.clock.advance(31 * MINUTE)
    said: list[str] = []
    for _ in range(5):  # the remind, then the drop (each firing re-indexes the next)
        for results in tick(bot).values():
            said.append(texts(results))
    assert len(said) == 2 and said[0].startswith("Still there?") and "was dropped" in said[1]
    snap = bot.engine.peek(ALICE)
    assert snap is not None and snap.stage == "menu"


def test_a_drop_after_an_uncertain_attempt_says_it_may_have_gone_through(bot: Bot) -> None:
    at_offer_confirm(bot)
    bot.api.fail_next("createCredex", ApiError(503, "createCredex", "unavailable"))
    chat(bot, ALICE).say("1").expect("may or may not have gone through", step="confirm")
    bot.clock.advance(30 * MINUTE)
    for _ in range(3):
        said = tick(bot)
        if ALICE in said and "dropped" in texts(said[ALICE]):
            break
    assert "may still have gone through: check the menu" in texts(said[ALICE])


def test_a_drop_with_an_expired_token_sends_to_sign_in_and_keeps_the_draft() -> None:
    clock = FakeClock()
    api = FakeCredexApi(clock=clock, token_ttl=20 * MINUTE)
    engine = build_engine(MemoryStore(clock=clock), api, clock=clock, jwt_leeway=0)
    alice = Conversation(engine, ALICE, clock=clock)
    alice.run("> hi\n> 1\n> 25\n> bob\n= credex.confirm\n")
    clock.advance(30 * MINUTE)
    said: list[Result] = []
    for _ in range(3):
        engine.fire_due(on_result=lambda user, result: said.append(result))
    assert "Your sign-in has expired. What you were confirming is kept" in texts(said)
    snap = engine.peek(ALICE)
    assert snap is not None and (snap.stage, snap.step) == ("auth", "login")
    assert snap.data["amount"] == {"value": 25.0, "denom": "USD"}
    alice.say("ok").expect("Offer 25.00 USD from Alice Moyo Personal", step="confirm")


def test_an_idle_review_is_reminded_then_the_choice_dropped(bot: Bot) -> None:
    chat(bot, CAROL).run("> hi\n> Accept offers (1)\n> 1\n= credex.review\n")
    bot.clock.advance(10 * MINUTE)
    reminder = tick(bot)[CAROL][0]
    assert reminder.texts[0].startswith("Still there? Accept 7.25 USD from @alice?")
    assert option_ids(reminder) == ["confirm", "pick"]
    bot.clock.advance(20 * MINUTE)
    said = texts(tick(bot)[CAROL])
    assert "Your choice (Accept 7.25 USD from @alice) was dropped" in said
    assert "Nothing was accepted." in said
    snap = bot.engine.peek(CAROL)
    assert snap is not None and snap.stage == "menu"
    assert not {"offers", "chosen"} & set(snap.data)
    assert bot.api.count("acceptCredex") == 0


def test_an_idle_registration_is_reminded_then_the_names_dropped(bot: Bot) -> None:
    chat(bot, STRANGER).run("> hi\n> Register\n> Ann\n> Lee\n> Skip\n= registration.confirm\n")
    bot.clock.advance(10 * MINUTE)
    reminder = tick(bot)[STRANGER][0]
    assert reminder.texts[0].startswith("Still there? Register as *Ann Lee*?")
    assert option_ids(reminder) == ["confirm", "change", "cancel"]
    bot.clock.advance(20 * MINUTE)
    said = texts(tick(bot)[STRANGER])
    assert said.startswith("Your registration was dropped after 30 minutes without an answer.")
    snap = bot.engine.peek(STRANGER)
    assert snap is not None and (snap.stage, snap.step) == ("registration", "welcome")
    assert not {"first_name", "last_name"} & set(snap.data)
    assert bot.api.count("onboardMember") == 0


# -- offers that arrive from outside ----------------------------------------------------------


def offer_from_alice_while_bob_drafts(bot: Bot) -> None:
    chat(bot, BOB).run("> hi\n> 1\n> 10\n= credex.recipient\n")
    at_offer_confirm(bot)
    chat(bot, ALICE).say("1").expect("Offer of 25.00 USD sent to @bob.")


def test_the_fake_api_notifies_the_receiver_of_each_offer_once(bot: Bot) -> None:
    offer_from_alice_while_bob_drafts(bot)
    (notification,) = bot.api.notifications
    assert (notification.user, notification.event, notification.event_id) == (
        BOB,
        "offer_received",
        "cx-0006",
    )
    assert notification.data == {
        "credexID": "cx-0006",
        "senderName": "Alice",
        "senderHandle": "alice",
        "amount": 25.0,
        "denomination": "USD",
    }
    assert "263770000002" not in repr(notification) and "Alice" not in repr(notification)


def test_an_offer_reaches_the_receiver_at_the_next_tick_and_keeps_his_draft(bot: Bot) -> None:
    offer_from_alice_while_bob_drafts(bot)
    before = bot.engine.peek(BOB)
    assert before is not None and before.step == "recipient"  # nothing yet: no tick
    said = tick(bot)
    assert list(said) == [BOB]
    (result,) = said[BOB]
    assert result.texts[0].startswith("Alice (@alice) offered you 25.00 USD")
    assert result.texts[1].startswith("Who should receive 10.00 USD?")  # asked again
    assert option_ids(result) == [
        event_option("offer_accept", "cx-0006"),
        event_option("offer_decline", "cx-0006"),
    ]
    snap = bot.engine.peek(BOB)
    assert snap is not None and (snap.stage, snap.step) == ("credex", "recipient")
    assert snap.data["amount"] == before.data["amount"]
    assert tick(bot) == {}  # delivered once


def test_accept_from_anywhere_is_applied_once_and_keeps_the_draft(bot: Bot) -> None:
    offer_from_alice_while_bob_drafts(bot)
    tick(bot)
    bob = chat(bot, BOB)
    accept = event_option("offer_accept", "cx-0006")
    turn = bob.press(accept, message_id="wamid-accept-1")
    turn.expect("Accepted: 25.00 USD from @alice.", "Who should receive 10.00 USD?")
    turn.expect(stage="credex", step="recipient", data={"amount": {"value": 10.0, "denom": "USD"}})
    again = bob.press(accept, message_id="wamid-accept-1")  # the same tap, re-delivered
    assert again.result.duplicate and not again.texts
    assert bot.api.count("acceptCredex") == 1
    summary = summary_in(turn.snapshot.data)
    assert summary is not None and summary.pending_in == 0  # the menu's figures, refreshed
    bob.say("alice").expect("Offer 10.00 USD from Bob Dube Personal", step="confirm")


def test_decline_from_the_menu_counts_the_offer_then_refreshes(bot: Bot) -> None:
    chat(bot, BOB).say("hi").expect(absent=("Accept offers",))
    at_offer_confirm(bot)
    chat(bot, ALICE).say("1")
    shown = tick(bot)[BOB][0]
    assert "Accept offers (1)" in shown.texts[1]  # the menu, asked again, counts it
    turn = chat(bot, BOB).press(event_option("offer_decline", "cx-0006"))
    turn.expect("Declined: 25.00 USD from @alice.", stage="menu", absent=("Accept offers",))
    assert bot.api.count("declineCredex") == 1


def test_a_tap_for_an_offer_no_longer_pending_changes_nothing(bot: Bot) -> None:
    offer_from_alice_while_bob_drafts(bot)
    chat(bot, ALICE).run("> menu\n> Cancel my offers (2)\n> 25.00 USD to @bob\n> Confirm\n")
    turn = chat(bot, BOB).press(event_option("offer_accept", "cx-0006"))
    turn.expect("That offer is no longer pending", step="recipient")
    assert bot.api.count("acceptCredex") == 0


def test_a_tap_without_a_valid_token_says_to_sign_in_and_changes_nothing(bot: Bot) -> None:
    offer_from_alice_while_bob_drafts(bot)
    bot.api.expire_tokens()  # refused by Credex
    bob = chat(bot, BOB)
    turn = bob.press(event_option("offer_accept", "cx-0006"))
    turn.expect("To accept the offer, sign in first (send *hi*)", step="recipient")
    assert bot.api.count("acceptCredex") == 0
    dan = chat(bot, "263770000004")  # no token at all: not signed in yet
    dan.say("yo").expect("Send *hi* to start.", stage="init")
    calls = len(bot.api.calls)
    dan.press(event_option("offer_decline", "cx-0001")).expect(
        "To decline the offer, sign in first", stage="init"
    )
    assert len(bot.api.calls) == calls  # not even a look


def test_an_offer_for_someone_without_a_conversation_starts_one_to_tell_them(bot: Bot) -> None:
    """The receiver may not have written for days (issue 28 sends this as a template then):
    the notice starts a conversation at the greeting, and Accept asks them to sign in."""
    at_offer_confirm(bot)
    chat(bot, ALICE).say("1")
    told = tick(bot)
    assert list(told) == [BOB]
    (result,) = told[BOB]
    assert result.texts[0].startswith("Alice (@alice) offered you")
    assert result.replies[0].template is not None
    assert result.replies[0].template.name == "credex_offer_received"
    assert (result.snapshot.stage, result.snapshot.step) == ("init", "greeting")
    assert len(bot.engine.mailbox) == 0  # type: ignore[union-attr]
    accept = result.replies[0].options[0].id
    chat(bot, BOB).press(accept).expect("To accept the offer, sign in first", stage="init")


def test_an_offer_notice_of_an_unexpected_shape_gets_a_clear_reply(bot: Bot) -> None:
    chat(bot, BOB).run("> hi\n> 1\n> 10\n")
    result = bot.engine.notify(BOB, "offer_received", data={"credexID": 7}, event_id="odd-1")
    assert result.texts[0] == UNREADABLE
    assert result.snapshot.step == "recipient" and "amount" in result.snapshot.data


# -- the fake API's notifications and the mailbox ---------------------------------------------


def test_a_replayed_offer_notifies_nothing_more_and_a_garbled_one_still_notifies() -> None:
    sent: list[Notification] = []
    api = FakeCredexApi(notifier=sent.append)
    token = api.login(ALICE).token
    api.create_credex("acc-0001", "acc-0002", "USD", 5.0, token=token, idempotency_key="k1")
    api.create_credex("acc-0001", "acc-0002", "USD", 5.0, token=token, idempotency_key="k1")
    assert [n.event_id for n in sent] == ["cx-0006"]
    api.raw_response_override("createCredex", {"unexpected": "shape"})
    with pytest.raises(ApiError):
        api.create_credex("acc-0001", "acc-0003", "USD", 1.0, token=token)
    api.fail_next("createCredex", ApiError(503, "createCredex", "down"))
    with pytest.raises(ApiError):
        api.create_credex("acc-0001", "acc-0003", "USD", 1.0, token=token)
    assert [(n.event_id, n.user) for n in sent[1:]] == [("cx-0007", CAROL)]
    assert api.notifications == sent


def test_the_mailbox_keeps_order_and_drops_the_oldest_past_its_capacity() -> None:
    box = Mailbox(capacity=2)
    first, second, third = (Notification(BOB, "offer_received", {}, f"cx-{n}") for n in "123")
    box.put(first)
    box.put(second)
    box.put(third)
    assert box.dropped == 1
    taken = box.take()
    assert taken == [second, third] and len(box) == 0
    box.put(first)
    box.put_back(taken)
    assert box.take() == [second, third, first]


def test_a_notification_the_store_cannot_take_waits_for_the_next_tick() -> None:
    from tests.support import FailingSaves

    clock = FakeClock()
    store = FailingSaves(clock=clock)
    api = FakeCredexApi(clock=clock)
    engine = build_engine(store, api, clock=clock)
    Conversation(engine, BOB, clock=clock).run("> hi\n> 1\n> 10\n")
    Conversation(engine, ALICE, clock=clock).run("> hi\n> 1\n> 25\n> bob\n> 1\n")
    store.failing = -1  # every save fails: the store is down
    said: list[tuple[str, Result]] = []
    engine.fire_due(on_result=lambda user, result: said.append((user, result)))
    assert said == [] and len(engine.mailbox) == 1  # type: ignore[attr-defined]
    store.failing = 0
    engine.fire_due(on_result=lambda user, result: said.append((user, result)))
    assert [user for user, _ in said] == [BOB] and len(engine.mailbox) == 0  # type: ignore[attr-defined]


# -- the version bump ---------------------------------------------------------------------------


def test_a_version_3_session_at_a_confirmation_loads_with_nothing_armed(bot: Bot) -> None:
    at_offer_confirm(bot)
    now = bot.engine.peek(ALICE)
    assert now is not None
    as_v3 = msgspec.structs.replace(
        now, flow_version=3, timers=(), armed="", version=now.version + 1
    )
    saved = bot.store.save(
        ALICE, encode_snapshot(as_v3), version=as_v3.version, expected_version=now.version,
        ttl=1800,
    )  # fmt: skip
    assert saved.status.name == "SAVED", saved
    bot.clock.advance(10 * MINUTE)
    assert tick(bot) == {}  # nothing armed: version 3 had no timers
    turn = chat(bot, ALICE).say("what").expect("Please choose *Confirm* or *Cancel*.")
    assert turn.snapshot.flow_version == CredexBot.version == 4
    assert turn.snapshot.data == as_v3.data  # otherwise unchanged
    assert [t.name for t in turn.snapshot.timers] == ["remind_offer", "drop_offer"]
    bot.clock.advance(10 * MINUTE)
    assert "Still there?" in texts(tick(bot)[ALICE])
