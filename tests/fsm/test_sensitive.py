"""A flow's sensitive keys never reach a log line, an exception or a repr: the engine gives the
context the flow's keys (its repr and its data's hide their values, and the message's text),
a snapshot's repr shows data keys only, and the library logs an exception's class, never its
text."""

from __future__ import annotations

import logging

import pytest
from rich.pretty import pretty_repr

from adapters import MemoryStore
from fsm import Context, Engine, FakeClock
from fsm.errors import StepFailed
from fsm.redaction import REDACTED
from fsm.step import FrozenData
from tests.fsm.sensitive_flow import ADDRESS, DRUG, PERSONAL, Courier, Pharmacy


def _hidden(text: str) -> bool:
    return not any(value in text for value in PERSONAL)


def _shop(courier: Courier) -> Engine:
    clock = FakeClock()
    return Engine(Pharmacy(courier), MemoryStore(clock=clock), clock=clock)


def test_the_context_and_its_data_hide_sensitive_values_and_the_text() -> None:
    courier = Courier()
    engine = _shop(courier)
    engine.handle("u", DRUG)
    result = engine.handle("u", ADDRESS)
    assert result.snapshot.data["address"] == ADDRESS  # stored as it is
    # As the address step saw it (the text is the address) and as the action saw it.
    at_address, data_at_address, in_action, data_in_action = courier.seen
    for shown in courier.seen:
        assert _hidden(shown) and REDACTED in shown
    assert "text='<redacted>'" in at_address and "'drug': '<redacted>'" in data_at_address
    assert "'delivery': {'address': '<redacted>', 'floor': 3}" in data_in_action
    assert "'note': 'ring twice'" in in_action  # the rest is still shown
    for thing in (result, result.snapshot):
        assert _hidden(repr(thing)) and _hidden(str(thing)) and _hidden(pretty_repr(thing))


def test_a_context_made_by_hand_hides_what_it_is_told_to() -> None:
    data = {"address": ADDRESS, "api_key": "k-1", "qty": 2}
    plain = repr(Context("u", ADDRESS, "s", "x", "", data, "", None, 0.0, None))
    assert ADDRESS in plain and "k-1" not in plain  # no sensitive keys: secret-looking ones only
    hidden = frozenset({"address"})
    hiding = Context("u", ADDRESS, "s", "x", "", data, "", None, 0.0, None, _sensitive=hidden)
    for shown in (repr(hiding), pretty_repr(hiding)):
        assert _hidden(shown) and "k-1" not in shown and "qty" in shown
        assert "_sensitive" not in shown and "_token" not in shown
    view = repr(FrozenData(data, hidden))
    assert view == "FrozenData({'address': '<redacted>', 'api_key': '<redacted>', 'qty': 2})"


def test_no_log_line_or_error_quotes_a_sensitive_value(caplog: pytest.LogCaptureFixture) -> None:
    courier = Courier()
    engine = _shop(courier)
    engine.handle("u", DRUG)
    courier.broken = True  # the courier's error quotes the address
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(StepFailed) as failed:
            engine.handle("u", ADDRESS, message_id="m1")
        with pytest.raises(StepFailed):
            engine.handle("u", ADDRESS, message_id="m1")  # re-delivered: the action fails again
        # A new message: the action fails once more and is abandoned, and logged as such.
        result = engine.handle("u", "hello", message_id="m2")
    assert engine.stats["actions_abandoned"] == 1
    assert ADDRESS in str(failed.value.__cause__)  # the flow's own exception, untouched
    for shown in (str(failed.value), repr(failed.value), caplog.text, repr(result)):
        assert _hidden(shown)
    assert "abandoned: RuntimeError" in caplog.text  # the class is named, not the text
