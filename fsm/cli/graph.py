"""``fsm graph``: a flow's stage graph, drawn from the declaration the engine runs."""

from __future__ import annotations

from pathlib import Path

import click

from fsm.cli.common import DEFAULT_FLOW, flow_spec, main


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
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the diagram to FILE instead of stdout.",
)
def graph(flow_ref: str, steps: bool, output: Path | None) -> None:
    """Print a flow's stage graph (and the steps in each stage) as Mermaid text."""
    from fsm.graph import mermaid

    diagram = mermaid(flow_spec(flow_ref), steps=steps)  # a bad flow leaves FILE untouched
    if output is None:
        click.echo(diagram, nl=False)
    else:
        output.write_text(diagram, encoding="utf-8")
