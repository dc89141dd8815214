r"""A flow's stage graph as Mermaid or Graphviz DOT text, drawn from the declaration the engine
runs, and rendered to PNG or SVG by Graphviz's ``dot`` when it is installed.

>>> from fsm import Context, Flow, Outcome, Stage, step
>>> class Door(Flow):
...     name = "door"
...     takes_first_message = True
...     stages = (Stage("shut", ["wait"]), Stage("open", ["wait"], protected=True))
...     transitions = (("push", "shut", "open"), ("pull", "open", "shut"))
...     auth_stage = "shut"
...     @step("shut", "wait")
...     @step("open", "wait")
...     def wait(self, ctx: Context) -> Outcome:
...         return ctx.stay()
>>> print(mermaid(Door.spec, steps=False), end="")
stateDiagram-v2
    %% flow door, version 1
    [*] --> shut
    state "shut" as shut
    state "open" as open
    shut --> open : push
    open --> shut : pull
    classDef protected stroke:#b45309,stroke-width:3px
    class open protected

How the declaration maps to the diagram:

- ``[*]`` points at the initial stage; each ``(source, dest)`` pair of ``spec.transitions`` is
  one edge, labelled with its triggers in declaration order (``a, b`` when several triggers link
  the same two stages). Self-loops are kept: they are moves the machine allows.
- Protected stages carry the ``protected`` class (a thick border).
- With ``steps=True`` a stage with one step shows it under the stage name; a stage with several
  is a composite state that lists them, ``[*]`` pointing at the entry step. No edges are drawn
  between steps: moving between steps of a stage is always allowed, so there is nothing to draw.

Mermaid state ids are global and its grammar reserves some words, so every id is a sanitized,
unique ASCII name (``credex__confirm`` for step ``confirm`` of stage ``credex``) and the real
name is its label. The output is deterministic: declaration order throughout.

:func:`dot` draws the same graph for Graphviz, with the same stage ids (quoted) and the real names
as labels. A point node marks the initial stage; with ``steps=True`` each stage is a record with
its name above its steps, ``(entry)`` marking the step a stage with several is entered at.
Protected stages have a thick orange border, a tooltip, and the graph's caption says what the
border means:

>>> print(dot(Door.spec), end="")
// flow door, version 1
digraph "door" {
    graph [fontname="Helvetica,Arial,sans-serif", labelloc=b];
    graph [label="flow door, version 1\nthick orange border: protected stage"];
    node [shape=Mrecord, fontname="Helvetica,Arial,sans-serif"];
    edge [fontname="Helvetica,Arial,sans-serif", fontsize=10];
    "[*]" [shape=point, width=0.15, label=""];
    "[*]" -> "shut";
    "shut" [label="{shut|wait\l}"];
    "open" [label="{open|wait\l}", penwidth=3, color="#b45309", tooltip="protected"];
    "shut" -> "open" [label="push"];
    "open" -> "shut" [label="pull"];
}

:func:`render` runs ``dot`` on that text (``png`` or ``svg``); without Graphviz it raises
:class:`GraphvizMissing`, and :class:`GraphvizFailed` (with ``dot``'s stderr) when ``dot`` fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable

from fsm.errors import FsmError
from fsm.flow import FlowSpec

__all__ = [
    "PROTECTED_COLOR",
    "PROTECTED_STYLE",
    "RENDER_FORMATS",
    "GraphvizError",
    "GraphvizFailed",
    "GraphvizMissing",
    "dot",
    "mermaid",
    "render",
]

PROTECTED_STYLE = "stroke:#b45309,stroke-width:3px"
PROTECTED_COLOR = "#b45309"
#: What :func:`render` can produce.
RENDER_FORMATS = ("png", "svg")
#: The id of DOT's initial-stage marker: stage ids are ASCII word characters, so never this.
_START = "[*]"
_FONT = "Helvetica,Arial,sans-serif"
# Not the stage's name: Graphviz reads backslashes in a tooltip its own way.
_TOOLTIP = '"protected"'

# Words Mermaid's state-diagram lexer reads as keywords where an id is expected (it is
# case-insensitive, and "default" matches even as the start of a longer word). "root" is the
# id Mermaid gives the diagram itself.
_KEYWORDS = frozenset(
    {"as", "class", "classdef", "direction", "end", "hide", "note", "root", "scale", "state"}
)
_NOT_ID = re.compile(r"\W", re.ASCII)
_INDENT = "    "


def mermaid(spec: FlowSpec, *, steps: bool = True) -> str:
    """The ``stateDiagram-v2`` source of ``spec``'s stage graph, ending with a newline."""
    ids = _Ids()
    stage_ids = {name: ids.claim(name) for name in spec.stages}
    lines = [
        "stateDiagram-v2",
        f"{_INDENT}%% flow {_label(spec.name)}, version {spec.version}",
        f"{_INDENT}[*] --> {stage_ids[spec.initial]}",
    ]
    for name, stage in spec.stages.items():
        sid = stage_ids[name]
        if steps and len(stage.steps) > 1:
            step_ids = [ids.claim(f"{sid}__{step}") for step in stage.steps]
            lines.append(f"{_INDENT}state {sid} {{")
            lines += [
                f'{_INDENT * 2}state "{_label(step)}" as {step_id}'
                for step, step_id in zip(stage.steps, step_ids, strict=True)
            ]
            lines.append(f"{_INDENT * 2}[*] --> {step_ids[0]}")
            lines.append(f"{_INDENT}}}")
            # The composite's title is its id; name it when sanitizing changed the name.
            if sid != name:
                lines.append(f'{_INDENT}state "{_label(name)}" as {sid}')
        else:
            lines.append(f'{_INDENT}state "{_label(name)}" as {sid}')
            if steps:
                lines.append(f"{_INDENT}{sid} : {_label(stage.entry, description=True)}")
    for (source, dest), triggers in _edges(spec.transitions).items():
        label = ", ".join(triggers)
        lines.append(f"{_INDENT}{stage_ids[source]} --> {stage_ids[dest]} : {label}")
    protected = [stage_ids[name] for name, stage in spec.stages.items() if stage.protected]
    if protected:
        lines.append(f"{_INDENT}classDef protected {PROTECTED_STYLE}")
        lines.append(f"{_INDENT}class {','.join(protected)} protected")
    return "\n".join(lines) + "\n"


def dot(spec: FlowSpec, *, steps: bool = True) -> str:
    """The Graphviz DOT source of ``spec``'s stage graph (what :func:`mermaid` draws), ending
    with a newline. Every id and label is quoted; names may hold any character."""
    ids = _Ids()
    stage_ids = {name: _quote(ids.claim(name)) for name in spec.stages}
    title = f"flow {_text(spec.name)}, version {spec.version}"
    caption = _escape(title)
    if any(stage.protected for stage in spec.stages.values()):
        caption += r"\nthick orange border: protected stage"
    start = _quote(_START)
    lines = [
        f"// {title}",
        f"digraph {_quote(_NOT_ID.sub('_', spec.name))} {{",
        f"{_INDENT}graph [fontname={_quote(_FONT)}, labelloc=b];",
        f"{_INDENT}graph [label={_quote(caption)}];",
        f"{_INDENT}node [shape=Mrecord, fontname={_quote(_FONT)}];",
        f"{_INDENT}edge [fontname={_quote(_FONT)}, fontsize=10];",
        f'{_INDENT}{start} [shape=point, width=0.15, label=""];',
        f"{_INDENT}{start} -> {stage_ids[spec.initial]};",
    ]
    for name, stage in spec.stages.items():
        label = _record(name)
        if steps:
            entry = " (entry)" if len(stage.steps) > 1 else ""
            rows = [_record(stage.entry) + entry, *map(_record, stage.steps[1:])]
            label = "{" + label + "|" + "".join(rf"{row}\l" for row in rows) + "}"
        attrs = [f"label={_quote(label)}"]
        if stage.protected:
            attrs += ["penwidth=3", f"color={_quote(PROTECTED_COLOR)}", f"tooltip={_TOOLTIP}"]
        lines.append(f"{_INDENT}{stage_ids[name]} [{', '.join(attrs)}];")
    for (source, dest), triggers in _edges(spec.transitions).items():
        label = _quote(_escape(", ".join(triggers)))
        lines.append(f"{_INDENT}{stage_ids[source]} -> {stage_ids[dest]} [label={label}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


class GraphvizError(FsmError, RuntimeError):
    """Graphviz could not render a graph."""


class GraphvizMissing(GraphvizError):
    """Graphviz's ``dot`` program is not on ``PATH``."""

    def __init__(self) -> None:
        super().__init__(
            "Graphviz's `dot` program is not on PATH, so PNG and SVG cannot be rendered: install "
            "Graphviz (e.g. `apt-get install graphviz` or `brew install graphviz`), or write DOT "
            "(--format dot, or a .dot file) or Mermaid (--format mermaid) text instead"
        )


class GraphvizFailed(GraphvizError):
    """``dot`` ran but failed (or took too long); ``stderr`` is what it printed."""

    def __init__(self, problem: str, stderr: str = "") -> None:
        self.stderr = stderr
        detail = " ".join(stderr.split())
        super().__init__(f"Graphviz's `dot` {problem}" + (f": {detail}" if detail else ""))


def render(dot_text: str, fmt: str, *, timeout: float = 60.0) -> bytes:
    """``dot_text`` drawn by Graphviz's ``dot`` as ``fmt`` (``"png"`` or ``"svg"``).

    Raises :class:`GraphvizMissing` when ``dot`` is not on ``PATH`` and :class:`GraphvizFailed`
    when it exits with an error, prints nothing, or runs longer than ``timeout`` seconds.
    """
    if fmt not in RENDER_FORMATS:
        raise ValueError(f"cannot render {fmt!r}: choose one of {', '.join(RENDER_FORMATS)}")
    program = shutil.which("dot")
    if program is None:
        raise GraphvizMissing
    try:
        done = subprocess.run(
            [program, f"-T{fmt}"],
            input=dot_text.encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode("utf-8", "replace")
        raise GraphvizFailed(f"did not finish within {timeout:g}s", stderr) from None
    except OSError as exc:  # found on PATH but cannot be run
        raise GraphvizFailed(f"could not be run ({program})", str(exc)) from None
    stderr = done.stderr.decode("utf-8", "replace")
    if done.returncode != 0:
        raise GraphvizFailed(f"failed with exit status {done.returncode}", stderr)
    if not done.stdout:
        raise GraphvizFailed(f"printed no {fmt}", stderr)
    return done.stdout


def _edges(rows: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str], list[str]]:
    """Triggers per (source, dest), both in declaration order."""
    edges: dict[tuple[str, str], list[str]] = {}
    for trigger, source, dest in rows:
        edges.setdefault((source, dest), []).append(trigger)
    return edges


class _Ids:
    """Hands out Mermaid-safe ids (DOT quotes the same ones), each once."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def claim(self, name: str) -> str:
        base = _NOT_ID.sub("_", name) or "_"
        lowered = base.casefold()
        if lowered in _KEYWORDS or lowered.startswith("default"):
            base = f"_{base}"
        # Mermaid names a composite's start and end markers `<id>_start` and `<id>_end`.
        if base.endswith(("_start", "_end")):
            base = f"{base}_"
        candidate, n = base, 1
        while candidate in self._taken:
            n += 1
            candidate = f"{base}_{n}"
        self._taken.add(candidate)
        return candidate


def _label(text: str, *, description: bool = False) -> str:
    """``text`` made safe inside a quoted label (or, with ``description``, after a colon)."""
    out = " ".join(text.replace('"', "'").split())
    if description:
        out = out.replace(":", " ").replace(";", " ").strip()
    return out or "_"


def _text(text: str) -> str:
    """``text`` on one line: each run of whitespace (newlines too) becomes one space."""
    return " ".join(text.split())


def _escape(text: str) -> str:
    r"""``text`` as a Graphviz escString (a label) that shows it literally: a
    backslash would start an escape (``\n``, ``\l``, ``\N``), so it is doubled."""
    return _text(text).replace("\\", "\\\\")


def _record(text: str) -> str:
    """``text`` as literal text of one field of a record label."""
    return re.sub(r"([{}|<>])", r"\\\1", _escape(text))


def _quote(text: str) -> str:
    """``text`` as a double-quoted DOT string (an id, or a label already escaped)."""
    return '"' + text.replace('"', '\\"') + '"'
