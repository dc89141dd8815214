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
- Timers (:func:`fsm.timeout`) and events (:func:`fsm.on_event`) are notes, not edges: where
  one leads is its handler's choice when it fires, as for a step. A step's timers are a note
  next to it, one a line (``after 10m: remind``; ``after 10m at confirm: remind`` next to the
  stage when steps are not shown; ``after f(ctx)`` for a delay the function ``f`` reads from
  the context); a stage's events are a note next to the stage (``on offer_received``), and
  the events handled in any stage a note next to an ``any stage`` marker. Nothing is drawn
  for a flow that has neither.

Mermaid state ids are global and its grammar reserves some words, so every id is a sanitized,
unique ASCII name (``credex__confirm`` for step ``confirm`` of stage ``credex``) and the real
name is its label. The output is deterministic: declaration order throughout.

:func:`dot` draws the same graph for Graphviz, with the same stage ids (quoted) and the real names
as labels. A point node marks the initial stage; with ``steps=True`` each stage is a record with
its name above its steps, ``(entry)`` marking the step a stage with several is entered at.
Protected stages have a thick orange border, a tooltip, and the graph's caption says what the
border means. A stage with timers or events has one dashed loop labelled with them, one a line
(``after 10m at confirm: remind``, ``on offer_received``); the events handled in any stage are a
dashed note; the caption then says ``dashed: timers and events``:

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
from collections.abc import Callable, Iterable
from typing import Any

from fsm.errors import FsmError
from fsm.flow import FlowSpec

__all__ = [
    "ANY_STAGE",
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
#: The label of what the diagram hangs the events handled in any stage on.
ANY_STAGE = "any stage"
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
            for step, step_id in zip(stage.steps, step_ids, strict=True):
                lines += _note(step_id, _timer_labels(spec, name, step), _INDENT * 2)
            lines.append(f"{_INDENT}}}")
            # The composite's title is its id; name it when sanitizing changed the name.
            if sid != name:
                lines.append(f'{_INDENT}state "{_label(name)}" as {sid}')
            lines += _note(sid, _event_labels(spec, name), _INDENT)
        else:
            lines.append(f'{_INDENT}state "{_label(name)}" as {sid}')
            if steps:
                lines.append(f"{_INDENT}{sid} : {_label(stage.entry, description=True)}")
            timers = _stage_timers(spec, name, at_step=not steps)
            lines += _note(sid, [*timers, *_event_labels(spec, name)], _INDENT)
    anywhere = _event_labels(spec, None)
    if anywhere:
        any_id = ids.claim(ANY_STAGE)
        lines.append(f'{_INDENT}state "{ANY_STAGE}" as {any_id}')
        lines += _note(any_id, anywhere, _INDENT)
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
    if spec.timers or spec.events:
        caption += r"\ndashed: timers and events"
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
    lines += _dot_timers_and_events(spec, stage_ids, ids)
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


def _timer_labels(spec: FlowSpec, stage: str, step: str, *, at_step: bool = False) -> list[str]:
    """``after 10m: remind`` for each timer of ``stage.step`` (``after 10m at confirm:
    remind`` with ``at_step``), in declaration order; ``after f(ctx)`` for a delay read from
    the context by the function ``f``."""
    where = f" at {step}" if at_step else ""
    return [f"after {_delay(t.after)}{where}: {t.name}" for t in spec.timers_at(stage, step)]


def _stage_timers(spec: FlowSpec, stage: str, *, at_step: bool) -> list[str]:
    """The timer labels of every step of ``stage``, in step order."""
    steps = spec.stages[stage].steps
    return [label for step in steps for label in _timer_labels(spec, stage, step, at_step=at_step)]


def _event_labels(spec: FlowSpec, stage: str | None) -> list[str]:
    """``on ping`` for each event handled in ``stage`` (None: in any stage without a handler
    of its own), in declaration order."""
    return [f"on {event}" for (event, where) in spec.events if where == stage]


def _delay(after: float | Callable[[Any], float]) -> str:
    """A timer's delay as written: ``10m``, ``1h30m``, ``2.5s``; ``f(ctx)`` for a function.

    >>> _delay(600.0), _delay(5400.0), _delay(90061.0), _delay(2.5), _delay(lambda ctx: 1)
    ('10m', '1h30m', '1d1h1m1s', '2.5s', 'f(ctx)')
    """
    if callable(after):
        name = getattr(after, "__name__", "")
        return f"{name if name.isidentifier() else 'f'}(ctx)"
    parts, left = [], float(after)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count:g}{unit}")
    if left or not parts:
        parts.append(f"{left:g}s")
    return "".join(parts)


def _note(state_id: str, labels: list[str], indent: str) -> list[str]:
    """A Mermaid note right of ``state_id``, one line per label (nothing without labels)."""
    if not labels:
        return []
    body = [f"{indent}{_INDENT}{_note_line(label)}" for label in labels]
    return [f"{indent}note right of {state_id}", *body, f"{indent}end note"]


def _note_line(text: str) -> str:
    """``text`` as one line of a Mermaid note: no line break, nothing that ends the note."""
    return re.sub(r"(?i)end\s*note", "end_note", _label(text))


def _dot_timers_and_events(spec: FlowSpec, stage_ids: dict[str, str], ids: _Ids) -> list[str]:
    """DOT statements for timers and events: a dashed loop on each stage that has some,
    labelled with its timers and the events handled in it, one a line; a dashed note listing
    the events handled in any stage."""
    lines = []
    for name in spec.stages:
        rows = [*_stage_timers(spec, name, at_step=True), *_event_labels(spec, name)]
        if rows:
            sid = stage_ids[name]
            lines.append(f"{_INDENT}{sid} -> {sid} [label={_rows(rows)}, style=dashed];")
    anywhere = _event_labels(spec, None)
    if anywhere:
        attrs = f"shape=note, style=dashed, label={_rows([f'{ANY_STAGE}:', *anywhere])}"
        lines.append(f"{_INDENT}{_quote(ids.claim(ANY_STAGE))} [{attrs}];")
    return lines


def _rows(rows: list[str]) -> str:
    """A quoted DOT label of ``rows``, one a line, aligned left."""
    return _quote("".join(rf"{_escape(row)}\l" for row in rows))


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
