"""Lists from API data as WhatsApp payloads: row descriptions, and titles, descriptions and
the list's button label cut to WhatsApp's limits with "…" (not sent as text instead)."""

from __future__ import annotations

import pytest

from adapters.whatsapp import render as rendering
from adapters.whatsapp.render import render
from fsm import MORE, paged
from fsm.reply import Option, buttons, choices, pick


def test_a_row_description_is_sent_as_the_rows_description() -> None:
    listed = choices("Which one?", [Option("a", "Amoxicillin", "500 mg"), Option("b", "Ibuprofen")])
    [sent] = render(listed, "263")
    assert sent["interactive"]["action"]["sections"][0]["rows"] == [
        {"id": "a", "title": "Amoxicillin", "description": "500 mg"},
        {"id": "b", "title": "Ibuprofen"},  # no empty description
    ]


def test_long_titles_and_descriptions_are_cut_with_an_ellipsis() -> None:
    title = "Amoxicillin 500 mg capsules, 21"  # 31 characters: a row title shows 24
    about = "Take one capsule three times a day, after meals, until the course is finished."
    listed = choices("Which one?", [("rx-1", title, about), ("rx-2", "Ibuprofen")])
    [sent] = render(listed, "263")
    assert sent["type"] == "interactive"  # cut, not sent as numbered text
    row = sent["interactive"]["action"]["sections"][0]["rows"][0]
    assert row["title"] == "Amoxicillin 500 mg caps…" and len(row["title"]) == 24
    assert row["description"] == about[:71] + "…" and len(row["description"]) == 72
    assert pick(listed, title) == listed.options[0]  # the whole title, typed, still picks it
    assert pick(listed, row["id"]) == listed.options[0]  # a tap arrives as the id

    [pressed] = render(buttons("Pay?", [("y", "Yes, pay it right now"), ("n", "No")]), "263")
    assert pressed["type"] == "interactive"
    assert pressed["interactive"]["action"]["buttons"][0]["reply"] == {
        "id": "y",
        "title": "Yes, pay it right n…",
    }


def test_the_list_button_label_is_cut_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rendering, "LIST_BUTTON", "Choose a prescription to refill")
    [sent] = render(choices("Pick", ["A"]), "263")
    assert sent["interactive"]["action"]["button"] == "Choose a prescripti…"


def test_a_page_of_a_long_list_is_one_interactive_list() -> None:
    items = [(f"rx-{n}", f"Prescription {n}") for n in range(30)]
    [sent] = render(paged("Which one?", items, page=1).reply, "263")
    rows = sent["interactive"]["action"]["sections"][0]["rows"]
    assert (
        len(rows) == 10 and rows[0]["id"] == "rx-9" and rows[-1] == {"id": MORE, "title": "More…"}
    )
