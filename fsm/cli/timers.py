"""``fsm timers ls`` (what is armed), ``fsm timers run`` (a ticker on its own) and ``fsm notify``
(an external event, from a shell).

``run`` and ``notify`` build the engine as ``fsm serve`` does (``--engine``, ``--store``) and
send replies through the same WhatsApp bot (``WHATSAPP_ACCESS_TOKEN``,
``WHATSAPP_PHONE_NUMBER_ID``, ...): the outbox, the send lease and the Graph API, so a reply is
sent once and never lost. Without WhatsApp settings, ``notify`` prints the replies instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from typing import TYPE_CHECKING, Any

import click

from fsm.cli.common import (
    EXIT_PROBLEM,
    EXIT_UNAVAILABLE,
    Progress,
    clock,
    echo_json,
    json_option,
    main,
    namespace_for,
    open_store,
    resolve,
    safe_url,
    store_options,
    when,
)
from fsm.cli.serve import DEFAULT_ENGINE
from fsm.errors import ConfigurationError
from fsm.ops.timers import armed_timers, reindex_timers

if TYPE_CHECKING:
    from adapters.whatsapp.bot import WhatsAppBot
    from adapters.whatsapp.settings import Settings
    from fsm.async_engine import AsyncEngine
    from fsm.result import Result
    from fsm.store import AsyncStore

engine_option = click.option(
    "--engine",
    "engine_ref",
    default=DEFAULT_ENGINE,
    show_default=True,
    metavar="MODULE:FACTORY",
    help="A function taking the async store and returning an fsm.AsyncEngine (as for fsm serve).",
)


@main.group("timers")
def timers() -> None:
    """The flow's timers: list what is armed, or run a ticker that fires what is due."""


@timers.command("ls")
@store_options
@json_option
@click.option("--due", is_flag=True, help="Only timers due now (by the system clock).")
@click.option("--user", "user_key", default=None, metavar="USER", help="Only this user's.")
def ls_command(
    store_url: str | None, namespace: str | None, as_json: bool, due: bool, user_key: str | None
) -> None:
    """List the armed timers, soonest first: user, stage.step, timer, when due. From the
    store's index of deadlines, each entry checked against the user's snapshot; an entry that
    stands for no timer is listed as stale (it is dropped when due). The count goes to stderr."""
    store = open_store(store_url, namespace)
    now = clock().now()
    count = 0
    if not as_json:
        click.echo(f"{'USER':<24}  {'STAGE.STEP':<32}  {'TIMER':<20}  DUE")
    with Progress("index entries read") as progress:
        for row in armed_timers(store, user_key=user_key):
            progress.advance()
            if due and row.due > now:
                continue
            count += 1
            if as_json:
                echo_json(row.to_dict())
                continue
            where = f"{row.stage}.{row.step}" if row.stage else "-"
            name = row.timer or f"({row.state})"
            click.echo(f"{row.user_key:<24}  {where:<32}  {name:<20}  {when(row.due, now)}")
    click.echo(f"{count} timer(s){' due' if due else ''}", err=True)


@timers.command("reindex")
@store_options
def reindex_command(store_url: str | None, namespace: str | None) -> None:
    """Index every stored conversation's timers again (after a failover lost index entries:
    their timers would not fire until the conversation arms new ones). Safe while tickers run:
    each firing is checked against the stored snapshot."""
    store = open_store(store_url, namespace)
    with Progress("sessions read") as progress:
        count = reindex_timers(store, now=clock().now(), progress=lambda _: progress.advance())
    click.echo(f"{count} conversation(s) with timers indexed")


@timers.command("run")
@engine_option
@store_options
@click.option(
    "--tick",
    type=click.FloatRange(min=0.01),
    default=None,
    help="Seconds between rounds [default: FSM_TIMER_TICK, else 1].",
)
def run_command(
    engine_ref: str, store_url: str | None, namespace: str | None, tick: float | None
) -> None:
    """Fire due timers until SIGTERM or SIGINT, sending their replies to WhatsApp (a ticker
    apart from the webhook workers: run fsm serve with FSM_TIMER_TICK=off then). Any number
    may run at once. Needs a shared store (--store, FSM_STORE) and WHATSAPP_ACCESS_TOKEN and
    WHATSAPP_PHONE_NUMBER_ID (WHATSAPP_API_URL, WHATSAPP_RATE as for fsm serve)."""
    from adapters.whatsapp import server
    from adapters.whatsapp.settings import timer_tick

    settings = _sending_settings(required=True)
    assert settings is not None
    if tick is None:
        tick = _or_exit(lambda: timer_tick(os.environ)) or 1.0
    if not store_url or store_url == "memory":
        raise click.UsageError(
            "fsm timers run needs the store the bot's workers share: --store URL or FSM_STORE"
        )
    store = _async_store(store_url, namespace, engine_ref)
    engine = _engine(engine_ref, store)
    bot = server.build_bot(settings, engine)
    where = f"{safe_url(store_url)}, namespace {namespace_for(namespace, engine_ref)!r}"
    click.echo(f"fsm timers run: {engine_ref} on {where}, every {tick:g}s", err=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fired = asyncio.run(_tick_until_stopped(bot, tick))
    click.echo(f"stopped: {fired} timer(s) fired", err=True)


async def _tick_until_stopped(bot: WhatsAppBot, tick: float) -> int:
    """Run a ticker until SIGTERM or SIGINT; the round under way finishes, then the bot's
    last confirmations are written."""
    from adapters.whatsapp.ticker import Ticker

    store = bot.engine.store
    if not getattr(store, "keeps_timers", False):
        raise click.UsageError(f"{type(store).__name__} keeps no index of deadlines")
    await store.load("fsm-healthz")  # unreachable: StoreUnavailable now, exit 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ticker = Ticker(bot, interval=tick)
    try:
        await ticker.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await bot.aclose()
        await _close(store)
    return ticker.fired


@main.command("notify")
@click.argument("user")
@click.argument("event")
@click.option("--data", "data_json", default=None, metavar="JSON", help="The event's data.")
@click.option("--id", "event_id", default=None, help="The event's id: a repeat is applied once.")
@engine_option
@store_options
@json_option
def notify_command(
    user: str,
    event: str,
    data_json: str | None,
    event_id: str | None,
    engine_ref: str,
    store_url: str | None,
    namespace: str | None,
    as_json: bool,
) -> None:
    """Apply the external EVENT to USER's conversation through the engine, as POST /events
    does, and send its replies to WhatsApp when it is configured (WHATSAPP_ACCESS_TOKEN,
    WHATSAPP_PHONE_NUMBER_ID); otherwise print them. Exit 1 if replies stay pending (run it
    again with the same --id: they are sent, the event is not applied twice)."""
    data = _data(data_json)
    if event_id is not None and not event_id.strip():
        raise click.BadParameter("give an id, or leave --id out", param_hint="'--id'")
    settings = _sending_settings(required=False)
    store = _async_store(store_url, namespace, engine_ref)
    engine = _engine(engine_ref, store)
    try:
        result, pending = asyncio.run(_notify(engine, settings, user, event, data, event_id))
    except (ValueError, TypeError) as exc:  # an undeclared event, a key no store keeps
        raise click.BadParameter(str(exc), param_hint="EVENT or USER") from None
    _report(result, sent=settings is not None, pending=pending, as_json=as_json)
    if pending:
        raise SystemExit(EXIT_PROBLEM)


def _data(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise click.BadParameter(
            "not JSON (an object: '{\"k\": 1}')", param_hint="'--data'"
        ) from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object ('{\"k\": 1}')", param_hint="'--data'")
    return data


async def _notify(
    engine: AsyncEngine,
    settings: Settings | None,
    user: str,
    event: str,
    data: dict[str, Any] | None,
    event_id: str | None,
) -> tuple[Result, bool]:
    """The event applied (sent through the bot when ``settings`` are given); whether replies
    stay pending."""
    from adapters.whatsapp import server

    try:
        if settings is None:
            return await engine.notify(user, event, data=data, event_id=event_id), False
        bot = server.build_bot(settings, engine)
        try:
            result, status = await bot.notify(user, event, data=data, event_id=event_id)
        finally:
            await bot.aclose()
        if status == 202:  # held for the messaging limit: a running ticker sends them
            click.echo("replies held for the messaging limit: fsm serve's ticker sends them")
        return result, status not in (200, 202)
    finally:
        await _close(engine.store)


def _report(result: Result, *, sent: bool, pending: bool, as_json: bool) -> None:
    applied = not result.duplicate and not result.ignored
    texts = [] if sent else result.texts
    if as_json:
        echo_json(
            {
                "applied": applied,
                "duplicate": result.duplicate,
                "ignored": result.ignored,
                "replies": len(result.replies) if sent else texts,
                "sent": sent and not pending,
            }
        )
        return
    if result.duplicate:
        click.echo("already applied (this event id was seen): not applied again")
    elif result.ignored:
        click.echo(f"not applied: {result.ignored}")
    else:
        click.echo(f"applied: now at {result.snapshot.stage}.{result.snapshot.step}")
    for text in texts:
        click.echo(f"bot> {text}")
    if sent:
        state = "some stay pending (run it again with the same --id)" if pending else "sent"
        click.echo(f"replies: {len(result.outbox) if pending else len(result.replies)} {state}")


def _sending_settings(*, required: bool) -> Settings | None:
    """The WhatsApp sender settings from the environment; None if not configured (an error
    if ``required``)."""
    try:
        from adapters.whatsapp.settings import Settings, SettingsError
    except ImportError as exc:
        click.echo(f"error: this command needs the whatsapp extra: {exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    try:
        settings = Settings.for_sending(os.environ)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    if settings is None and required:
        click.echo(
            "error: missing setting: WHATSAPP_ACCESS_TOKEN, WHATSAPP_PHONE_NUMBER_ID "
            "(see docs/whatsapp.md)",
            err=True,
        )
        raise SystemExit(EXIT_UNAVAILABLE)
    return settings


def _or_exit(read: Any) -> Any:
    from adapters.whatsapp.settings import SettingsError

    try:
        return read()
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None


def _async_store(url: str | None, namespace: str | None, engine_ref: str) -> AsyncStore:
    """The embedding caller's memory store (``obj={"store": ...}``, wrapped), else the one
    ``--store`` names."""
    from adapters import AsyncMemoryStore, MemoryStore
    from adapters.whatsapp import server

    ctx = click.get_current_context()
    embedded = ctx.obj.get("store") if isinstance(ctx.obj, dict) else None
    if isinstance(embedded, MemoryStore):
        return AsyncMemoryStore(embedded)
    if not url or url == "memory":
        raise click.UsageError("say which store to use: --store URL or FSM_STORE=URL")
    try:
        return server.open_async_store(url, namespace_for(namespace, engine_ref))
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(f"{safe_url(url)}: {exc}", param_hint="'--store'") from None


def _engine(engine_ref: str, store: AsyncStore) -> AsyncEngine:
    from adapters.whatsapp import server

    factory = resolve(engine_ref, "--engine", example="mybot.wiring:build_async_engine")
    if not callable(factory):
        raise click.BadParameter(f"{engine_ref} is not callable", param_hint="'--engine'")
    try:
        return server.build_engine(factory, store)
    except ConfigurationError as exc:  # a setting the factory reads (CREDEX_*, say)
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--engine'") from None


async def _close(store: Any) -> None:
    close = getattr(store, "aclose", None)
    if close is not None:
        await close()
