"""`fsm graph`: the Mermaid and DOT stage graphs, PNG/SVG through Graphviz, its page in docs/,
and the command that prints or writes them."""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from flows.credex import CredexBot
from fsm import Context, Flow, FlowSpec, Outcome, Stage, on_event, step, timeout
from fsm.cli import main
from fsm.graph import GraphvizFailed, GraphvizMissing, dot, mermaid, render
from tests.fsm.sample_flows import Vault

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "graph.md"
MERMAID_BLOCK = re.compile(r"^```mermaid[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
EDGE = re.compile(r"^ {4}(\w+) --> (\w+) : (.+)$", re.MULTILINE)


class Shop(Flow):
    """Small, but with everything the graph draws: merged triggers, a self-loop, a protected
    stage, and two multi-step stages that share a step id."""

    name = "shop"

    takes_first_message = True
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
        takes_first_message = True
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
        "`.venv/bin/fsm graph -o credex.mmd` and replace the contents of the ```mermaid "
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
        "    takes_first_message = True\n"
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


# -- DOT ------------------------------------------------------------------------------------

SHOP_DOT = r"""// flow shop, version 1
digraph "shop" {
    graph [fontname="Helvetica,Arial,sans-serif", labelloc=b];
    graph [label="flow shop, version 1\nthick orange border: protected stage"];
    node [shape=Mrecord, fontname="Helvetica,Arial,sans-serif"];
    edge [fontname="Helvetica,Arial,sans-serif", fontsize=10];
    "[*]" [shape=point, width=0.15, label=""];
    "[*]" -> "login";
    "login" [label="{login|password\l}"];
    "browse" [label="{browse|list (entry)\lconfirm\l}"];
    "pay" [label="{pay|card (entry)\lconfirm\l}", penwidth=3, color="#b45309", tooltip="protected"];
    "login" -> "browse" [label="browse"];
    "browse" -> "browse" [label="browse"];
    "pay" -> "browse" [label="browse, back"];
    "browse" -> "pay" [label="checkout"];
    "pay" -> "login" [label="sign_in"];
}
"""

QUOTED = r'"(?:[^"\\]|\\.)*"'  # a DOT string: `\"` and `\\` are pairs
DOT_ATTR = rf"\w+=(?:{QUOTED}|[\w.]+)"
DOT_STATEMENT = re.compile(
    rf"^ {{4}}(?:(?:graph|node|edge)|{QUOTED}(?: -> {QUOTED})?)"
    rf" \[{DOT_ATTR}(?:, {DOT_ATTR})*\];$|^ {{4}}{QUOTED} -> {QUOTED};$"
)
DOT_NODE = re.compile(rf"^ {{4}}({QUOTED}) \[label=({QUOTED})(.*)\];$", re.M)
DOT_EDGE = re.compile(rf"^ {{4}}({QUOTED}) -> ({QUOTED}) \[label=({QUOTED})\];$", re.M)


def dot_edges(source: str) -> dict[tuple[str, str], list[str]]:
    return {(a[1:-1], b[1:-1]): c[1:-1].split(", ") for a, b, c in DOT_EDGE.findall(source)}


def dot_nodes(source: str) -> dict[str, tuple[str, str]]:
    """Node id -> (label as written, the attributes after it)."""
    return {
        node[1:-1]: (label[1:-1], rest)
        for node, label, rest in DOT_NODE.findall(source)
        if node != '"[*]"'
    }


def test_small_flow_renders_exactly_as_dot() -> None:
    assert dot(Shop.spec) == SHOP_DOT
    stages_only = dot(Shop.spec, steps=False)
    for name in ("login", "browse"):
        assert f'    "{name}" [label="{name}"];\n' in stages_only
    pay = '    "pay" [label="pay", penwidth=3, color="#b45309", tooltip="protected"];\n'
    assert pay in stages_only
    assert "(entry)" not in stages_only and r"\l" not in stages_only
    assert dot_edges(stages_only) == dot_edges(SHOP_DOT)


@pytest.mark.parametrize("spec", [CredexBot.spec, Vault.spec, Shop.spec], ids=lambda s: s.name)
@pytest.mark.parametrize("steps", [True, False], ids=["steps", "stages-only"])
def test_dot_draws_what_mermaid_draws(spec: FlowSpec, steps: bool) -> None:
    source = dot(spec, steps=steps)
    lines = source.splitlines()
    assert lines[0] == f"// flow {spec.name}, version {spec.version}"
    assert lines[1] == f'digraph "{spec.name}" {{' and lines[-1] == "}"
    assert source.endswith("}\n") and source == dot(spec, steps=steps)  # deterministic
    bad = [line for line in lines[2:-1] if not DOT_STATEMENT.match(line)]
    assert bad == []  # every statement is well formed, every id and label quoted
    # The same edges as the Mermaid diagram (its ids are the stage names for these flows).
    assert dot_edges(source) == edges(mermaid(spec, steps=steps))
    assert len(DOT_EDGE.findall(source)) == len(edges(mermaid(spec)))
    start = '    "[*]" [shape=point, width=0.15, label=""];'
    assert lines[lines.index(start) + 1] == f'    "[*]" -> "{spec.initial}";'
    nodes = dot_nodes(source)
    assert list(nodes) == list(spec.stages)  # one node per stage, declaration order
    for name, stage in spec.stages.items():
        label, rest = nodes[name]
        if not steps:
            assert label == name
        elif len(stage.steps) == 1:
            assert label == rf"{{{name}|{stage.entry}\l}}"
        else:
            rows = [f"{stage.entry} (entry)", *stage.steps[1:]]
            assert label == "{" + name + "|" + "".join(rf"{row}\l" for row in rows) + "}"
        protected = ', penwidth=3, color="#b45309", tooltip="protected"'
        assert rest == (protected if stage.protected else "")
    caption = "thick orange border: protected stage"
    assert caption in source  # each of these flows has a protected stage: the legend says so


def test_dot_without_protected_stages_has_no_legend(project: Path) -> None:
    (project / "plain_dot_flow.py").write_text(
        "from fsm import Context, Flow, Outcome, Stage, step\n"
        "class Plain(Flow):\n"
        "    name = 'plain'\n"
        "    takes_first_message = True\n"
        "    stages = (Stage('only', ('ask',)),)\n"
        "    transitions = (('again', 'only', 'only'),)\n"
        "    @step('only', 'ask')\n"
        "    def ask(self, ctx: Context) -> Outcome:\n"
        "        return ctx.stay()\n"
    )
    code, out, err = invoke("--flow", "plain_dot_flow:Plain", "--format", "dot")
    assert (code, err) == (0, "")
    assert '    graph [label="flow plain, version 1"];\n' in out
    assert "protected" not in out and "penwidth" not in out
    assert dot_edges(out) == {("only", "only"): ["again"]}  # a self-loop is kept


class OddDot(Flow):
    """Names that DOT, its labels and its records each read specially."""

    name = 'odd "dot"\\ flow'
    takes_first_message = True
    auth_stage = 'say "hi"\\'
    stages = (
        Stage('say "hi"\\', ("a\\b",)),  # a quote, a backslash that ends the name
        Stage("{a}|<b>\\n", ("x", 'q"<y>\\')),  # record syntax, a `\n` that is no newline
        Stage("café ☕ \\N", ("k",), protected=True),  # unicode, `\N` (the node's id in dot)
        Stage("two\nlines", ("z",)),  # a real newline: one line, as Mermaid does
    )
    transitions = (
        ("go", 'say "hi"\\', "{a}|<b>\\n"),
        ("t1", "{a}|<b>\\n", "café ☕ \\N"),
        ("t2", "{a}|<b>\\n", "café ☕ \\N"),
        ("again", "café ☕ \\N", "café ☕ \\N"),
        ("on", "café ☕ \\N", "two\nlines"),
        ("out", "two\nlines", 'say "hi"\\'),
    )

    @step('say "hi"\\', "a\\b")
    @step("{a}|<b>\\n", "x")
    @step("{a}|<b>\\n", 'q"<y>\\')
    @step("café ☕ \\N", "k")
    @step("two\nlines", "z")
    def handle(self, ctx: Context) -> Outcome:
        return ctx.stay()


#: What Graphviz shows for OddDot: every name exactly (the newline is a space).
ODD_TEXTS = {
    'flow odd "dot"\\ flow, version 1',
    "thick orange border: protected stage",
    'say "hi"\\',
    "a\\b",
    "{a}|<b>\\n",
    "x (entry)",
    'q"<y>\\',
    "café ☕ \\N",
    "k",
    "two lines",
    "z",
    "go",
    "t1, t2",
    "again",
    "on",
    "out",
}


def test_dot_quotes_and_escapes_every_name() -> None:
    source = dot(OddDot.spec)
    lines = source.splitlines()
    assert lines[0] == '// flow odd "dot"\\ flow, version 1'  # a comment to the end of line
    assert lines[1] == 'digraph "odd__dot___flow" {'  # ids are the Mermaid ids, quoted
    assert lines[3] == (
        r'    graph [label="flow odd \"dot\"\\ flow, version 1\nthick orange border: '
        r'protected stage"];'
    )
    assert [line for line in lines[2:-1] if not DOT_STATEMENT.match(line)] == []
    assert dot_nodes(source) == {
        "say__hi__": (r"{say \"hi\"\\|a\\b\l}", ""),
        "_a___b__n": (r"{\{a\}\|\<b\>\\n|x (entry)\lq\"\<y\>\\\l}", ""),
        "caf_____N": (r"{café ☕ \\N|k\l}", ', penwidth=3, color="#b45309", tooltip="protected"'),
        "two_lines": (r"{two lines|z\l}", ""),
    }
    assert dot_nodes(dot(OddDot.spec, steps=False)) == {
        "say__hi__": (r"say \"hi\"\\", ""),
        "_a___b__n": (r"\{a\}\|\<b\>\\n", ""),
        "caf_____N": (r"café ☕ \\N", ', penwidth=3, color="#b45309", tooltip="protected"'),
        "two_lines": ("two lines", ""),
    }
    assert dot_edges(source) == {
        ("say__hi__", "_a___b__n"): ["go"],
        ("_a___b__n", "caf_____N"): ["t1", "t2"],
        ("caf_____N", "caf_____N"): ["again"],
        ("caf_____N", "two_lines"): ["on"],
        ("two_lines", "say__hi__"): ["out"],
    }
    assert list(dot_edges(source)) == [
        tuple(e) for e in re.findall(r"^ {4}(\w+) --> (\w+)", mermaid(OddDot.spec), re.M)
    ]


# -- fsm graph --format ---------------------------------------------------------------------


def test_graph_prints_dot() -> None:
    assert invoke("--format", "dot") == (0, dot(CredexBot.spec), "")
    vault = invoke("--flow", "tests.fsm.sample_flows:Vault", "--format", "DOT", "--no-steps")
    assert vault == (0, dot(Vault.spec, steps=False), "")
    assert invoke("--format", "mermaid") == (0, mermaid(CredexBot.spec), "")


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("credex.dot", "dot"),
        ("credex.gv", "dot"),
        ("CREDEX.DOT", "dot"),
        ("credex.mmd", "mermaid"),
        ("credex.md", "mermaid"),
        ("credex.txt", "mermaid"),  # an unknown suffix: the default
        ("credex", "mermaid"),
    ],
)
def test_output_suffix_picks_the_format(tmp_path: Path, name: str, fmt: str) -> None:
    target = tmp_path / name
    assert invoke("-o", str(target)) == (0, "", "")
    expected = dot(CredexBot.spec) if fmt == "dot" else mermaid(CredexBot.spec)
    assert target.read_text(encoding="utf-8") == expected
    assert os.listdir(tmp_path) == [name]  # no temporary file left behind


def test_an_explicit_format_wins_over_the_suffix(tmp_path: Path) -> None:
    assert invoke("--format", "dot", "-o", str(tmp_path / "a.mmd")) == (0, "", "")
    assert (tmp_path / "a.mmd").read_text(encoding="utf-8") == dot(CredexBot.spec)
    assert invoke("--format", "mermaid", "-o", str(tmp_path / "b.svg")) == (0, "", "")
    assert (tmp_path / "b.svg").read_text(encoding="utf-8") == mermaid(CredexBot.spec)


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_images_need_an_output_file(fmt: str) -> None:
    code, out, err = invoke("--format", fmt)
    assert (code, out) == (2, "")
    assert f"{fmt} is an image: write it to a file with -o FILE.{fmt}" in err


def test_writing_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "credex.dot"
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "link.dot"
    link.symlink_to(target.name)
    assert invoke("-o", str(link)) == (0, "", "")
    assert link.is_symlink()  # written through, as a plain write would
    assert target.read_text(encoding="utf-8") == dot(CredexBot.spec)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the file's mode is kept
    assert sorted(os.listdir(tmp_path)) == ["credex.dot", "link.dot"]


def test_an_unwritable_output_is_one_error_line(tmp_path: Path) -> None:
    code, out, err = invoke("-o", str(tmp_path / "no_such_dir" / "credex.dot"))
    assert (code, out) == (1, "")
    assert err.startswith("error: cannot write ") and err.endswith(
        "credex.dot: No such file or directory\n"
    )
    assert os.listdir(tmp_path) == []


@pytest.fixture
def no_graphviz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH on which there is no `dot`."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("dot") is None


@pytest.mark.usefixtures("no_graphviz")
@pytest.mark.parametrize("args", [["-o", "g.png"], ["-o", "g.svg"], ["--format", "png", "-o", "g"]])
def test_without_graphviz_images_fail_cleanly(tmp_path: Path, args: list[str]) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "g.svg").write_text("kept\n")
    args = [str(out_dir / a) if a.startswith("g") else a for a in args]
    code, out, err = invoke(*args)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("error: Graphviz's `dot` program is not on")
    assert "apt-get install graphviz" in err and "--format dot" in err
    assert sorted(os.listdir(out_dir)) == ["g.svg"]  # nothing created, nothing half-written
    assert (out_dir / "g.svg").read_text() == "kept\n"
    # Text formats do not need Graphviz.
    assert invoke("-o", str(out_dir / "g.dot")) == (0, "", "")


@pytest.mark.usefixtures("no_graphviz")
def test_render_says_when_graphviz_is_missing() -> None:
    with pytest.raises(GraphvizMissing, match="install Graphviz") as caught:
        render(dot(Shop.spec), "svg")
    assert isinstance(caught.value, RuntimeError)
    with pytest.raises(ValueError, match="cannot render 'pdf'"):
        render(dot(Shop.spec), "pdf")


def fake_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Put a `dot` that runs ``script`` (Python) first on PATH."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    program = bin_dir / "dot"
    program.write_text(f"#!{sys.executable}\nimport sys, time\n{script}\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_a_failing_dot_is_reported_with_its_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dot(
        tmp_path, monkeypatch, "sys.stderr.write('Error: syntax error in line 3\\n'); sys.exit(1)"
    )
    with pytest.raises(GraphvizFailed) as caught:
        render("digraph {", "png")
    assert caught.value.stderr == "Error: syntax error in line 3\n"
    assert str(caught.value) == (
        "Graphviz's `dot` failed with exit status 1: Error: syntax error in line 3"
    )
    target = tmp_path / "g.png"
    code, out, err = invoke("-o", str(target))
    assert (code, out) == (1, "")
    assert err == f"error: {caught.value}\n"
    assert not target.exists()


def test_a_dot_that_hangs_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dot(tmp_path, monkeypatch, "time.sleep(30)")
    with pytest.raises(GraphvizFailed, match=r"did not finish within 0\.3s"):
        render(dot(Shop.spec), "svg", timeout=0.3)


# -- real rendering (needs Graphviz) --------------------------------------------------------

NO_DOT = "Graphviz's `dot` is not installed (scripts/dev setup installs it)"


@pytest.mark.skipif(shutil.which("dot") is None, reason=NO_DOT)
def test_graph_writes_a_png(tmp_path: Path) -> None:
    target = tmp_path / "credex.png"
    assert invoke("-o", str(target)) == (0, "", "")
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert render(dot(Shop.spec), "png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["credex.png"]


def svg_texts(svg: bytes) -> set[str]:
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return {el.text or "" for el in root.iter("{http://www.w3.org/2000/svg}text")}


@pytest.mark.skipif(shutil.which("dot") is None, reason=NO_DOT)
def test_graph_writes_an_svg_naming_every_stage(tmp_path: Path) -> None:
    target = tmp_path / "credex.svg"
    assert invoke("-o", str(target)) == (0, "", "")
    texts = svg_texts(target.read_bytes())
    spec = CredexBot.spec
    assert set(spec.stages) <= texts
    for stage in spec.stages.values():
        entry = f"{stage.entry} (entry)" if len(stage.steps) > 1 else stage.entry
        assert {entry, *stage.steps[1:]} <= texts
    assert {", ".join(triggers) for triggers in edges(mermaid(spec)).values()} <= texts
    # Odd names come out exactly as declared: the escaping is what Graphviz reads.
    assert svg_texts(render(dot(OddDot.spec), "svg")) == ODD_TEXTS


# -- timers and events ----------------------------------------------------------------------


def reminder_delay(ctx: Context) -> float:
    return 120.0


class Reminders(Flow):
    """Timers on a one-step stage (a delay read from the context) and on a step of a stage
    with several; an event for one stage and two for any stage."""

    name = "reminders"
    takes_first_message = True
    stages = (Stage("ask", ("name",)), Stage("order", ("amount", "confirm")))
    transitions = (("order", "ask", "order"), ("done", "order", "ask"))

    @step("ask", "name")
    @step("order", "amount")
    @step("order", "confirm")
    def handle(self, ctx: Context) -> Outcome:
        return ctx.stay()

    @timeout("ask", "name", after=reminder_delay)
    def nudge(self, ctx: Context) -> Outcome:
        return ctx.stay("Your name?")

    @timeout("order", "confirm", after="10m")
    def remind(self, ctx: Context) -> Outcome:
        return ctx.stay("Still there?")

    @timeout("order", "confirm", after=90, rearm=False)
    def drop(self, ctx: Context) -> Outcome:
        return ctx.go("done", "Dropped.")

    @on_event("offer_received", stage="order")
    def offer(self, ctx: Context) -> Outcome:
        return ctx.stay("An offer came.")

    @on_event("ping")
    def ping(self, ctx: Context) -> Outcome:
        return ctx.stay("Ping.")

    @on_event("gift", starts=True)
    def gift(self, ctx: Context) -> Outcome:
        return ctx.stay("A gift.")


REMINDERS = """\
stateDiagram-v2
    %% flow reminders, version 1
    [*] --> ask
    state "ask" as ask
    ask : name
    note right of ask
        after reminder_delay(ctx): nudge
    end note
    state order {
        state "amount" as order__amount
        state "confirm" as order__confirm
        [*] --> order__amount
        note right of order__confirm
            after 10m: remind
            after 1m30s: drop
        end note
    }
    note right of order
        on offer_received
    end note
    state "any stage" as any_stage
    note right of any_stage
        on ping
        on gift
    end note
    ask --> order : order
    order --> ask : done
"""

REMINDERS_STAGES_ONLY = """\
stateDiagram-v2
    %% flow reminders, version 1
    [*] --> ask
    state "ask" as ask
    note right of ask
        after reminder_delay(ctx) at name: nudge
    end note
    state "order" as order
    note right of order
        after 10m at confirm: remind
        after 1m30s at confirm: drop
        on offer_received
    end note
    state "any stage" as any_stage
    note right of any_stage
        on ping
        on gift
    end note
    ask --> order : order
    order --> ask : done
"""

#: The dashed loop of stage "order": its timers and its event, one a line.
ORDER_LOOP = (
    r'    "order" -> "order" [label="after 10m at confirm: remind\lafter 1m30s at confirm: '
    r'drop\lon offer_received\l", style=dashed];'
)

REMINDERS_DOT = r"""// flow reminders, version 1
digraph "reminders" {
    graph [fontname="Helvetica,Arial,sans-serif", labelloc=b];
    graph [label="flow reminders, version 1\ndashed: timers and events"];
    node [shape=Mrecord, fontname="Helvetica,Arial,sans-serif"];
    edge [fontname="Helvetica,Arial,sans-serif", fontsize=10];
    "[*]" [shape=point, width=0.15, label=""];
    "[*]" -> "ask";
    "ask" [label="{ask|name\l}"];
    "order" [label="{order|amount (entry)\lconfirm\l}"];
    "ask" -> "order" [label="order"];
    "order" -> "ask" [label="done"];
    "ask" -> "ask" [label="after reminder_delay(ctx) at name: nudge\l", style=dashed];
{ORDER_LOOP}
    "any_stage" [shape=note, style=dashed, label="any stage:\lon ping\lon gift\l"];
}
""".replace("{ORDER_LOOP}", ORDER_LOOP)


def test_timers_and_events_are_notes_in_mermaid() -> None:
    assert mermaid(Reminders.spec) == REMINDERS
    assert mermaid(Reminders.spec, steps=False) == REMINDERS_STAGES_ONLY
    # Notes are no moves: the edges are the transitions, as without timers.
    assert edges(REMINDERS) == {("ask", "order"): ["order"], ("order", "ask"): ["done"]}


def test_timers_and_events_are_dashed_loops_in_dot() -> None:
    source = dot(Reminders.spec)
    assert source == REMINDERS_DOT
    assert [line for line in source.splitlines()[2:-1] if not DOT_STATEMENT.match(line)] == []
    assert dot_edges(source) == edges(REMINDERS)  # the plain edges: the transitions only
    assert list(dot_nodes(source)) == ["ask", "order"]  # the note is not a stage
    loops = dot(Reminders.spec, steps=False).splitlines()
    assert [line for line in loops if "style=dashed" in line] == REMINDERS_DOT.splitlines()[-4:-1]


def test_a_stage_name_a_note_could_end_on_stays_inside_it() -> None:
    class Tricky(Flow):
        name = "tricky"
        takes_first_message = True
        stages = (Stage("only", ("ask",)),)
        transitions = ()

        @step("only", "ask")
        def ask(self, ctx: Context) -> Outcome:
            return ctx.stay()

        @on_event("end note", stage="only")
        @on_event('say "end  Note"\nnow')
        def odd(self, ctx: Context) -> Outcome:
            return ctx.stay()

    diagram = mermaid(Tricky.spec)
    assert "        on end_note\n    end note\n" in diagram
    assert "        on say 'end_note' now\n    end note\n" in diagram
    assert diagram.count("end note") == 2  # only the notes' own ends


def test_fsm_graph_draws_a_flows_timers() -> None:
    code, out, err = invoke("--flow", f"{__name__}:Reminders")
    assert (code, out, err) == (0, REMINDERS, "")
    assert invoke("--flow", f"{__name__}:Reminders", "--format", "dot") == (0, REMINDERS_DOT, "")


@pytest.mark.skipif(shutil.which("dot") is None, reason=NO_DOT)
def test_graphviz_draws_the_timer_and_event_labels() -> None:
    texts = svg_texts(render(dot(Reminders.spec), "svg"))
    assert {
        "after reminder_delay(ctx) at name: nudge",
        "after 10m at confirm: remind",
        "after 1m30s at confirm: drop",
        "on offer_received",
        "any stage:",
        "on ping",
        "on gift",
    } <= texts
