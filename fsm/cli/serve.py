"""``fsm serve``: run a flow as a WhatsApp Cloud API webhook server (uvicorn).

The transport lives in :mod:`adapters.whatsapp` (the ``convo-fsm[whatsapp]`` extra), imported
only when this command runs: the rest of the CLI needs no web stack.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from typing import Any

import click

from fsm.cli.common import (
    EXIT_UNAVAILABLE,
    main,
    namespace_for,
    resolve,
    safe_url,
    store_options,
)
from fsm.errors import ConfigurationError, FsmError

DEFAULT_ENGINE = "flows.credex.settings:engine_from_env"


@main.command("serve")
@click.option(
    "--engine",
    "engine_ref",
    default=DEFAULT_ENGINE,
    show_default=True,
    metavar="MODULE:FACTORY",
    help="A function taking the async store and returning an fsm.AsyncEngine.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--simulator",
    is_flag=True,
    help="Serve a WhatsApp chat page at / instead of talking to Meta: the page posts to this "
    "server's webhook and the bot's sends come back through a fake Graph API (no WHATSAPP_* "
    "settings needed).",
)
@click.option(
    "--contact",
    "contacts",
    multiple=True,
    metavar="NUMBER[=NAME]",
    help="A phone number the simulator offers (repeat it); default: the factory module's "
    "SIMULATOR_CONTACTS, else two test numbers.",
)
@store_options
def serve_command(
    engine_ref: str,
    host: str,
    port: int,
    simulator: bool,
    contacts: tuple[str, ...],
    store_url: str | None,
    namespace: str | None,
) -> None:
    """Serve a flow to WhatsApp users: GET/POST /webhook, POST /events, GET /healthz, GET
    /metrics, and a ticker that fires the flow's due timers.

    Configured by the environment: WHATSAPP_ACCESS_TOKEN, WHATSAPP_APP_SECRET,
    WHATSAPP_VERIFY_TOKEN, WHATSAPP_PHONE_NUMBER_ID, and optionally WHATSAPP_API_URL,
    WHATSAPP_RATE (messages/s, default 80) and WHATSAPP_MARK_READ (1/0); FSM_EVENTS_SECRET
    signs POST /events (unset: no such route); FSM_TIMER_TICK is the ticker's period in
    seconds (default 1; 0 or off: no ticker here, e.g. with fsm timers run elsewhere). The
    store is --store (FSM_STORE), the embedded memory store when unset. The reference bot
    reads CREDEX_* too. See docs/whatsapp.md and, for --simulator, docs/simulator.md.
    """
    try:
        from adapters.whatsapp import server
        from adapters.whatsapp.settings import Settings, SettingsError, timer_tick
    except ImportError as exc:
        click.echo(
            "error: fsm serve needs the whatsapp extra (in a checkout of convo-fsm: "
            f"pip install -e '.[whatsapp]'; a wheel: docs/your-bot.md): {exc}",
            err=True,
        )
        raise SystemExit(EXIT_UNAVAILABLE) from None
    if simulator and port == 0:
        raise click.BadParameter("the simulator needs a fixed port", param_hint="'--port'")
    settings = None
    try:
        tick = timer_tick(os.environ)
        if not simulator:
            settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    events_secret = os.environ.get("FSM_EVENTS_SECRET", "").strip()
    factory = resolve(engine_ref, "--engine", example="mybot.wiring:build_async_engine")
    if not callable(factory):
        raise click.BadParameter(f"{engine_ref} is not callable", param_hint="'--engine'")
    url = None if store_url in (None, "", "memory") else store_url
    chosen = namespace_for(namespace, engine_ref)
    try:
        store = server.open_async_store(url, chosen)
    except (ValueError, TypeError) as exc:  # a URL redis-py cannot parse
        click.echo(f"error: --store: {exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    try:
        if settings is None:
            people = _contacts(contacts, engine_ref)
            app = server.build_simulator_app(
                factory,
                store,
                host=host,
                port=port,
                contacts=people,
                events_secret=events_secret,
                timer_tick=tick,
            )
        else:
            app = server.build_app(settings, factory, store)
    except ConfigurationError as exc:  # a setting the factory reads (CREDEX_*, say)
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--engine'") from None
    where = "memory" if url is None else f"{safe_url(url)}, namespace {chosen!r}"
    click.echo(f"fsm serve: {engine_ref} on http://{host}:{port}/webhook, store {where}", err=True)
    _say_timers(app, tick, events_secret)
    if simulator:
        click.echo(f"simulator: open http://{host}:{port}/ in a browser", err=True)
        if host not in ("127.0.0.1", "::1", "localhost"):
            click.echo(
                "warning: the simulator page lets anyone who can reach it post as any number; "
                "keep --host on loopback",
                err=True,
            )
    try:
        asyncio.run(server.serve(app, store, host=host, port=port, check=url is not None))
    except FsmError as exc:
        click.echo(f"error: cannot reach the store at {where}: {exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None


def _say_timers(app: Any, tick: float | None, events_secret: str) -> None:
    """One line on stderr: whether this process ticks, and whether POST /events is served."""
    ticking = "off" if app.state.ticker is None else f"every {tick:g}s"
    events = "on" if events_secret else "off (no FSM_EVENTS_SECRET)"
    click.echo(f"timers: ticker {ticking}; POST /events: {events}", err=True)


def _contacts(given: tuple[str, ...], engine_ref: str) -> list[Any]:
    """The simulator's phone numbers: ``--contact`` values, else the factory module's
    ``SIMULATOR_CONTACTS`` (``(number, name[, note])`` tuples), else two test numbers."""
    from adapters.whatsapp.simulator.app import PHONE, Contact

    if given:
        people = []
        for raw in given:
            number, _, name = raw.partition("=")
            if not PHONE.match(number):
                raise click.BadParameter(
                    f"{raw!r}: NUMBER[=NAME], digits only", param_hint="'--contact'"
                )
            people.append(Contact(number, name or f"+{number}"))
        return people
    module = importlib.import_module(engine_ref.partition(":")[0])
    listed = getattr(module, "SIMULATOR_CONTACTS", None)
    if listed:
        return [Contact(*entry) for entry in listed]
    return [Contact("15550000001", "Test user 1"), Contact("15550000002", "Test user 2")]
