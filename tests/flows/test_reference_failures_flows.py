"""REFERENCE_BOT.md failures the sub-flows can show: 2, 3, 5, 9, 10, 11, 12 and 13.

(1, 4, 6, 7, 8 and 14 are in test_reference_failures.py.) Written with the conversation kit.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest

from adapters import MemoryStore
from flows.credex import CredexBot, build_engine
from flows.credex.api import ApiError
from flows.credex.dashboard import summary_in
from flows.credex.fake import FakeCredexApi
from fsm import Engine, FakeClock, Snapshot, TokenVerifier, decode_snapshot, encode_snapshot
from fsm.errors import StoreUnavailable
from fsm.testing import Conversation
from tests.flows.conftest import ALICE, STRANGER, Bot
from tests.support import FailingSaves


def chat(bot: Bot, user: str = ALICE) -> Conversation:
    return Conversation(bot.engine, user, clock=bot.clock)


def at_offer_confirm(bot: Bot) -> Conversation:
    alice = chat(bot)
    alice.run("> hi\n> 1\n> 12.50 ZWG\n> bob\n= credex.confirm\n")
    return alice


# -- 2. A data refresh (dashboard reload) silently moves the user to another stage mid-flow ----


def test_failure_02_refresh_after_accepting_keeps_the_member_in_the_list(bot: Bot) -> None:
    alice = chat(bot)
    alice.say("hi")
    alice.say("Accept offers (2)").expect(stage="credex", step="pick")
    alice.say("1").expect("Accept 12.50 USD from @dan?", stage="credex", step="review")
    turn = alice.say("Confirm").expect("Accepted: 12.50 USD from @dan.", step="pick")
    # The dashboard was reloaded (one offer fewer), and the member is still where they were.
    summary = summary_in(turn.snapshot.data)
    assert summary is not None and summary.pending_in == 1
    assert bot.api.count("getMemberDashboardByPhone") == 2


def test_failure_02_relogin_refreshes_the_dashboard_and_resumes_the_flow(bot: Bot) -> None:
    alice = chat(bot)
    alice.run("> hi\n> 1\n> 5\n= credex.recipient\n")
    bot.api.expire_tokens()
    alice.say("bob").expect(stage="auth")  # the API refused the token: sign in again
    alice.say("hi").expect("Who should receive 5.00 USD?", stage="credex", step="recipient")


@pytest.mark.parametrize("word", ["hi", "menu refresh", "hello"])
def test_failure_02_greetings_mid_flow_do_not_reload_or_move(bot: Bot, word: str) -> None:
    alice = chat(bot)
    alice.run("> hi\n> 1\n= credex.amount\n")
    calls = len(bot.api.calls)
    alice.say(word).expect("That is not an amount.", stage="credex", step="amount")
    assert len(bot.api.calls) == calls  # no reload happened behind the member's back


# -- 3. A prompt is sent or an API called before the state that expects the answer is saved ---


class _SpyApi(FakeCredexApi):
    """Records what the store holds for the member when a changing call arrives."""

    store: MemoryStore
    seen: list[tuple[str, str, str, dict[str, Any]]]

    def _stored(self, call: str, user: str) -> None:
        record = self.store.load(user).record
        assert record is not None
        snap = decode_snapshot(record.payload)
        self.seen.append((call, snap.stage, snap.step, dict(snap.data)))

    def create_credex(self, *args: Any, **kwargs: Any) -> Any:
        self._stored("createCredex", ALICE)
        return super().create_credex(*args, **kwargs)

    def accept_credex(self, *args: Any, **kwargs: Any) -> Any:
        self._stored("acceptCredex", ALICE)
        return super().accept_credex(*args, **kwargs)

    def onboard_member(self, *args: Any, **kwargs: Any) -> Any:
        self._stored("onboardMember", STRANGER)
        return super().onboard_member(*args, **kwargs)


def test_failure_03_changing_calls_happen_only_after_the_pending_state_is_saved() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    api = _SpyApi(clock=clock)
    api.store, api.seen = store, []
    engine = build_engine(store, api, clock=clock)
    Conversation(engine, ALICE).run("> hi\n> 1\n> 7\n> bob\n> yes\n> 2\n> 1\n> confirm\n")
    Conversation(engine, STRANGER).run("> hi\n> 1\n> Tendai\n> Moyo\n> Skip\n> 1\n= menu\n")
    assert [(call, stage, step) for call, stage, step, _ in api.seen] == [
        ("createCredex", "credex", "create"),
        ("acceptCredex", "credex", "settle"),
        ("onboardMember", "registration", "onboard"),
    ]
    # ...and that saved state holds everything the call needs.
    assert api.seen[0][3]["amount"] == {"value": 7.0, "denom": "USD"}
    assert api.seen[0][3]["recipient"]["handle"] == "bob"
    assert api.seen[1][3]["chosen"]["id"] == "cx-0001"
    assert api.seen[2][3]["last_name"] == "Moyo"


def test_failure_03_no_prompt_and_no_call_when_the_save_fails() -> None:
    clock = FakeClock()
    store = FailingSaves(clock=clock)
    api = FakeCredexApi(clock=clock)
    engine = build_engine(store, api, clock=clock)
    alice = Conversation(engine, ALICE)
    alice.run("> hi\n> 1\n> 7\n> bob\n= credex.confirm\n")
    store.failing = -1
    with pytest.raises(StoreUnavailable):  # raised: no reply is returned to be sent
        alice.say("yes")
    assert api.count("createCredex") == 0  # the pending state was not saved, so no call
    store.failing = 0
    alice.say("yes").expect("Offer of 7.00 USD sent to @bob.")
    assert api.count("createCredex") == 1


# -- 5. A cancelled flow's data comes back --------------------------------------------------------


def test_failure_05_cancelled_offer_data_is_deleted_and_does_not_come_back(bot: Bot) -> None:
    alice = at_offer_confirm(bot)
    alice.say("Cancel").expect("Offer cancelled.", stage="menu")
    stored = alice.snapshot
    assert stored is not None and "amount" not in stored.data and "recipient" not in stored.data
    alice.say("1").expect("How much do you want to offer?", absent=("12.50 ZWG",))
    alice.say("3").expect("Who should receive 3.00 USD?")


def test_failure_05_not_supplying_a_field_keeps_it(bot: Bot) -> None:
    alice = chat(bot)
    alice.run("> hi\n> 1\n> 12.50 ZWG\n")
    # An unknown handle supplies nothing new: the amount stays (not deleted by omission).
    alice.say("nobody").expect(
        "your amount (12.50 ZWG) is kept", data={"amount": {"value": 12.5, "denom": "ZWG"}}
    )


def test_failure_05_cancelled_registration_names_are_gone(bot: Bot) -> None:
    new = chat(bot, STRANGER)
    new.run("> hi\n> Register\n> Tendai\n> Moyo\n> Skip\n> Cancel\n= registration.welcome\n")
    stored = new.snapshot
    assert stored is not None and not {"first_name", "last_name"} & set(stored.data)
    new.say("Register")
    new.say("Rudo").expect("Thanks, Rudo.")


# -- 9. Data of earlier steps is lost between steps ------------------------------------------


def test_failure_09_each_step_keeps_what_earlier_steps_stored(bot: Bot) -> None:
    alice = chat(bot)
    alice.run("> hi\n> 1\n")
    alice.say("ZWG 99").expect(data={"amount": {"value": 99.0, "denom": "ZWG"}})
    alice.say("not a handle!").expect(data={"amount": {"value": 99.0, "denom": "ZWG"}})
    turn = alice.say("bob").expect("Offer 99.00 ZWG from Alice Moyo Personal to Bob Dube Personal")
    assert turn.snapshot.data["amount"] == {"value": 99.0, "denom": "ZWG"}
    assert turn.snapshot.data["recipient"]["account_id"] == "acc-0002"
    assert "dashboard" in turn.snapshot.data  # the menu's data is still there too
    # An API failure at the last step keeps everything for a retry.
    bot.api.fail_next("createCredex", ApiError(500, "createCredex", "x"))
    alice.say("yes").expect(
        "not reachable", step="confirm", data={"amount": {"value": 99.0, "denom": "ZWG"}}
    )


def test_failure_09_names_survive_invalid_answers(bot: Bot) -> None:
    new = chat(bot, STRANGER)
    new.run("> hi\n> 1\n> Tendai\n")
    for bad in ("x", "12345", "no", "!!!"):
        new.say(bad).expect("First name kept: Tendai", data={"first_name": "Tendai"})


# -- 10. A changed API response shape crashes a step instead of a clear error reply ----------


@pytest.mark.parametrize(
    ("call", "script", "message", "where"),
    [
        ("getMemberDashboardByPhone", "> hi\n", "menu", ("menu", "dashboard")),
        ("getAccountByHandle", "> hi\n> 1\n> 5\n", "bob", ("credex", "recipient")),
        ("getLedger", "> hi\n", "My ledger", ("menu", "dashboard")),
        ("createCredex", "> hi\n> 1\n> 5\n> bob\n", "yes", ("menu", "dashboard")),
        ("acceptCredex", "> hi\n> 2\n> 1\n", "confirm", ("menu", "dashboard")),
        ("login", "", "hi", ("auth", "login")),
    ],
)
def test_failure_10_changed_response_shape_gets_a_clear_reply(
    bot: Bot, call: str, script: str, message: str, where: tuple[str, str]
) -> None:
    alice = chat(bot)
    if script:
        alice.run(script)
    bot.api.raw_response_override(call, {"surprise": ["a", "new", "shape"]})
    turn = alice.say(message)
    assert any(text in turn.said for text in ("does not understand", "not reachable")), turn.said
    assert (turn.stage, turn.step) == where
    assert "surprise" not in turn.said  # the raw response is not echoed to the member


# -- 11. Ordinary answers typed into a step are taken as greetings that reset the flow -------


@pytest.mark.parametrize("word", ["yes", "no", "hi", "start"])
def test_failure_11_ordinary_words_in_a_free_text_step_do_not_reset(bot: Bot, word: str) -> None:
    alice = chat(bot)
    alice.run("> hi\n> 1\n> 12.50\n= credex.recipient\n")
    turn = alice.say(word)  # a handle is free text: these are just (unknown) handles
    turn.expect(f"No member has the handle @{word}", stage="credex", step="recipient")
    assert turn.snapshot.data["amount"] == {"value": 12.5, "denom": "USD"}


@pytest.mark.parametrize("word", ["cancel", "menu", "Stop"])
def test_failure_11_an_exit_word_in_a_free_text_step_asks_and_no_takes_it(
    bot: Bot, word: str
) -> None:
    alice = chat(bot)
    alice.run("> hi\n> 1\n> 12.50\n= credex.recipient\n")
    asked = alice.say(word).expect("Stop the offer?", stage="credex", step="recipient")
    assert [o.title for o in asked.result.replies[-1].options] == ["Yes", "No"]
    assert asked.snapshot.data["amount"] == {"value": 12.5, "denom": "USD"}  # nothing reset
    turn = alice.say("No").expect(f"No member has the handle @{word.lower()}", step="recipient")
    assert turn.snapshot.asked == ""
    alice.say(word).expect("Stop the offer?")
    left = alice.say("Yes").expect("Offer cancelled.", stage="menu")
    assert "amount" not in left.snapshot.data  # the cancelled offer cannot come back


@pytest.mark.parametrize("word", ["yes", "no", "cancel", "hello", "menu"])
def test_failure_11_names_step_takes_words_as_names_not_resets(bot: Bot, word: str) -> None:
    new = chat(bot, STRANGER)
    new.run("> hi\n> 1\n> Tendai\n= registration.last_name\n")
    turn = new.say(word)
    assert (turn.stage, turn.snapshot.data["first_name"]) == ("registration", "Tendai")
    assert turn.step in ("last_name", "photo")  # refused as too short, or taken as a name


def test_failure_11_explicit_ways_out_still_work(bot: Bot) -> None:
    alice = chat(bot)
    alice.run("> hi\n> 1\n> 12.50\n> /cancel\n= menu\n> 1\n> cancel\n= menu\n")
    new = chat(bot, STRANGER)
    new.run("> hi\n> 1\n> /cancel\n< Registration cancelled.\n= registration.welcome\n")


# -- 12. A session saved by an older version of a flow cannot be restored ------------------


def _v1_session(bot: Bot, user: str, stage: str, option: str, *, signed_in: bool) -> Snapshot:
    """What version 1 of the bot stored (the "soon" placeholder steps)."""
    login = bot.api.login(user) if signed_in else None
    snap = Snapshot(
        flow="credex",
        stage=stage,
        step="soon",
        option=option,
        data={"dashboard": {"member_id": "mem-0001", "old": "summary"}} if signed_in else {},
        auth=TokenVerifier(bot.api.verification_key, clock=bot.clock).auth_for(login.token)
        if login
        else None,
        version=4,
        flow_version=1,
        last_updated=bot.clock.now(),
        update_from="v1-worker",
    )
    bot.store.save(user, encode_snapshot(snap), version=4, expected_version=0, ttl=600)
    return snap


def test_failure_12_a_version_1_session_in_a_placeholder_is_restored_at_the_menu(bot: Bot) -> None:
    old = _v1_session(bot, ALICE, "credex", "offer", signed_in=True)
    turn = chat(bot).say("hi").expect("Welcome Alice (@alice).", stage="menu")
    assert turn.snapshot.flow_version == CredexBot.version and turn.snapshot.version == 5
    assert turn.snapshot.auth == old.auth  # the token came through the migration unchanged
    assert bot.api.count("login") == 1  # only the one _v1_session made: no re-login needed
    assert list(bot.store.quarantined()) == []


def test_failure_12_a_version_1_registration_is_restored_at_the_welcome(bot: Bot) -> None:
    _v1_session(bot, STRANGER, "registration", "", signed_in=False)
    chat(bot, STRANGER).say("Register").expect("What is your first name?", stage="registration")


# -- 13. Two workers lose an update, run a side effect twice, release each other's lock ------


def _workers(bot: Bot, n: int = 2) -> list[Engine]:
    """Independent engines (workers) on one store and one API, as processes behind one Redis."""
    return [bot.engine] + [
        build_engine(bot.store, bot.api, clock=bot.clock, jwt_leeway=0, source=f"worker-{i}")
        for i in range(1, n)
    ]


def _race(engines: list[Engine], user: str, text: str, ids: list[str]) -> list[Any]:
    start = threading.Barrier(len(ids))

    def deliver(i: int) -> Any:
        start.wait()
        return engines[i % len(engines)].handle(user, text, message_id=ids[i])

    with ThreadPoolExecutor(len(ids)) as pool:
        return list(pool.map(deliver, range(len(ids))))


CHANGING = [
    ("createCredex", "> hi\n> 1\n> 5\n> bob\n", "yes"),
    ("acceptCredex", "> hi\n> 2\n> 1\n", "confirm"),
    ("declineCredex", "> hi\n> 3\n> 1\n", "confirm"),
    ("cancelCredex", "> hi\n> 4\n> 1\n", "confirm"),
    ("createRecurring", "> hi\n> Upgrade membership\n", "Confirm"),
]


@pytest.mark.parametrize(("call", "script", "text"), CHANGING, ids=[c[0] for c in CHANGING])
def test_failure_13_one_message_delivered_to_two_workers_calls_the_api_once(
    bot: Bot, call: str, script: str, text: str
) -> None:
    chat(bot).run(script)
    results = _race(_workers(bot), ALICE, text, ["wamid.1"] * 6)
    assert bot.api.count(call) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert bot.store.lock_info(ALICE) is None


@pytest.mark.parametrize(("call", "script", "text"), CHANGING, ids=[c[0] for c in CHANGING])
def test_failure_13_double_tap_on_two_workers_calls_the_api_once(
    bot: Bot, call: str, script: str, text: str
) -> None:
    chat(bot).run(script)
    results = _race(_workers(bot), ALICE, text, [f"tap-{i}" for i in range(4)])
    # Each tap is a message of its own and lands on the state the previous one left: after
    # accepting offer 1, "confirm" is no choice in the refreshed list. What never happens is
    # the same change twice: no two calls carry the same request.
    bodies = [msgspec.json.encode(params) for name, params in bot.api.calls if name == call]
    assert bodies and len(set(bodies)) == len(bodies)
    if call in ("createCredex", "createRecurring"):
        assert len(bodies) == 1  # later taps land on the menu, where "yes" is not an option
    assert not any(r.duplicate for r in results)
    # No update lost or overwritten: the versions written form one gapless chain, each once.
    written = [h.version for h in bot.store.history(ALICE)]
    assert written == list(range(written[0], written[0] - len(written), -1))


def test_failure_13_onboarding_raced_by_two_workers_registers_once(bot: Bot) -> None:
    chat(bot, STRANGER).run("> hi\n> 1\n> Tendai\n> Moyo\n> Skip\n= registration.confirm\n")
    _race(_workers(bot, 3), STRANGER, "Confirm", ["wamid.9"] * 3 + ["wamid.10"] * 3)
    assert bot.api.count("onboardMember") == 1
    assert chat(bot, STRANGER).snapshot.stage == "menu"  # type: ignore[union-attr]


def test_failure_13_redelivery_applies_once_with_the_kit(bot: Bot) -> None:
    alice = at_offer_confirm(bot)
    first, again = alice.twice("yes")
    first.expect("Offer of 12.50 ZWG sent to @bob.")
    assert again.result.duplicate and again.texts == []
    assert bot.api.count("createCredex") == 1


class _DiesAfterCreating(FakeCredexApi):
    """createCredex succeeds at Credex, then the worker dies before saving the outcome."""

    die = True

    def create_credex(self, *args: Any, **kwargs: Any) -> Any:
        result = super().create_credex(*args, **kwargs)
        if self.die:
            self.die = False
            raise SystemExit("worker killed")
        return result


def test_failure_13_a_worker_dying_after_the_call_is_finished_once_by_the_redelivery() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    api = _DiesAfterCreating(clock=clock)
    engine = build_engine(store, api, clock=clock, lock_ttl=5)
    alice = Conversation(engine, ALICE, clock=clock)
    alice.run("> hi\n> 1\n> 5\n> bob\n")
    with pytest.raises(SystemExit):
        alice.say("yes", message_id="wamid.7")
    clock.advance(6)
    again = alice.say("yes", message_id="wamid.7")  # the webhook is re-delivered
    again.expect("Offer of 5.00 USD sent to @bob.", stage="menu")
    assert again.result.duplicate
    assert api.count("createCredex") == 2 and len(api.replays) == 1  # retried, applied once
    offers = api.get_member_dashboard_by_phone(ALICE, token=api.login(ALICE).token)
    assert [o.formatted_initial_amount for o in offers.accounts[0].pending_out].count(
        "5.00 USD"
    ) == 1


def test_failure_13_a_worker_cannot_release_another_workers_lock(bot: Bot) -> None:
    owner = bot.store.acquire_lease(ALICE, ttl=30, wait=0)
    assert not bot.store.release_lock(ALICE, "someone-else")
    info = bot.store.lock_info(ALICE)
    assert info is not None and info.owner == owner
    assert bot.store.release_lock(ALICE, owner)


def test_failure_12_the_version_1_layout_still_decodes(bot: Bot) -> None:
    # The v1 layout decodes with this code's snapshot type (fields only added, with defaults).
    raw = msgspec.msgpack.encode(
        {"flow": "credex", "stage": "init", "step": "greeting", "version": 1}
    )
    assert decode_snapshot(raw).pending == ""


class _TimesOutAfterCreating(FakeCredexApi):
    """createCredex creates the offer, then the gateway answers 504 (the bot cannot know)."""

    timeouts = 1

    def create_credex(self, *args: Any, **kwargs: Any) -> Any:
        result = super().create_credex(*args, **kwargs)
        if self.timeouts:
            self.timeouts -= 1
            raise ApiError(504, "createCredex", "gateway timeout")
        return result


def _pending_out(api: FakeCredexApi, user: str) -> list[str]:
    dashboard = api.get_member_dashboard_by_phone(user, token=api.login(user).token)
    return [o.formatted_initial_amount for o in dashboard.accounts[0].pending_out]


def test_failure_13_confirming_again_after_a_timeout_creates_the_offer_once() -> None:
    clock = FakeClock()
    api = _TimesOutAfterCreating(clock=clock)
    alice = Conversation(build_engine(MemoryStore(clock=clock), api, clock=clock), ALICE)
    alice.run("> hi\n> 1\n> 10\n> bob\n")
    alice.say("yes").expect("not reachable", step="confirm")
    alice.say("yes").expect("Offer of 10.00 USD sent to @bob.", stage="menu")
    assert api.count("createCredex") == 2 and len(api.replays) == 1  # the retry reused the key
    assert _pending_out(api, ALICE).count("10.00 USD") == 1
    assert "retry_key" not in alice.snapshot.data  # type: ignore[union-attr]


def test_failure_13_keys_are_never_reused_even_after_the_history_expired(bot: Bot) -> None:
    alice = chat(bot)
    alice.run("> hi\n> 1\n> 10\n> bob\n> yes\n")
    bot.clock.advance(8 * 86_400)  # session and history gone: the version chain starts again
    alice.run("> hi\n> 1\n> 25\n> bob\n> yes\n< Offer of 25.00 USD sent to @bob.\n")
    assert bot.api.replays == []  # the second offer was not answered from the first one's key
    assert _pending_out(bot.api, ALICE)[-2:] == ["10.00 USD", "25.00 USD"]


def test_the_fake_refuses_a_key_reused_for_another_request(bot: Bot) -> None:
    token = bot.api.login(ALICE).token
    bot.api.create_credex("acc-0001", "acc-0002", "USD", 1.0, token=token, idempotency_key="k1")
    with pytest.raises(ApiError) as info:
        bot.api.create_credex("acc-0001", "acc-0002", "USD", 2.0, token=token, idempotency_key="k1")
    assert info.value.status == 422


def test_failure_13_a_throttled_retry_keeps_the_key_until_the_offer_is_sent() -> None:
    clock = FakeClock()
    api = _TimesOutAfterCreating(clock=clock)
    alice = Conversation(build_engine(MemoryStore(clock=clock), api, clock=clock), ALICE)
    alice.run("> hi\n> 1\n> 10\n> bob\n")
    alice.say("yes").expect("not reachable", step="confirm")  # created, but answered 504
    api.fail_next("createCredex", ApiError(429, "createCredex", "slow down"))
    alice.say("yes").expect("Credex could not do that: slow down.", step="confirm")
    alice.say("yes").expect("Offer of 10.00 USD sent to @bob.")
    assert _pending_out(api, ALICE).count("10.00 USD") == 1


def test_the_fake_replays_a_garbled_answer_without_changing_anything_again(bot: Bot) -> None:
    token = bot.api.login(ALICE).token
    before = len(_pending_out(bot.api, ALICE))
    bot.api.raw_response_override("createCredex", {"unexpected": "shape"})
    for _ in range(2):
        with pytest.raises(ApiError) as info:
            bot.api.create_credex(
                "acc-0001", "acc-0002", "USD", 3.0, token=token, idempotency_key="k9"
            )
        assert info.value.status == 502
    assert len(_pending_out(bot.api, ALICE)) == before + 1  # created once


def test_failure_13_a_version_2_retry_key_is_still_used_after_the_upgrade() -> None:
    """Version 2 kept a timed-out offer's key in data["retry_key"]; after a deploy of version
    3, confirming again must still reuse it (the migration moves it to ``pending``)."""
    clock = FakeClock()
    api = _TimesOutAfterCreating(clock=clock)
    store = MemoryStore(clock=clock)
    alice = Conversation(build_engine(store, api, clock=clock), ALICE)
    alice.run("> hi\n> 1\n> 10\n> bob\n")
    waiting = alice.say("yes").expect("not reachable", step="confirm").snapshot
    key = waiting.pending
    assert key and api.count("createCredex") == 1
    as_v2 = msgspec.structs.replace(
        waiting,
        flow_version=2,
        pending="",
        data={**waiting.data, "retry_key": key},
        version=waiting.version + 1,
    )
    saved = store.save(
        ALICE, encode_snapshot(as_v2), version=as_v2.version, expected_version=waiting.version,
        ttl=600,
    )  # fmt: skip
    assert saved.status.name == "SAVED", saved
    turn = alice.say("yes").expect("Offer of 10.00 USD sent to @bob.", stage="menu")
    assert api.replays == [("createCredex", key)]  # the old key, answered from its first call
    assert _pending_out(api, ALICE).count("10.00 USD") == 1
    assert "retry_key" not in turn.snapshot.data


def test_failure_13_cancelling_after_a_timeout_says_it_may_have_gone_through() -> None:
    clock = FakeClock()
    api = _TimesOutAfterCreating(clock=clock)
    alice = Conversation(build_engine(MemoryStore(clock=clock), api, clock=clock), ALICE)
    alice.run("> hi\n> 1\n> 10\n> bob\n> yes\n= credex.confirm\n")
    turn = alice.say("cancel").expect("may still have gone through", stage="menu")
    assert "Offer cancelled." not in turn.said and turn.snapshot.pending == ""


@pytest.mark.parametrize("answer", ["2", "no", "Cancel"])
def test_failure_13_any_no_after_a_timeout_says_it_may_have_gone_through(answer: str) -> None:
    """ "2", "no" and a typed Cancel are answered by the confirm step itself (not by the
    stage's exit words): it leaves with ``ctx.exit()``, so it says the same honest thing."""
    clock = FakeClock()
    api = _TimesOutAfterCreating(clock=clock)
    alice = Conversation(build_engine(MemoryStore(clock=clock), api, clock=clock), ALICE)
    alice.run("> hi\n> 1\n> 10\n> bob\n> yes\n= credex.confirm\n")
    turn = alice.say(answer).expect("may still have gone through", stage="menu")
    assert "cancelled" not in turn.said
    assert api.count("createCredex") == 1
