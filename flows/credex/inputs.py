"""What members type, checked: amounts, handles, names and greetings. (The words that mean
"stop" are the stages' declared ways out: :class:`fsm.Exit`.)

Each parser returns the value or ``None``; the steps say what was expected and ask again. Nothing
here does I/O, so every rule is tested directly (``tests/flows/test_inputs.py``).
"""

from __future__ import annotations

import math
import re

import msgspec

from flows.credex.api import DENOMINATIONS

DEFAULT_DENOM = "USD"
MAX_AMOUNT = 1_000_000_000.0

GREETINGS = frozenset(
    {
        "hi",
        "hello",
        "hey",
        "hie",
        "hola",
        "howzit",
        "start",
        "menu",
        "good morning",
        "good afternoon",
        "good evening",
    }
)

_AMOUNT = re.compile(
    r"^(?:(?P<pre>[A-Za-z]{3})\s*)?(?P<num>\d{1,10}(?:[.,]\d{1,2})?)(?:\s*(?P<post>[A-Za-z]{3}))?$"
)
_HANDLE = re.compile(r"^@?([A-Za-z0-9_]{1,30})$")
_NAME = re.compile(r"^[^\W\d_]+(?:[ '\-][^\W\d_]+)*$")


class Amount(msgspec.Struct, frozen=True):
    """An amount and its denomination, stored under the ``amount`` step id."""

    value: float
    denom: str

    def __str__(self) -> str:
        return f"{self.value:.2f} {self.denom}"


def words(text: str) -> str:
    """The text folded for comparing with keywords: trimmed, one space, case-folded."""
    return " ".join(text.split()).casefold()


def is_greeting(text: str) -> bool:
    return words(text) in GREETINGS


def parse_amount(text: str) -> Amount | None:
    """``"99"``, ``"99 ZWG"``, ``"zwg 99"``, ``"12.50"`` or ``"12,50"``; positive, at most two
    decimals, one denomination of CXX, XAU, USD, CAD or ZWG (default USD).

    >>> parse_amount("ZWG 99"), parse_amount("12.50")
    (Amount(value=99.0, denom='ZWG'), Amount(value=12.5, denom='USD'))
    >>> parse_amount("-5") is None, parse_amount("5 EUR") is None
    (True, True)
    """
    match = _AMOUNT.match(text.strip())
    if match is None:
        return None
    pre, post = match["pre"], match["post"]
    if pre and post:
        return None
    denom = (pre or post or DEFAULT_DENOM).upper()
    if denom not in DENOMINATIONS:
        return None
    value = float(match["num"].replace(",", "."))
    if not math.isfinite(value) or value <= 0 or value > MAX_AMOUNT:
        return None
    return Amount(value, denom)


def unknown_denomination(text: str) -> str | None:
    """The three-letter code in ``text`` when it is not one we know (for a precise reply)."""
    match = _AMOUNT.match(text.strip())
    if match is None:
        return None
    code = (match["pre"] or match["post"] or "").upper()
    return code if code and code not in DENOMINATIONS else None


def parse_handle(text: str) -> str | None:
    """A handle: letters, digits and underscores, at most 30, an optional leading ``@``;
    returned lower-cased (handles are case-insensitive)."""
    match = _HANDLE.match(text.strip())
    return match[1].lower() if match else None


def parse_name(text: str) -> str | None:
    """A first or last name: 3-50 characters of letters, with single spaces, hyphens or
    apostrophes between letters ("Mary-Jane", "O'Neil", "Anne Marie")."""
    name = " ".join(text.split())
    if not 3 <= len(name) <= 50 or _NAME.match(name) is None:
        return None
    return name
