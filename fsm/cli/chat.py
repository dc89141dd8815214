"""``fsm chat``: talk to the reference Credex bot (or your own) in the terminal, or play a
transcript and check it. It never prints a token.

Besides text, the user can send what a phone sends (:data:`COMMANDS`): a file (``/send PATH
[caption]``: its type from its name, else its first bytes; an image, audio, a video, a sticker
or a document by that type) and a place (``/location LAT,LONG [name]``). A file is kept in the
engine's media channel, a :class:`~fsm.memory_media.MemoryMedia` given to an engine that has
none, so a step can download it; the bot's files show as a line (``[image: 3 KB]``).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TextIO

import click

from fsm.cli.common import DEFAULT_FLOW, EXIT_INTERRUPTED, main, namespace_for, resolve
from fsm.clock import SYSTEM_CLOCK, Clock, FakeClock
from fsm.errors import FsmError
from fsm.transcript import Directive, Runner, TranscriptError

if TYPE_CHECKING:
    from adapters import AsyncStore, Store
    from fsm.attachments import Attachment
    from fsm.blocking import BlockingEngine
    from fsm.engine import Engine
    from fsm.memory_media import MemoryMedia
    from fsm.reply import Reply

    ChatEngine = Engine | BlockingEngine

DEFAULT_USER = "263770000001"  # Alice, a seeded member of the fake Credex API
#: Who ``--engine`` chats as unless ``--user`` says otherwise (a neutral id, no phone number).
ENGINE_USER = "user-1"
#: What the interactive chat takes besides text (anything else, ``/cancel`` and ``/menu``
#: too, goes to the bot as typed).
COMMANDS = (
    ("/send PATH [caption]", "send a file: an image, a document... (by its type)"),
    ("/location LAT,LONG [name]", "send a place, like /location -17.8292,31.0522 Harare"),
    ("/help", "these commands"),
)
#: The largest file ``/send`` reads (WhatsApp's largest: a 100 MB document).
MAX_SEND = 100 * 1024 * 1024
_PLACE = re.compile(r"([+-]?[0-9]+(?:\.[0-9]*)?)\s*,\s*([+-]?[0-9]+(?:\.[0-9]*)?)(?:\s+(.*))?")


@main.command()
@click.option(
    "--user",
    default=None,
    help=f"The user key to chat as. Default: {DEFAULT_USER} (Alice; the reference bot's "
    f"seeded members are 263770000001..4), or {ENGINE_USER!r} with --engine.",
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
    help="Chat with your own bot instead: a callable taking clock= (an fsm.Clock), and "
    "store= when --store names a store, and returning an fsm.Engine or an "
    "fsm.AsyncEngine, e.g. mybot.wiring:build_engine. Its flow's transcript_directives() "
    "work in --script. Default: the reference Credex bot.",
)
@click.option(
    "--async",
    "use_async",
    is_flag=True,
    help="Run the reference bot on fsm.AsyncEngine and an async store (the same conversation "
    "and the same stored sessions as the sync engine); with --engine and --store, the "
    "factory is given the async store (AsyncRedisStore, AsyncSQLiteStore, ...).",
)
@click.option(
    "--store",
    "store_url",
    default="memory",
    show_default=True,
    metavar="URL",
    help="Where conversations live: 'memory' (this process only), a SQLite file "
    "(sqlite:///path/to/chat.db: kept across runs), a PostgreSQL URL or a Redis URL "
    "(redis://host:port/db, rediss://, unix://, redis+cluster://, redis+sentinel://); "
    "several chats on one store share each user's conversation.",
)
@click.option(
    "--namespace",
    default=None,
    help="Key namespace on Redis, so bots sharing a server stay apart. Default: 'credex' for "
    "the reference bot, else the store's own ('fsm').",
)
def chat(
    user: str | None,
    script: TextIO | None,
    engine_ref: str | None,
    use_async: bool,
    store_url: str,
    namespace: str | None,
) -> None:
    """Chat with the reference Credex bot (or your own, --engine) in the terminal, on the
    in-memory store unless --store names another."""
    # A script runs on a fake clock so '! clock +2h' can move time; it starts where the testing
    # kit's does (fsm.clock.FAKE_EPOCH), so a transcript plays the same in pytest and here.
    clock: Clock = FakeClock() if script is not None else SYSTEM_CLOCK
    if user is None:
        user = DEFAULT_USER if engine_ref is None else ENGINE_USER
    chosen = namespace_for(namespace, engine_ref or DEFAULT_FLOW)
    store = _chat_store(store_url, chosen, use_async)
    engine, directives = _chat_engine(engine_ref, clock, store, use_async)
    if script is not None:
        assert isinstance(clock, FakeClock)
        runner = Runner(engine, user, clock=clock, directives=directives, echo=click.echo)
        name = getattr(script, "name", "script")
        started = time.perf_counter()
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
        took = time.perf_counter() - started
        messages = len(run.turns)
        click.echo(
            f"transcript ok: {messages} message{'s' * (messages != 1)} and {run.checks} "
            f"expectation{'s' * (run.checks != 1)} checked in {took:.2f} s"
        )
        return
    bot = "the Credex bot" if engine_ref is None else f"the {engine.spec.name!r} flow"
    click.echo(f"Chatting as {user} with {bot}. Say 'hi' to start; Ctrl-D to quit.")
    click.echo("Answer a list by number or by title; /help for sending a file or a place.")
    _converse(engine, user, _prompt_lines())


def _chat_store(url: str, namespace: str, use_async: bool) -> Store | AsyncStore | None:
    """None for the embedded memory store, else the store the URL names (Redis, SQLite,
    PostgreSQL; its async twin with ``use_async``); a usage error if it is unusable."""
    if url == "memory":
        return None
    from adapters.urls import open_async_store, open_store
    from fsm.blocking import run

    try:
        if use_async:
            astore = open_async_store(url, namespace=namespace)
            run(astore.lock_info("-"))  # one round trip: fail now, clearly, if it is absent
            return astore
        store = open_store(url, namespace=namespace)
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
    given = {"clock": clock} if store is None else {"clock": clock, "store": store}
    call = f"{ref}({', '.join(f'{name}=...' for name in given)})"
    try:
        engine = factory(**given)
    except TypeError as exc:  # most often: it does not take clock= (or store=)
        raise click.BadParameter(
            _factory_failed(call, exc, store), param_hint="'--engine'"
        ) from exc
    if not isinstance(engine, Engine | AsyncEngine):
        raise click.BadParameter(
            f"{call} returned a {type(engine).__name__}, not an fsm.Engine or an fsm.AsyncEngine",
            param_hint="'--engine'",
        )
    return blocking(engine), dict(engine.flow.transcript_directives())


def _factory_failed(call: str, exc: TypeError, store: object) -> str:
    """Why the factory failed. When an engine refused the kind of store ``--store`` gave it,
    say which flag gives the other kind: the engine's own message advises on code, and a flow
    with ``async def`` handlers cannot follow its advice to use a sync store."""
    from fsm.store import AsyncSessionStore

    said = str(exc)
    if store is not None and not isinstance(store, AsyncSessionStore):
        kind = type(store).__name__
        if "AsyncEngine needs an async store" in said:
            return (
                f"{call} builds an fsm.AsyncEngine, which needs an async store, and --store gave "
                f"it a sync {kind}: add --async (the factory is then given an AsyncRedisStore)"
            )
        if "async def handlers" in said:
            return (
                f"calling {call} failed: {said}. Add --async: the factory is then given an "
                "AsyncRedisStore to build that fsm.AsyncEngine on"
            )
    if isinstance(store, AsyncSessionStore) and "Engine needs a sync store" in said:
        return (
            f"{call} builds an fsm.Engine, which needs a sync store, and --async gave it an "
            f"{type(store).__name__}: drop --async (the factory is then given a RedisStore)"
        )
    return f"calling {call} failed: {said}"


def _echo_replies(replies: Iterable[Reply]) -> None:
    for reply in replies:
        lines = reply.render().splitlines() or [""]
        click.echo("bot> " + "\n     ".join(lines))


def _prompt_lines() -> Iterator[str]:
    """What the user types; Ctrl-D ends the chat (status 0), Ctrl-C interrupts it (130)."""
    while True:
        try:
            yield input("you> ")
        except EOFError:
            click.echo()
            return
        except KeyboardInterrupt:
            click.echo()
            raise SystemExit(EXIT_INTERRUPTED) from None


class _Said(NamedTuple):
    """One message of the user's: its text (a caption, or ""), what it carries besides, and
    its message id (an attachment has one, as a channel's message does)."""

    text: str
    attachment: Attachment | None = None
    message_id: str | None = None


class _Unusable(Exception):
    """A command that cannot be sent as typed: one line says why, and the chat goes on."""


def _converse(engine: ChatEngine, user: str, messages: Iterable[str]) -> int:
    failures = 0
    ids = _message_ids()
    for message in messages:
        try:
            said = _said(engine, message, ids)
        except _Unusable as exc:
            click.echo(f"error: {exc}", err=True)
            continue
        if said is None:  # a command answered here: /help
            continue
        try:
            result = engine.handle(
                user, said.text, message_id=said.message_id, attachment=said.attachment
            )
        except FsmError as exc:
            failures += 1
            _echo_replies(exc.replies)  # saved before the error: still the bot's answer
            if exc.notice is not None:  # what the flow tells a user when it fails
                _echo_replies([exc.notice])
            cause = exc.__cause__
            why = f" ({type(cause).__name__})" if cause is not None else ""
            click.echo(f"error: {exc}{why}", err=True)
            continue
        _echo_replies(result.replies)
        snap = result.snapshot
        click.echo(click.style(f"     [{snap.stage}.{snap.step} v{snap.version}]", dim=True))
    return failures


def _message_ids() -> Iterator[str]:
    """Message ids unique across chats (two on one shared store must not dedupe each other)."""
    run = secrets.token_hex(4)
    count = 0
    while True:
        count += 1
        yield f"chat-{run}-{count}"


def _said(engine: ChatEngine, line: str, ids: Iterator[str]) -> _Said | None:
    """What ``line`` sends: its text, or a command's file or place; None for ``/help``
    (printed here); :class:`_Unusable` for a command typed wrong."""
    command, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if command == "/help":
        width = max(len(usage) for usage, _ in COMMANDS)
        for usage, what in COMMANDS:
            click.echo(f"  {usage.ljust(width)}  {what}")
        click.echo("  Anything else is sent as typed; Ctrl-D quits.")
        return None
    if command == "/send":
        return _file(engine, rest, next(ids))
    if command == "/location":
        return _Said("", _place(rest), next(ids))
    return _Said(line)


def _file(engine: ChatEngine, rest: str, message_id: str) -> _Said:
    """``/send PATH [caption]`` (a PATH with spaces in quotes): the file, kept in the
    engine's media channel, as the user's image, document..."""
    from fsm.media_replies import CAPTIONED, guessed, human_size
    from fsm.memory_media import kind_of

    name, caption = _path_and_caption(rest)
    path = Path(name).expanduser()
    data = _read(path)
    mime_type = guessed(path.name, data)
    kind = kind_of(mime_type)
    if caption and kind not in CAPTIONED:
        raise _Unusable(f"/send: {path.name} is sent as {kind}, which carries no caption")
    filename = path.name if kind == "document" else ""
    sent = _media(engine).add(data, mime_type, caption=caption, filename=filename)
    shown = f"{kind}: {path.name}, {mime_type}, {human_size(len(data))}"
    click.echo(click.style(f"     [you sent {shown}]", dim=True))
    return _Said(caption, sent, message_id)


def _path_and_caption(rest: str) -> tuple[str, str]:
    if not rest:
        raise _Unusable("use: /send PATH [caption] (a PATH with spaces in quotes)")
    quote = rest[0]
    if quote in "'\"":
        end = rest.find(quote, 1)
        if end < 1:
            raise _Unusable(f"/send: the path's closing {quote} is missing")
        return rest[1:end], rest[end + 1 :].strip()
    name, _, caption = rest.partition(" ")
    return name, caption.strip()


def _read(path: Path) -> bytes:
    """The file's bytes; :class:`_Unusable` saying why it cannot be sent."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise _Unusable(f"/send: {path} is not a file")
        if size > MAX_SEND:
            raise _Unusable(f"/send: {path} is over 100 MB, more than WhatsApp takes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise _Unusable(f"/send: no such file: {path}") from None
    except OSError as exc:
        raise _Unusable(f"/send: cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise _Unusable(f"/send: {path} is empty")
    return data


def _media(engine: ChatEngine) -> MemoryMedia:
    """The engine's media channel, where ``/send`` keeps its files: a MemoryMedia, given to
    an engine that has none."""
    from fsm.memory_media import MemoryMedia, media_of

    media = media_of(engine)
    if not isinstance(media, MemoryMedia):
        channel = type(media).__name__
        raise _Unusable(f"/send keeps files in a MemoryMedia: this engine's channel is a {channel}")
    return media


def _place(rest: str) -> Attachment:
    """``/location LAT,LONG [name]``: a place within range."""
    from fsm.attachments import Location

    usage = "use: /location LAT,LONG [name], like /location -17.8292,31.0522 Harare"
    found = _PLACE.fullmatch(rest)
    if found is None:
        raise _Unusable(usage)
    latitude, longitude, name = found.groups()
    try:
        return Location(float(latitude), float(longitude), name or "")
    except ValueError:
        raise _Unusable(
            f"/location: the latitude is within ±90, the longitude ±180 ({usage})"
        ) from None
