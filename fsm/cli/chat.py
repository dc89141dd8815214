"""``fsm chat``: talk to the reference Credex bot (or your own) in the terminal, or play a
transcript and check it. It never prints a token."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TextIO

import click

from fsm.cli.common import main, resolve
from fsm.clock import SYSTEM_CLOCK, Clock, FakeClock
from fsm.errors import FsmError
from fsm.transcript import Directive, Runner, TranscriptError

if TYPE_CHECKING:
    from adapters import AsyncStore, Store
    from fsm.blocking import BlockingEngine
    from fsm.engine import Engine
    from fsm.reply import Reply

    ChatEngine = Engine | BlockingEngine

DEFAULT_USER = "263770000001"  # Alice, a seeded member of the fake Credex API


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
    "an fsm.Engine or an fsm.AsyncEngine, e.g. mybot.wiring:build_engine. Default: the "
    "reference Credex bot.",
)
@click.option(
    "--async",
    "use_async",
    is_flag=True,
    help="Run the reference bot on fsm.AsyncEngine and an async store (the same conversation "
    "and the same stored sessions as the sync engine).",
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
    user: str,
    script: TextIO | None,
    engine_ref: str | None,
    use_async: bool,
    store_url: str,
    namespace: str,
) -> None:
    """Chat with the reference Credex bot on the in-memory store and the fake Credex API."""
    # A script runs on a fake clock (starting now) so '! clock +2h' can move time.
    clock: Clock = FakeClock(time.time()) if script is not None else SYSTEM_CLOCK
    if engine_ref is not None and store_url != "memory":
        raise click.UsageError(
            "--store is for the reference bot; an --engine factory builds its own"
        )
    if engine_ref is not None and use_async:
        raise click.UsageError(
            "--async is for the reference bot; an --engine factory picks its own"
        )
    store = _chat_store(store_url, namespace, use_async)
    engine, directives = _chat_engine(engine_ref, clock, store, use_async)
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


def _chat_store(url: str, namespace: str, use_async: bool) -> Store | AsyncStore | None:
    """None for the embedded memory store, else a RedisStore (an AsyncRedisStore with
    ``use_async``); a usage error if it is unusable."""
    if url == "memory":
        return None
    from adapters import AsyncRedisStore, RedisStore
    from fsm.blocking import run

    try:
        if use_async:
            astore = AsyncRedisStore.from_url(url, namespace=namespace)
            run(astore.lock_info("-"))  # one round trip: fail now, clearly, if Redis is absent
            return astore
        store = RedisStore.from_url(url, namespace=namespace)
        store.lock_info("-")
    except (ValueError, FsmError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--store'") from None
    return store


def _chat_engine(
    ref: str | None, clock: Clock, store: Store | AsyncStore | None, use_async: bool
) -> tuple[ChatEngine, dict[str, Directive]]:
    """The engine to chat with, and the transcript directives it supports."""
    from fsm.async_engine import AsyncEngine
    from fsm.blocking import blocking
    from fsm.engine import Engine

    if ref is None:  # the CLI depends on flows, not the other way round: import here
        from adapters import AsyncStore
        from flows.credex import build_async_engine, build_engine
        from flows.credex.directives import directives
        from flows.credex.fake import FakeCredexApi

        api = FakeCredexApi(clock=clock)
        if use_async:
            assert store is None or isinstance(store, AsyncStore)
            return blocking(build_async_engine(store, api, clock=clock)), directives(api)
        assert not isinstance(store, AsyncStore)
        return build_engine(store, api, clock=clock), directives(api)
    factory = resolve(ref, "--engine", example="mybot.wiring:build_engine")
    if not callable(factory):
        raise click.BadParameter(f"{ref} is not callable", param_hint="'--engine'")
    try:
        engine = factory(clock=clock)
    except TypeError as exc:  # most often: it does not take clock=
        raise click.BadParameter(
            f"calling {ref}(clock=...) failed: {exc}", param_hint="'--engine'"
        ) from exc
    if not isinstance(engine, Engine | AsyncEngine):
        raise click.BadParameter(
            f"{ref}(clock=...) returned a {type(engine).__name__}, not an fsm.Engine "
            "or an fsm.AsyncEngine",
            param_hint="'--engine'",
        )
    return blocking(engine), {}


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


def _converse(engine: ChatEngine, user: str, messages: Iterable[str]) -> int:
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
