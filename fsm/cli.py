"""The ``fsm`` command line.

``fsm chat`` talks to the reference Credex bot in the terminal, on the embedded memory store and
the fake Credex API. It never prints a token.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, TextIO

import click

from fsm.errors import FsmError

if TYPE_CHECKING:
    from fsm.engine import Engine

DEFAULT_USER = "263770000001"  # Alice, a seeded member of the fake Credex API


def _version() -> str:
    try:
        return version("convo-fsm")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


@click.group()
@click.version_option(_version(), prog_name="fsm")
def main() -> None:
    """Explicit conversation state machines: run, inspect and operate bots built on them."""


@main.command()
@click.option(
    "--user",
    default=DEFAULT_USER,
    show_default=True,
    help="Phone number to chat as (the user key). Seeded members: 263770000001..4.",
)
@click.option(
    "--script",
    "script",
    type=click.File("r"),
    default=None,
    help="Read one message per line from FILE ('-' for stdin) and print the conversation. "
    "Blank lines and lines starting with '#' are skipped.",
)
def chat(user: str, script: TextIO | None) -> None:
    """Chat with the reference Credex bot on the in-memory store."""
    from flows.credex import build_engine  # the CLI depends on flows, not the other way round

    engine = build_engine()
    if script is not None:
        failures = _converse(engine, user, _script_lines(script), echo_input=True)
        if failures:
            raise SystemExit(1)
        return
    click.echo(f"Chatting as {user} with the Credex bot. Say 'hi' to start; Ctrl-D to quit.")
    _converse(engine, user, _prompt_lines(), echo_input=False)


def _script_lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        message = line.rstrip("\n")
        if message.strip() and not message.lstrip().startswith("#"):
            yield message


def _prompt_lines() -> Iterator[str]:
    while True:
        try:
            yield input("you> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return


def _converse(engine: Engine, user: str, messages: Iterable[str], *, echo_input: bool) -> int:
    failures = 0
    for message in messages:
        if echo_input:
            click.echo(f"you> {message}")
        try:
            result = engine.handle(user, message)
        except FsmError as exc:
            failures += 1
            click.echo(f"error: {exc}", err=True)
            continue
        for reply in result.replies:
            lines = reply.render().splitlines() or [""]
            click.echo("bot> " + "\n     ".join(lines))
        snap = result.snapshot
        click.echo(click.style(f"     [{snap.stage}.{snap.step} v{snap.version}]", dim=True))
    return failures


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
