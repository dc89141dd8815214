"""The reference bot's offer lists from API data, a page at a time (fsm.paged): eight offers
and "More…" per page, "Back to menu" on every page, the page kept in the conversation."""

from __future__ import annotations

from fsm import MORE
from tests.flows.conftest import BOB, Bot


def _offers_to_bob(bot: Bot, count: int) -> None:
    token = bot.api.login("263770000004").token  # Dan
    for n in range(1, count + 1):
        bot.api.create_credex("acc-0004", "acc-0002", "USD", float(n), token=token)


def test_an_offer_list_longer_than_a_page_pages(bot: Bot) -> None:
    _offers_to_bob(bot, 12)
    bot.engine.handle(BOB, "hi")
    first = bot.engine.handle(BOB, "Accept offers (12)")
    listed = first.replies[0]
    assert [o.title for o in listed.options[-2:]] == ["More…", "Back to menu"]
    assert listed.options[0].title == "1.00 USD from @dan" and len(listed.options) == 10
    second = bot.engine.handle(BOB, MORE, pressed=MORE)
    assert second.snapshot.data["offers_page"] == 1
    assert [o.title for o in second.replies[0].options] == [
        *(f"{n}.00 USD from @dan" for n in range(9, 13)),
        "Back to the start",
        "Back to menu",
    ]
    review = bot.engine.handle(BOB, "2")  # the second row of the page shown: offer 10
    assert review.snapshot.step == "review" and review.texts[0].startswith("Accept 10.00 USD")
    back = bot.engine.handle(BOB, "Back to list")
    assert back.replies[0].options[0].title == "9.00 USD from @dan"  # still on page 2
    menu = bot.engine.handle(BOB, "6")  # "Back to menu", by number
    assert menu.snapshot.stage == "menu" and "offers_page" not in menu.snapshot.data
