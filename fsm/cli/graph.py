"""``fsm graph``: a flow's stage graph, drawn from the declaration the engine runs, as Mermaid or
Graphviz DOT text, or rendered to PNG or SVG by Graphviz."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import click

from fsm.cli.common import DEFAULT_FLOW, flow_spec, main, problem_exit

FORMATS = ("mermaid", "dot", "png", "svg")
#: The format ``-o FILE`` picks when ``--format`` is not given (any other suffix: mermaid).
SUFFIXES = {
    ".mmd": "mermaid",
    ".md": "mermaid",
    ".dot": "dot",
    ".gv": "dot",
    ".png": "png",
    ".svg": "svg",
}


@main.command()
@click.option(
    "--flow",
    "flow_ref",
    default=DEFAULT_FLOW,
    show_default=True,
    metavar="MODULE:NAME",
    help="The flow to draw: a Flow subclass (or instance) NAME in the importable MODULE.",
)
@click.option(
    "--steps/--no-steps", default=True, help="Show the steps inside each stage (default: yes)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS, case_sensitive=False),
    default=None,
    help="mermaid or dot text, or png or svg drawn by Graphviz (those need -o). Default: from "
    "FILE's suffix (.mmd/.md, .dot/.gv, .png, .svg), else mermaid.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the diagram to FILE instead of stdout.",
)
def graph(flow_ref: str, steps: bool, fmt: str | None, output: Path | None) -> None:
    """Print a flow's stage graph (the steps in each stage, its timers and events) as Mermaid
    or Graphviz DOT text, or write it as a PNG or SVG image (needs Graphviz's `dot`)."""
    from fsm.graph import GraphvizError, dot, mermaid, render

    if fmt is None:
        fmt = (SUFFIXES.get(output.suffix.lower()) if output else None) or "mermaid"
    if fmt in ("png", "svg") and output is None:
        raise click.UsageError(f"{fmt} is an image: write it to a file with -o FILE.{fmt}")
    spec = flow_spec(flow_ref)  # a bad flow leaves FILE untouched
    text = mermaid(spec, steps=steps) if fmt == "mermaid" else dot(spec, steps=steps)
    if output is None:
        click.echo(text, nl=False)
        return
    data = text.encode("utf-8")
    if fmt in ("png", "svg"):
        try:
            data = render(text, fmt)
        except GraphvizError as exc:  # nothing is written
            problem_exit(f"error: {exc}")
    try:
        _write(output, data)
    except OSError as exc:
        problem_exit(f"error: cannot write {output}: {exc.strerror or exc}")


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once: a temporary file next to it, then a rename,
    so ``path`` is never left half-written. Writes through a symlink and keeps the mode of a
    file it replaces."""
    target = Path(os.path.realpath(path))
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        if target.exists():
            shutil.copymode(target, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
