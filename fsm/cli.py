"""The ``fsm`` command line.

``fsm chat`` talks to the reference Credex bot in the terminal, on the embedded memory store and
the fake Credex API. It never prints a token. ``fsm graph`` prints a flow's stage graph as Mermaid.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from fsm.clock import SYSTEM_CLOCK, Clock, FakeClock
from fsm.errors import FsmError
from fsm.transcript import Directive, Runner, TranscriptError

if TYPE_CHECKING:
    from adapters import Store
    from fsm.engine import Engine
    from fsm.flow import FlowSpec
    from fsm.reply import Reply

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
    help="Play a transcript from FILE ('-' for stdin) and print the conversation: one message "
    "per line, or the transcript format ('> message', '< expected reply', '= stage.step', "
    "'! directive'; see docs/testing.md). Exits 1 if an expectation fails.",
)
@click.option(
    "--engine",
    "engine_ref",
    default=None,
    metavar="MODULE:FACTORY",
    help="Chat with your own bot instead: a callable taking clock= (an fsm.Clock) and returning "
    "an fsm.Engine, e.g. mybot.wiring:build_engine. Default: the reference Credex bot.",
)
@click.option(
    "--store",
    "store_url",
    default="memory",
    show_default=True,
    metavar="URL",
    help="Where conversations live: 'memory' (this process only) or a Redis URL "
    "(redis://host:port/db, rediss://, unix://, redis+cluster://, redis+sentinel://); "
    "several chats on one Redis share each user's conversation.",
)
@click.option(
    "--namespace",
    default="credex",
    show_default=True,
    help="Key namespace on Redis, so bots sharing a server stay apart.",
)
def chat(
    user: str, script: TextIO | None, engine_ref: str | None, store_url: str, namespace: str
) -> None:
    """Chat with the reference Credex bot on the in-memory store and the fake Credex API."""
    # A script runs on a fake clock (starting now) so '! clock +2h' can move time.
    clock: Clock = FakeClock(time.time()) if script is not None else SYSTEM_CLOCK
    if engine_ref is not None and store_url != "memory":
        raise click.UsageError(
            "--store is for the reference bot; an --engine factory builds its own"
        )
    engine, directives = _chat_engine(engine_ref, clock, _chat_store(store_url, namespace))
    if script is not None:
        assert isinstance(clock, FakeClock)
        runner = Runner(engine, user, clock=clock, directives=directives, echo=click.echo)
        name = getattr(script, "name", "script")
        try:
            run = runner.run(script.read(), source=str(name))
        except TranscriptError as exc:
            raise click.UsageError(str(exc)) from None
        except FsmError as exc:
            _echo_replies(exc.replies)  # saved before the error: still the bot's answer
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(1) from None
        if not run.ok:
            click.echo(f"{len(run.failures)} expectation(s) failed:", err=True)
            for failure in run.failures:
                click.echo(failure, err=True)
            raise SystemExit(1)
        return
    bot = "the Credex bot" if engine_ref is None else f"the {engine.spec.name!r} flow"
    click.echo(f"Chatting as {user} with {bot}. Say 'hi' to start; Ctrl-D to quit.")
    click.echo("Answer a list by number or by title.")
    _converse(engine, user, _prompt_lines())


def _chat_store(url: str, namespace: str) -> Store | None:
    """None for the embedded memory store, else a RedisStore (a usage error if unusable)."""
    if url == "memory":
        return None
    from adapters import RedisStore

    try:
        store = RedisStore.from_url(url, namespace=namespace)
        store.lock_info("-")  # one round trip: fail now, clearly, if Redis is not there
    except (ValueError, FsmError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--store'") from None
    return store


def _chat_engine(
    ref: str | None, clock: Clock, store: Store | None
) -> tuple[Engine, dict[str, Directive]]:
    """The engine to chat with, and the transcript directives it supports."""
    from fsm.engine import Engine

    if ref is None:  # the CLI depends on flows, not the other way round: import here
        from flows.credex import build_engine
        from flows.credex.directives import directives
        from flows.credex.fake import FakeCredexApi

        api = FakeCredexApi(clock=clock)
        return build_engine(store, api, clock=clock), directives(api)
    factory = _resolve(ref, "--engine", example="mybot.wiring:build_engine")
    if not callable(factory):
        raise click.BadParameter(f"{ref} is not callable", param_hint="'--engine'")
    try:
        engine = factory(clock=clock)
    except TypeError as exc:  # most often: it does not take clock=
        raise click.BadParameter(
            f"calling {ref}(clock=...) failed: {exc}", param_hint="'--engine'"
        ) from exc
    if not isinstance(engine, Engine):
        raise click.BadParameter(
            f"{ref}(clock=...) returned a {type(engine).__name__}, not an fsm.Engine",
            param_hint="'--engine'",
        )
    return engine, {}


def _echo_replies(replies: Iterable[Reply]) -> None:
    for reply in replies:
        lines = reply.render().splitlines() or [""]
        click.echo("bot> " + "\n     ".join(lines))


def _prompt_lines() -> Iterator[str]:
    while True:
        try:
            yield input("you> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return


def _converse(engine: Engine, user: str, messages: Iterable[str]) -> int:
    failures = 0
    for message in messages:
        try:
            result = engine.handle(user, message)
        except FsmError as exc:
            failures += 1
            _echo_replies(exc.replies)
            click.echo(f"error: {exc}", err=True)
            continue
        _echo_replies(result.replies)
        snap = result.snapshot
        click.echo(click.style(f"     [{snap.stage}.{snap.step} v{snap.version}]", dim=True))
    return failures


DEFAULT_FLOW = "flows.credex.flow:CredexBot"


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

    diagram = mermaid(_flow_spec(flow_ref), steps=steps)  # a bad flow leaves FILE untouched
    if output is None:
        click.echo(diagram, nl=False)
    else:
        output.write_text(diagram, encoding="utf-8")


def _resolve(ref: str, option: str, *, example: str) -> object:
    """Import ``package.module:name`` (``name`` may be dotted); a click error naming
    ``option`` if that fails."""

    def bad(problem: str) -> click.BadParameter:
        return click.BadParameter(problem, param_hint=f"'{option}'")

    module_name, _, attr_path = ref.partition(":")
    if not (
        all(part.isidentifier() for part in module_name.split("."))
        and all(part.isidentifier() for part in attr_path.split("."))
    ):
        raise bad(f"{ref!r} is not of the form package.module:name (e.g. {example})")
    if os.getcwd() not in sys.path:  # as `python -m` would: modules of the current project
        sys.path.insert(0, os.getcwd())
    try:
        found: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise bad(f"cannot import module {module_name!r}: {exc}") from exc
    except FsmError as exc:  # e.g. a flow in it fails its definition check
        raise bad(f"module {module_name!r} failed to import: {exc}") from exc
    for part in attr_path.split("."):
        if not hasattr(found, part):
            raise bad(f"{module_name!r} has no attribute {attr_path!r}")
        found = getattr(found, part)
    return found


def _flow_spec(ref: str) -> FlowSpec:
    """The spec of the flow ``ref`` (``package.module:Name``) names; a click error if none."""
    from fsm.flow import Flow, FlowSpec

    found = _resolve(ref, "--flow", example=DEFAULT_FLOW)
    flow_class = found if isinstance(found, type) else type(found)
    if not issubclass(flow_class, Flow):
        what = (
            f"the class {found.__qualname__}"
            if isinstance(found, type)
            else f"a {type(found).__name__}"
        )
        raise click.BadParameter(f"{ref} is {what}, not a Flow subclass", param_hint="'--flow'")
    spec = getattr(flow_class, "spec", None)
    if not isinstance(spec, FlowSpec):
        raise click.BadParameter(
            f"{ref} is an abstract Flow: it declares no stages", param_hint="'--flow'"
        )
    return spec


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
