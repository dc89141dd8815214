"""A flow's stage graph as Mermaid text, drawn from the declaration the engine runs.

>>> from fsm import Context, Flow, Outcome, Stage, step
>>> class Door(Flow):
...     name = "door"
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
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fsm.flow import FlowSpec

__all__ = ["PROTECTED_STYLE", "mermaid"]

PROTECTED_STYLE = "stroke:#b45309,stroke-width:3px"

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


def _edges(rows: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str], list[str]]:
    """Triggers per (source, dest), both in declaration order."""
    edges: dict[tuple[str, str], list[str]] = {}
    for trigger, source, dest in rows:
        edges.setdefault((source, dest), []).append(trigger)
    return edges


class _Ids:
    """Hands out Mermaid-safe ids, each once."""

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
