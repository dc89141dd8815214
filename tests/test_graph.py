"""`fsm graph`: the Mermaid stage graph, its page in docs/, and the command that prints it."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from flows.credex import CredexBot
from fsm import Context, Flow, FlowSpec, Outcome, Stage, step
from fsm.cli import main
from fsm.graph import mermaid
from tests.fsm.sample_flows import Vault

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "graph.md"
MERMAID_BLOCK = re.compile(r"^```mermaid[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
EDGE = re.compile(r"^ {4}(\w+) --> (\w+) : (.+)$", re.MULTILINE)


class Shop(Flow):
    """Small, but with everything the graph draws: merged triggers, a self-loop, a protected
    stage, and two multi-step stages that share a step id."""

    name = "shop"
    auth_stage = "login"
    stages = (
        Stage("login", ("password",)),
        Stage("browse", ("list", "confirm")),
        Stage("pay", ("card", "confirm"), protected=True),
    )
    transitions = (
        ("browse", ["login", "browse", "pay"], "browse"),
        ("back", "pay", "browse"),
        ("checkout", "browse", "pay"),
        ("sign_in", "pay", "login"),
    )

    @step("login", "password")
    @step("browse", "list")
    @step("browse", "confirm")
    @step("pay", "card")
    @step("pay", "confirm")
    def handle(self, ctx: Context) -> Outcome:
        return ctx.stay()


SHOP = """\
stateDiagram-v2
    %% flow shop, version 1
    [*] --> login
    state "login" as login
    login : password
    state browse {
        state "list" as browse__list
        state "confirm" as browse__confirm
        [*] --> browse__list
    }
    state pay {
        state "card" as pay__card
        state "confirm" as pay__confirm
        [*] --> pay__card
    }
    login --> browse : browse
    browse --> browse : browse
    pay --> browse : browse, back
    browse --> pay : checkout
    pay --> login : sign_in
    classDef protected stroke:#b45309,stroke-width:3px
    class pay protected
"""

SHOP_STAGES_ONLY = """\
stateDiagram-v2
    %% flow shop, version 1
    [*] --> login
    state "login" as login
    state "browse" as browse
    state "pay" as pay
    login --> browse : browse
    browse --> browse : browse
    pay --> browse : browse, back
    browse --> pay : checkout
    pay --> login : sign_in
    classDef protected stroke:#b45309,stroke-width:3px
    class pay protected
"""


def edges(diagram: str) -> dict[tuple[str, str], list[str]]:
    return {(src, dst): label.split(", ") for src, dst, label in EDGE.findall(diagram)}


def composite(diagram: str, stage: str) -> str | None:
    """The body of ``state <stage> { ... }``, or None when the stage is not composite."""
    found = re.search(rf"^ {{4}}state {stage} {{\n(.*?)^ {{4}}}}$", diagram, re.S | re.M)
    return found.group(1) if found else None


# -- the diagram ----------------------------------------------------------------------------


def test_small_flow_renders_exactly() -> None:
    assert mermaid(Shop.spec) == SHOP
    assert mermaid(Shop.spec, steps=False) == SHOP_STAGES_ONLY


@pytest.mark.parametrize("spec", [CredexBot.spec, Vault.spec, Shop.spec], ids=lambda s: s.name)
def test_every_transition_is_one_labelled_edge(spec: FlowSpec) -> None:
    diagram = mermaid(spec)
    drawn = edges(diagram)
    declared: dict[tuple[str, str], list[str]] = {}
    for trigger, source, dest in spec.transitions:
        declared.setdefault((source, dest), []).append(trigger)
    assert drawn == declared  # every move, each pair once, triggers in declaration order
    assert len(EDGE.findall(diagram)) == len(declared)
    assert f"\n    [*] --> {spec.initial}\n" in diagram


@pytest.mark.parametrize("spec", [CredexBot.spec, Vault.spec, Shop.spec], ids=lambda s: s.name)
def test_every_stage_and_step_appears(spec: FlowSpec) -> None:
    diagram = mermaid(spec)
    for name, stage in spec.stages.items():
        body = composite(diagram, name)
        if len(stage.steps) == 1:
            assert body is None
            assert f'\n    state "{name}" as {name}\n    {name} : {stage.entry}\n' in diagram
            continue
        assert body is not None, f"stage {name!r} has {len(stage.steps)} steps but no box"
        declared = re.findall(r'^ {8}state "(\w+)" as (\w+)$', body, re.M)
        assert declared == [(s, f"{name}__{s}") for s in stage.steps]  # declaration order
        assert re.findall(r"^ {8}\[\*\] --> (\w+)$", body, re.M) == [f"{name}__{stage.entry}"]
        assert " --> " not in body.replace("[*] --> ", "")  # no invented moves between steps


@pytest.mark.parametrize("spec", [CredexBot.spec, Vault.spec, Shop.spec], ids=lambda s: s.name)
def test_protected_stages_are_marked(spec: FlowSpec) -> None:
    diagram = mermaid(spec)
    protected = [name for name, stage in spec.stages.items() if stage.protected]
    assert protected, "each of these flows has a protected stage"
    lines = diagram.splitlines()
    assert lines[-2].startswith("    classDef protected ")
    assert lines[-1] == f"    class {','.join(protected)} protected"


def test_stages_only_hides_the_steps() -> None:
    diagram = mermaid(Vault.spec, steps=False)
    assert "{" not in diagram and "__" not in diagram and " : hello" not in diagram
    assert edges(diagram) == edges(mermaid(Vault.spec))


def test_output_is_deterministic_and_ends_with_a_newline() -> None:
    first = mermaid(CredexBot.spec)
    assert first == mermaid(CredexBot.spec)
    assert first.endswith(" protected\n") and not first.endswith("\n\n")


def test_names_mermaid_cannot_take_become_unique_ids_with_the_name_as_label() -> None:
    class Odd(Flow):
        name = "odd"
        stages = (
            Stage("default", ("a",)),  # Mermaid reads "default..." as a keyword
            Stage("my-stage", ("x", "y-z")),  # "-" cannot be in an id
            Stage("note", ("x", 'say "hi"')),  # a keyword; a quote cannot be in a label
            Stage("my_stage__x", ("k",)),  # the id a step of "my-stage" would get
            Stage("note_start", ("k",)),  # what Mermaid calls the start marker inside "note"
        )
        transitions = (
            ("go", ["default", "note"], "my-stage"),
            ("on", "my-stage", "note"),
            ("away", "note", "my_stage__x"),
            ("off", "note", "note_start"),
        )

        @step("default", "a")
        @step("my-stage", "x")
        @step("my-stage", "y-z")
        @step("note", "x")
        @step("note", 'say "hi"')
        @step("my_stage__x", "k")
        @step("note_start", "k")
        def handle(self, ctx: Context) -> Outcome:
            return ctx.stay()

    diagram = mermaid(Odd.spec)
    assert 'state "default" as _default\n    _default : a\n' in diagram
    assert "state my_stage {" in diagram and 'state "my-stage" as my_stage\n' in diagram
    assert 'state "y-z" as my_stage__y_z' in diagram
    assert 'state "x" as my_stage__x_2' in diagram  # the stage named my_stage__x came first
    assert "state _note {" in diagram and "state \"say 'hi'\" as _note__say__hi_" in diagram
    assert 'state "note_start" as note_start_' in diagram
    assert edges(diagram) == {
        ("_default", "my_stage"): ["go"],
        ("_note", "my_stage"): ["go"],
        ("my_stage", "_note"): ["on"],
        ("_note", "my_stage__x"): ["away"],
        ("_note", "note_start_"): ["off"],
    }
    ids = re.findall(r" as (\w+)$|^ {4}state (\w+) \{$", diagram, re.M)
    unique = {a or b for a, b in ids}
    multi = sum(len(s.steps) for s in Odd.spec.stages.values() if len(s.steps) > 1)
    assert len(unique) == len(Odd.spec.stages) + multi  # one id per stage and boxed step


# -- docs/graph.md ---------------------------------------------------------------------------


def test_docs_show_the_current_credex_graph() -> None:
    blocks = MERMAID_BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 1, "docs/graph.md should hold exactly one ```mermaid block"
    expected = mermaid(CredexBot.spec)
    assert blocks[0] == expected, (
        "docs/graph.md shows an out-of-date Credex graph. Regenerate it: run "
        "`.venv/bin/fsm graph -o /tmp/credex.mmd` and replace the contents of the ```mermaid "
        f"block with that file. The block should read:\n{expected}"
    )


# -- the command ----------------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["graph", *args])
    return result.exit_code, result.stdout, result.stderr


def test_graph_defaults_to_the_credex_bot() -> None:
    code, out, err = invoke()
    assert (code, err) == (0, "")
    assert out == mermaid(CredexBot.spec)


def test_graph_of_a_named_flow_and_stages_only() -> None:
    assert invoke("--flow", "tests.fsm.sample_flows:Vault") == (0, mermaid(Vault.spec), "")
    stages_only = invoke("--flow", "tests.fsm.sample_flows:Vault", "--no-steps")
    assert stages_only == (0, mermaid(Vault.spec, steps=False), "")


def test_graph_writes_to_a_file(tmp_path: Path) -> None:
    target = tmp_path / "credex.mmd"
    code, out, err = invoke("-o", str(target))
    assert (code, out, err) == (0, "", "")
    assert target.read_text(encoding="utf-8") == mermaid(CredexBot.spec)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_such_module_here:Flow", "cannot import module 'no_such_module_here'"),
        ("tests.fsm.sample_flows:Nope", "'tests.fsm.sample_flows' has no attribute 'Nope'"),
        ("tests.fsm.sample_flows:issue_token", "is a function, not a Flow subclass"),
        ("fsm:Stage", "is the class Stage, not a Flow subclass"),
        ("fsm:Flow", "fsm:Flow is an abstract Flow"),
        ("tests.fsm.sample_flows", "is not of the form package.module:name"),
        ("tests/fsm/sample_flows.py:Vault", "is not of the form package.module:name"),
    ],
)
def test_a_bad_flow_is_a_usage_error(tmp_path: Path, ref: str, message: str) -> None:
    target = tmp_path / "out.mmd"
    code, out, err = invoke("--flow", ref, "-o", str(target))
    assert code == 2
    assert out == ""
    assert "Invalid value for '--flow'" in err and message in err
    assert not target.exists()  # nothing is written for a bad flow


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A user's project directory as the current directory; imports from it are undone."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_flow_in_the_current_directory_is_found(project: Path) -> None:
    (project / "tiny_graph_flow.py").write_text(
        "from fsm import Context, Flow, Outcome, Stage, step\n"
        "class Tiny(Flow):\n"
        "    name = 'tiny'\n"
        "    stages = (Stage('only', ('ask',)),)\n"
        "    transitions = ()\n"
        "    @step('only', 'ask')\n"
        "    def ask(self, ctx: Context) -> Outcome:\n"
        "        return ctx.stay()\n"
        "bot = Tiny()\n"
    )
    expected = (
        "stateDiagram-v2\n    %% flow tiny, version 1\n    [*] --> only\n"
        '    state "only" as only\n    only : ask\n'
    )
    assert invoke("--flow", "tiny_graph_flow:Tiny") == (0, expected, "")
    assert invoke("--flow", "tiny_graph_flow:bot") == (0, expected, "")  # an instance works too


def test_a_flow_that_fails_its_check_is_a_usage_error(project: Path) -> None:
    (project / "broken_graph_flow.py").write_text(
        "from fsm import Flow\nclass Broken(Flow):\n    name = 'broken'\n"
    )
    code, out, err = invoke("--flow", "broken_graph_flow:Broken")
    assert (code, out) == (2, "")
    assert "module 'broken_graph_flow' failed to import" in err
    assert "declare at least one Stage" in err
