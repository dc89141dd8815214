"""A flow declaration is checked when its class is created, not at the first message."""

from __future__ import annotations

from typing import Any

import pytest

from fsm import Context, Flow, Outcome, Stage, on_enter, step
from fsm.errors import InvalidFlowDefinition
from tests.fsm.sample_flows import Counter, Vault


def _handler(stage: str, step_id: str) -> Any:
    @step(stage, step_id)
    def handle(self: Flow, ctx: Context) -> Outcome:
        return ctx.stay()

    return handle


def declare(**attrs: Any) -> type[Flow]:
    body: dict[str, Any] = {"name": "t", "takes_first_message": True, **attrs}
    return type("T", (Flow,), body)


STAGES = (Stage("a", ("one",)), Stage("b", ("two",)))
HANDLERS = {"h1": _handler("a", "one"), "h2": _handler("b", "two")}


def test_valid_declaration_compiles_to_a_spec() -> None:
    flow = declare(stages=STAGES, transitions=[("go", "a", "b")], **HANDLERS)
    assert flow.spec.initial == "a"
    assert flow.spec.transitions == (("go", "a", "b"),)
    assert set(flow.spec.steps) == {("a", "one"), ("b", "two")}


@pytest.mark.parametrize(
    ("attrs", "problem"),
    [
        ({"transitions": [("go", "a", "zz")]}, "unknown stage 'zz'"),
        ({"transitions": [("go", "zz", "b")]}, "unknown stage 'zz'"),
        ({"transitions": []}, "unreachable"),
        ({"transitions": [("go", "a", "b"), ("go", "a", "a")]}, "duplicate trigger 'go'"),
        ({"transitions": [("state", "a", "b")]}, "reserves"),
        ({"transitions": [("not valid", "a", "b")]}, "identifier"),
        ({"transitions": [("go", "a")]}, "(trigger, source(s), dest)"),
        ({"transitions": [("go", "a", "b")], "initial": "q"}, "unknown stage 'q'"),
    ],
)
def test_bad_graph_is_refused_at_class_creation(attrs: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidFlowDefinition) as info:
        declare(stages=STAGES, **HANDLERS, **attrs)
    assert problem in str(info.value)
    assert info.value.flow == "t"


def test_step_without_handler_is_refused() -> None:
    with pytest.raises(InvalidFlowDefinition, match=r"step b\.two has no handler"):
        declare(stages=STAGES, transitions=[("go", "a", "b")], h1=HANDLERS["h1"])


def test_handler_for_undeclared_step_is_refused() -> None:
    with pytest.raises(InvalidFlowDefinition, match="does not declare"):
        declare(
            stages=STAGES,
            transitions=[("go", "a", "b")],
            **HANDLERS,
            h3=_handler("b", "three"),
        )


def test_two_handlers_for_one_step_are_refused() -> None:
    with pytest.raises(InvalidFlowDefinition, match="two handlers"):
        declare(stages=STAGES, transitions=[("go", "a", "b")], **HANDLERS, h3=_handler("a", "one"))


def test_enter_hook_for_unknown_stage_is_refused() -> None:
    @on_enter("zz", "one")
    def hook(self: Flow, ctx: Context) -> list[str]:
        return []

    with pytest.raises(InvalidFlowDefinition, match="unknown stage 'zz'"):
        declare(stages=STAGES, transitions=[("go", "a", "b")], **HANDLERS, hook=hook)


def test_protected_stage_needs_auth_stage_and_paths() -> None:
    guarded = (Stage("a", ("one",)), Stage("b", ("two",), protected=True))
    with pytest.raises(InvalidFlowDefinition, match="no `auth_stage`"):
        declare(stages=guarded, transitions=[("go", "a", "b")], **HANDLERS)
    with pytest.raises(InvalidFlowDefinition, match="no path to the auth stage"):
        declare(stages=guarded, transitions=[("go", "a", "b")], auth_stage="a", **HANDLERS)
    ok = declare(
        stages=guarded,
        transitions=[("go", "a", "b"), ("back", "b", "a")],
        auth_stage="a",
        **HANDLERS,
    )
    assert ok.spec.is_protected("b")


def test_duplicate_stage_and_empty_steps_are_refused() -> None:
    with pytest.raises(InvalidFlowDefinition, match="declared twice"):
        declare(stages=(Stage("a", ("one",)), Stage("a", ("one",))), transitions=[])
    with pytest.raises(InvalidFlowDefinition, match="no steps"):
        declare(stages=(Stage("a", ()),), transitions=[])


def test_missing_name_is_refused() -> None:
    with pytest.raises(InvalidFlowDefinition, match="name"):
        type("Nameless", (Flow,), {"stages": STAGES, "transitions": [], **HANDLERS})


def test_one_machine_per_flow_shared_by_instances() -> None:
    assert Counter().spec.machine is Counter.spec.machine
    assert Vault.spec.machine is not Counter.spec.machine


def test_machine_refuses_moves_outside_the_graph() -> None:
    from fsm.errors import TransitionNotAllowed

    machine = Vault.spec.machine
    with pytest.raises(TransitionNotAllowed) as info:
        machine.fire("start", "open_deposit", token_preserved=True, token_valid=True)
    assert (info.value.stage, info.value.event) == ("start", "open_deposit")
    with pytest.raises(TransitionNotAllowed, match="unknown event"):
        machine.fire("start", "fly", token_preserved=True, token_valid=True)
    with pytest.raises(TransitionNotAllowed, match="token must not change"):
        machine.fire("start", "sign_in", token_preserved=False, token_valid=True)
    assert machine.fire("home", "open_deposit", token_preserved=True, token_valid=True) == (
        "deposit"
    )


def test_shortest_paths_follow_declared_edges() -> None:
    assert Vault.spec.path("deposit", "auth") == (("open_home", "home"), ("sign_in", "auth"))
    assert Vault.spec.path("auth", "deposit") == (
        ("open_home", "home"),
        ("open_deposit", "deposit"),
    )
    assert Vault.spec.path("auth", "start") is None
