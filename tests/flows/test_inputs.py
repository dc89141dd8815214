"""What members type: every rule of flows/credex/inputs.py, directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.credex.inputs import (
    Amount,
    is_greeting,
    parse_amount,
    parse_handle,
    parse_name,
    unknown_denomination,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("99", Amount(99.0, "USD")),
        ("99 ZWG", Amount(99.0, "ZWG")),
        ("ZWG 99", Amount(99.0, "ZWG")),
        ("zwg99", Amount(99.0, "ZWG")),
        ("12.50", Amount(12.5, "USD")),
        ("12,5", Amount(12.5, "USD")),
        ("  7 cad ", Amount(7.0, "CAD")),
        ("0.01 XAU", Amount(0.01, "XAU")),
        ("1000000000 CXX", Amount(1e9, "CXX")),
    ],
)
def test_amounts_that_parse(text: str, expected: Amount) -> None:
    assert parse_amount(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "hi", "0", "0.00", "-5", "+5", "5 EUR", "USD 5 ZWG", "1.234", "1e3", "5 USD USD",
     "1000000001", "12.", ".5", "five", "5 dollars", "nan", "inf"],
)  # fmt: skip
def test_amounts_that_do_not(text: str) -> None:
    assert parse_amount(text) is None


def test_unknown_denomination_is_named_for_the_reply() -> None:
    assert unknown_denomination("10 eur") == "EUR"
    assert unknown_denomination("10 usd") is None
    assert unknown_denomination("hello") is None


@given(st.text(max_size=40))
def test_parse_amount_never_raises_and_stays_in_range(text: str) -> None:
    amount = parse_amount(text)
    if amount is not None:
        assert 0 < amount.value <= 1e9
        assert round(amount.value, 2) == amount.value
        assert amount.denom in {"CXX", "XAU", "USD", "CAD", "ZWG"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("bob", "bob"), ("@Bob", "bob"), (" carol_c ", "carol_c"), ("a" * 30, "a" * 30),
     ("x1_2", "x1_2"), ("a" * 31, None), ("bo b", None), ("bob!", None), ("", None), ("@", None)],
)  # fmt: skip
def test_handles(text: str, expected: str | None) -> None:
    assert parse_handle(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Tendai", "Tendai"), ("  Mary-Jane ", "Mary-Jane"), ("O'Neil", "O'Neil"),
     ("Anne   Marie", "Anne Marie"), ("Zoë", "Zoë"), ("Jo", None), ("R2D2", None),
     ("a" * 51, None), ("-Ann", None), ("Ann--Lee", None), ("Ann_Lee", None), ("!!!", None)],
)  # fmt: skip
def test_names(text: str, expected: str | None) -> None:
    assert parse_name(text) == expected


def test_greetings_are_folded() -> None:
    assert is_greeting("Hi") and is_greeting("  good   MORNING ") and is_greeting("menu")
    assert not is_greeting("yes") and not is_greeting("hi there")
