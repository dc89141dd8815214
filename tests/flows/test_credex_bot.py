"""The reference bot's first stages end to end: greeting, login by phone, menu, registration."""

from __future__ import annotations

import jwt
import pytest

from flows.credex.api import ApiResponseError
from flows.credex.flow import CredexBot
from fsm import decode_snapshot
from fsm.reply import pick
from tests.flows.conftest import ALICE, BOB, CAROL, STRANGER, Bot

REFERENCE_EDGES = {
    ("init", "auth"), ("init", "menu"), ("init", "registration"),
    ("auth", "menu"), ("auth", "registration"),
    ("menu", "credex"), ("menu", "account"), ("menu", "auth"), ("menu", "menu"),
    ("credex", "menu"), ("account", "menu"), ("registration", "menu"),
}  # fmt: skip


def test_declared_graph_is_exactly_the_reference_graph() -> None:
    spec = CredexBot.spec
    assert set(spec.stages) == {"init", "auth", "menu", "credex", "account", "registration"}
    assert {(src, dst) for _, src, dst in spec.transitions} == REFERENCE_EDGES
    assert {s for s in spec.stages if spec.is_protected(s)} == {"menu", "credex", "account"}


@pytest.mark.parametrize("greeting", ["hi", "Hello", " HEY ", "menu"])
def test_greeting_logs_in_by_phone_and_shows_menu(bot: Bot, greeting: str) -> None:
    result = bot.engine.handle(ALICE, greeting)
    assert result.snapshot.stage == "menu"
    assert result.events == ("show_menu",)
    assert bot.api.count("login") == 1
    auth = result.snapshot.auth
    assert auth is not None
    claims = jwt.decode(auth.token, bot.api.verification_key, algorithms=["HS256"],
                        options={"verify_exp": False})  # fmt: skip
    assert claims["sub"] == auth.subject == "mem-0001"
    assert "Welcome Alice (@alice)" in result.replies[0].body


def test_non_greeting_at_init_asks_for_hi(bot: Bot) -> None:
    result = bot.engine.handle(ALICE, "what is this")
    assert result.snapshot.stage == "init"
    assert result.texts == ["Hi! Send *hi* to start."]
    assert bot.api.count("login") == 0


def test_unknown_member_goes_to_registration(bot: Bot) -> None:
    result = bot.engine.handle(STRANGER, "hi")
    assert result.snapshot.stage == "registration"
    assert result.snapshot.auth is None
    assert "Would you like to register?" in result.texts[0]
    assert result.snapshot.step == "welcome"
    again = bot.engine.handle(STRANGER, "hi")  # still unknown: stays, does not crash
    assert (again.snapshot.stage, again.snapshot.step) == ("registration", "welcome")


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (ALICE, ["offer", "accept", "decline", "cancel", "upgrade", "ledger", "statement"]),
        (BOB, ["offer", "ledger", "statement"]),
        (CAROL, ["offer", "accept", "decline", "upgrade", "ledger", "statement"]),
    ],
)
def test_menu_shows_only_the_options_that_apply(bot: Bot, user: str, expected: list[str]) -> None:
    menu = bot.engine.handle(user, "hi").replies[0]
    assert menu.kind == "list"
    assert [o.id for o in menu.options] == expected


def test_menu_counts_offers(bot: Bot) -> None:
    menu = bot.engine.handle(ALICE, "hi").replies[0]
    titles = [o.title for o in menu.options]
    assert "Accept offers (2)" in titles and "Cancel my offers (1)" in titles


@pytest.mark.parametrize("answer", ["6", "My ledger", "ledger", "LEDGER"])
def test_menu_selection_by_number_or_title(bot: Bot, answer: str) -> None:
    bot.engine.handle(ALICE, "hi")
    result = bot.engine.handle(ALICE, answer)
    assert (result.snapshot.stage, result.snapshot.option) == ("account", "ledger")
    assert "Your ledger, newest first (1-2):" in result.texts[0]
    back = bot.engine.handle(ALICE, "Back to menu")
    assert back.snapshot.stage == "menu"


@pytest.mark.parametrize("answer", ["9", "0", "accept", "fly me to the moon"])
def test_menu_refuses_options_not_shown(bot: Bot, answer: str) -> None:
    bot.engine.handle(BOB, "hi")  # Bob has no offers: accept is not an option for him
    before = bot.engine.peek(BOB)
    result = bot.engine.handle(BOB, answer)
    assert result.snapshot.stage == "menu"
    assert result.texts[0].startswith("Please choose one of the options")
    assert pick(result.replies[1], "1") is not None  # the menu is shown again
    assert before is not None and result.snapshot.data == before.data


def test_greeting_in_menu_refreshes_the_dashboard(bot: Bot) -> None:
    bot.engine.handle(BOB, "hi")
    bot.api.create_credex("acc-0004", "acc-0002", "USD", 5.0,
                          token=bot.api.login("263770000004").token)  # fmt: skip
    result = bot.engine.handle(BOB, "menu")
    assert bot.api.count("getMemberDashboardByPhone") == 1
    options = [o.id for o in result.replies[0].options]
    assert options == ["offer", "accept", "decline", "ledger", "statement"]
    assert result.snapshot.stage == "menu"


def test_changed_dashboard_shape_gets_a_clear_reply(bot: Bot) -> None:
    bot.engine.handle(ALICE, "hi")
    before = bot.raw(ALICE)
    bot.api.raw_response_override("getMemberDashboardByPhone", {"member": "gone"})
    result = bot.engine.handle(ALICE, "menu")
    assert "does not understand" in result.texts[0]
    assert result.snapshot.stage == "menu"
    snap = bot.engine.peek(ALICE)
    assert snap is not None and before is not None
    assert snap.data == decode_snapshot(before).data  # the stored summary was kept


def test_login_api_down_at_init_goes_to_auth_and_retries(bot: Bot) -> None:
    bot.api.fail_next("login", ApiResponseError("login", "bad gateway"))
    first = bot.engine.handle(ALICE, "hi")
    assert first.snapshot.stage == "auth"
    assert "not reachable" in first.texts[0]
    second = bot.engine.handle(ALICE, "again")
    assert second.snapshot.stage == "menu"


def test_expired_token_mid_flow_resumes_the_interrupted_step(bot: Bot) -> None:
    bot.engine.handle(ALICE, "hi")
    for _ in range(3):  # keep the 30-minute session alive until the token's hour is up
        bot.clock.advance(1100)
        bot.engine.handle(ALICE, "menu")
    bot.engine.handle(ALICE, "offer credex")
    bot.engine.handle(ALICE, "12.50 ZWG")
    bot.clock.advance(1000)  # the token (one hour) has now expired; the session has not
    result = bot.engine.handle(ALICE, "bob")
    assert result.snapshot.stage == "auth"
    assert result.events == ("show_menu", "sign_in")
    assert result.snapshot.resume is not None
    assert (result.snapshot.resume.stage, result.snapshot.resume.step) == ("credex", "recipient")
    assert bot.api.count("getAccountByHandle") == 0  # the expired token was not used
    back = bot.engine.handle(ALICE, "hi")
    assert (back.snapshot.stage, back.snapshot.step) == ("credex", "recipient")
    assert back.events == ("show_menu", "open_credex")
    assert back.snapshot.data["amount"] == {"value": 12.5, "denom": "ZWG"}  # kept
    assert "Who should receive 12.50 ZWG?" in back.texts[-1]
    assert back.snapshot.auth is not None
    assert back.snapshot.auth.issued_at == bot.clock.now() // 1


def test_api_401_sends_to_auth_and_back_keeping_the_flow(bot: Bot) -> None:
    bot.engine.handle(ALICE, "hi")
    token_before = bot.engine.peek(ALICE).auth.token  # type: ignore[union-attr]
    bot.api.expire_tokens()  # the API now refuses our (locally still valid) token
    result = bot.engine.handle(ALICE, "menu")
    assert result.snapshot.stage == "auth"
    assert result.snapshot.auth is not None and result.snapshot.auth.token == token_before
    back = bot.engine.handle(ALICE, "ok")
    assert back.snapshot.stage == "menu"
    assert back.snapshot.auth is not None and back.snapshot.auth.token != token_before
