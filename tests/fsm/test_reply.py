"""fsm.reply for lists built from API data: row descriptions, lists over any number of items
(paged), titles kept whole while WhatsApp shows them cut short, and the kit's report of it."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from adapters import MemoryStore
from fsm import MORE, Context, Engine, FakeClock, Flow, Outcome, Page, Stage, paged, step
from fsm.reply import (
    Option,
    Reply,
    buttons,
    check_whatsapp,
    choices,
    pick,
    trimmed,
    whatsapp_problems,
    whatsapp_trims,
)
from fsm.snapshot import Outgoing, Snapshot, decode_snapshot, encode_snapshot
from fsm.testing import Conversation, Trimmed

ITEMS = [Option(f"rx-{n}", f"Item {n}") for n in range(1, 24)]  # 23: three pages of 9, 9, 5


# -- 1. row descriptions ------------------------------------------------------------------------
def test_a_list_row_has_a_description_shown_after_its_title() -> None:
    listed = choices(
        "Which one?",
        [
            Option("a", "Amoxicillin", description="500 mg, 21 capsules"),
            ("b", "Ibuprofen", "200 mg"),  # (id, title, description)
            {"id": "c", "title": "Paracetamol"},  # a row kept in data comes back as a dict
            ["d", "Cetirizine", "10 mg"],  # ... or a tuple as a list
        ],
    )
    assert [o.description for o in listed.options] == ["500 mg, 21 capsules", "200 mg", "", "10 mg"]
    assert listed.render().splitlines() == [
        "Which one?",
        "  1. Amoxicillin - 500 mg, 21 capsules",
        "  2. Ibuprofen - 200 mg",
        "  3. Paracetamol",
        "  4. Cetirizine - 10 mg",
    ]
    assert check_whatsapp(listed) == []
    with pytest.raises(TypeError, match="'id' and 'title'"):
        choices("Which one?", [{"name": "no id"}])


def test_buttons_refuse_a_description_whatsapp_cannot_show() -> None:
    with pytest.raises(ValueError, match="buttons cannot show a description"):
        buttons("Refill?", [Option("yes", "Yes", "21 capsules"), Option("no", "No")])
    built = Reply("Refill?", "buttons", (Option("yes", "Yes", "21 capsules"),))  # by hand
    assert whatsapp_problems(built) == ["button 'Yes' cannot show a description"]


def test_an_option_stored_before_descriptions_reads_back_and_is_stored_the_same() -> None:
    """A reply in the outbox of a stored snapshot (fsm.snapshot.Outgoing) written before
    Option had a description decodes, with description ""; one without a description is
    encoded exactly as before (omit_defaults), so an older worker reads it too."""
    old_reply = {"body": "Pick", "kind": "list", "options": [{"id": "a", "title": "A"}]}
    assert msgspec.msgpack.encode(choices("Pick", [("a", "A")])) == msgspec.msgpack.encode(
        old_reply
    )
    snapshot = Snapshot(flow="f", stage="s", step="t", version=3, outbox=())
    fields = msgspec.msgpack.decode(encode_snapshot(snapshot))
    fields[Snapshot.__struct_fields__.index("outbox")] = [[3, 0, "wamid.1", old_reply]]
    decoded = decode_snapshot(msgspec.msgpack.encode(fields))
    [entry] = decoded.outbox
    assert entry == Outgoing(3, 0, "wamid.1", choices("Pick", [("a", "A")]))
    assert entry.reply.options[0].description == ""
    described = msgspec.structs.replace(
        snapshot,
        outbox=(Outgoing(3, 0, "", choices("Pick", [("a", "A", "the first letter")])),),
    )
    again = decode_snapshot(encode_snapshot(described)).outbox[0].reply.options[0]
    assert again == Option("a", "A", "the first letter")


# -- 2. lists over any number of items ---------------------------------------------------------
def test_up_to_ten_items_are_one_page_like_choices() -> None:
    page = paged("Pick", ITEMS[:10])
    assert (page.number, page.count) == (0, 1)
    assert page.reply == choices("Pick", ITEMS[:10])
    assert page.pick("10") == ITEMS[9]


def test_more_items_are_shown_nine_at_a_time_with_a_more_row() -> None:
    first = paged("Pick", ITEMS)
    assert (first.number, first.count) == (0, 3)
    assert first.reply.options == (*ITEMS[:9], Option(MORE, "More…"))
    second = first.next
    assert second.number == 1 and second.reply.options == (*ITEMS[9:18], Option(MORE, "More…"))
    last = paged("Pick", ITEMS, page=2)
    assert last.reply.options == (*ITEMS[18:], Option(MORE, "Back to the start"))
    assert last.next.number == 0  # the last page leads back to the first
    assert paged("Pick", ITEMS, page=7).number == 2  # fewer items since: the last page
    assert paged("Pick", ITEMS, page=-1).number == 0
    for page in (first, second, last):
        assert check_whatsapp(page.reply) == []


def test_picking_on_a_page() -> None:
    second = paged("Pick", ITEMS, page=1)
    assert second.pick("3") == ITEMS[11]  # typed "3" on page 2: the third row it shows
    assert second.pick("Item 12") == ITEMS[11]
    assert second.pick("rx-2") == ITEMS[1]  # a tap on a row of page 1, still tappable
    assert second.pick("Item 2") is None  # typed titles count on the page shown only
    assert second.pick("nonsense") is None
    for answer in ("10", MORE, "more", "More...", "More…"):
        turned = second.pick(answer)
        assert isinstance(turned, Page) and turned.number == 2, answer
    back = paged("Pick", ITEMS, page=2).pick("back to the start")
    assert isinstance(back, Page) and back.number == 0
    assert pick(second.reply, "10") == Option(MORE, "More…")  # plain pick sees the row


def test_extra_rows_are_on_every_page() -> None:
    back = Option("back", "Back to menu")
    pages = [paged("Pick", ITEMS, page=n, extra=[back]) for n in range(3)]
    assert [p.count for p in pages] == [3, 3, 3]  # 8 items a page: 8, 8, 7
    assert pages[0].reply.options == (*ITEMS[:8], Option(MORE, "More…"), back)
    assert pages[2].reply.options[-2:] == (Option(MORE, "Back to the start"), back)
    assert pages[1].pick("10") == back
    assert paged("Pick", ITEMS[:9], extra=[back]).count == 1  # 10 rows: one page
    with pytest.raises(ValueError, match="no room"):
        paged("Pick", ITEMS, extra=[Option(str(n), str(n)) for n in range(9)])
    with pytest.raises(ValueError, match="turns the page"):
        paged("Pick", [Option(MORE, "Mine")])
    with pytest.raises(ValueError, match="1 to 10 rows"):
        paged("Pick", [])


class Pharmacy(Flow):
    """Lists prescriptions from an "API" (here a list), a page at a time."""

    name = "pharmacy"
    takes_first_message = True
    stages = (Stage("start", ("hello", "choose")),)
    transitions = ()
    blocking = False

    def __init__(self, prescriptions: list[dict[str, Any]]) -> None:
        self.prescriptions = prescriptions

    @step("start", "hello")
    def hello(self, ctx: Context) -> Outcome:
        listed = paged("Which prescription?", self.prescriptions)
        return ctx.stay(listed.reply, step="choose", set={"rx": self.prescriptions})

    @step("start", "choose")
    def choose(self, ctx: Context) -> Outcome:
        page = paged("Which prescription?", ctx.data["rx"], ctx.data.get("rx_page", 0))
        chosen = page.pick(ctx.text)
        if isinstance(chosen, Page):
            return ctx.stay(chosen.reply, set={"rx_page": chosen.number})
        if chosen is None:
            return ctx.stay("Please choose one from the list.", page.reply)
        return ctx.stay(f"Refilling {chosen.title}.", step="hello", unset=["rx", "rx_page"])


def _pharmacy(prescriptions: list[dict[str, Any]]) -> Conversation:
    clock = FakeClock()
    return Conversation(Engine(Pharmacy(prescriptions), MemoryStore(clock=clock), clock=clock))


def test_a_step_pages_through_a_list_kept_in_the_conversation() -> None:
    rx = [{"id": f"rx-{n}", "title": f"Item {n}", "description": "daily"} for n in range(1, 24)]
    chat = _pharmacy(rx)
    chat.say("hi").expect("1. Item 1 - daily", "9. Item 9 - daily", "10. More…", step="choose")
    chat.press(MORE).expect("1. Item 10 - daily", "10. More…", data={"rx_page": 1})
    chat.say("nonsense").expect("Please choose", "1. Item 10", data={"rx_page": 1})
    chat.say("3").expect("Refilling Item 12.", step="hello")
    chat.say("hi")
    chat.say("more")
    chat.say("10").expect("1. Item 19", "5. Item 23", "6. Back to the start", data={"rx_page": 2})
    chat.say("6").expect("1. Item 1 - daily", data={"rx_page": 0})


# -- 3. titles and descriptions cut to WhatsApp's limits, picked whole ---------------------------
def test_titles_are_kept_whole_and_cut_only_when_shown_on_whatsapp() -> None:
    assert trimmed("Amoxicillin 500 mg capsules", 24) == "Amoxicillin 500 mg caps…"
    assert trimmed("x" * 24, 24) == "x" * 24
    long = "Amoxicillin 500 mg capsules, 21"
    listed = choices("Which one?", [("rx-1", long, "Take one capsule three times a day " * 3)])
    assert whatsapp_problems(listed) == []  # sendable: it is cut, not refused
    assert pick(listed, long) == listed.options[0]  # the whole title, typed
    assert pick(listed, long.upper()) == listed.options[0]
    assert f"1. {long} - Take one" in listed.render()  # the terminal shows it whole


# -- 4. what would be cut is a warning; what cannot be sent still fails --------------------------
def test_check_whatsapp_lists_what_would_be_cut_and_raises_on_the_rest() -> None:
    listed = choices("Which one?", [("rx-1", "Amoxicillin 500 mg capsules", "d" * 80)])
    assert check_whatsapp(listed) == [
        "row title 'Amoxicillin 500 mg capsules' is shown as 'Amoxicillin 500 mg caps…' "
        "(at most 24 characters)",
        f"row description {'d' * 80!r} is shown as {'d' * 71 + '…'!r} (at most 72 characters)",
    ]
    assert whatsapp_trims(buttons("Pay?", ["Yes, pay it right now"])) == [
        "button title 'Yes, pay it right now' is shown as 'Yes, pay it right n…' "
        "(at most 20 characters)"
    ]
    assert whatsapp_trims(choices("Fine", ["Short"])) == []
    unsendable = [
        choices(" ", ["A"]),  # an empty body
        choices("x" * 1025, ["A"]),  # an interactive body over 1,024
        choices("Pick", [("x" * 201, "A")]),  # a row id over 200: ids are not cut
        choices("Pick", [("a", " ")]),  # an empty title
        Reply("Pick", "list", tuple(ITEMS[:11])),  # 11 rows
    ]
    for reply in unsendable:
        with pytest.raises(ValueError, match="cannot be sent on WhatsApp"):
            check_whatsapp(reply)


def test_the_kit_reports_what_whatsapp_would_cut_without_failing() -> None:
    rx = [{"id": f"rx-{n}", "title": f"Amoxicillin 500 mg capsules #{n}"} for n in range(3)]
    chat = _pharmacy(rx)
    with pytest.warns(Trimmed) as warned:
        turn = chat.say("hi")
    assert len(turn.trimmed) == 3 and "'Amoxicillin 500 mg caps…'" in turn.trimmed[0]
    assert [str(w.message) for w in warned] == [f"on WhatsApp, {note}" for note in turn.trimmed]
    turn = chat.say("Amoxicillin 500 mg capsules #2")  # the whole title, as the user typed it
    assert turn.expect("Refilling Amoxicillin 500 mg capsules #2.").trimmed == []
    quiet = Conversation(chat.engine, "bob", check=None)
    assert quiet.say("hi").trimmed == []
