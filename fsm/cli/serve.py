"""``fsm serve``: run a flow as a WhatsApp Cloud API webhook server (uvicorn).

The transport lives in :mod:`adapters.whatsapp` (the ``convo-fsm[whatsapp]`` extra), imported
only when this command runs: the rest of the CLI needs no web stack.
"""

from __future__ import annotations

import asyncio
import os

import click

from fsm.cli.common import EXIT_UNAVAILABLE, main, namespace_option, resolve, safe_url
from fsm.errors import FsmError

DEFAULT_ENGINE = "flows.credex.settings:engine_from_env"


@main.command("serve")
@click.option(
    "--engine",
    "engine_ref",
    default=DEFAULT_ENGINE,
    show_default=True,
    metavar="MODULE:FACTORY",
    help="A function taking the async store (FSM_STORE) and returning an fsm.AsyncEngine.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@namespace_option
def serve_command(engine_ref: str, host: str, port: int, namespace: str) -> None:
    """Serve a flow to WhatsApp users: GET/POST /webhook, GET /healthz, GET /metrics.

    Configured by the environment: WHATSAPP_ACCESS_TOKEN, WHATSAPP_APP_SECRET,
    WHATSAPP_VERIFY_TOKEN, WHATSAPP_PHONE_NUMBER_ID, and optionally WHATSAPP_API_URL,
    WHATSAPP_RATE (messages/s, default 80), WHATSAPP_MARK_READ (1/0) and FSM_STORE (a Redis
    URL; the embedded memory store when unset). See docs/whatsapp.md.
    """
    try:
        from adapters.whatsapp.server import build_app, open_async_store, serve
        from adapters.whatsapp.settings import Settings, SettingsError
    except ImportError as exc:
        click.echo(
            f"error: fsm serve needs the whatsapp extra (pip install 'convo-fsm[whatsapp]'): {exc}",
            err=True,
        )
        raise SystemExit(EXIT_UNAVAILABLE) from None
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    factory = resolve(engine_ref, "--engine", example="mybot.wiring:build_async_engine")
    if not callable(factory):
        raise click.BadParameter(f"{engine_ref} is not callable", param_hint="'--engine'")
    try:
        store = open_async_store(settings.store_url, namespace)
    except (ValueError, TypeError) as exc:  # a URL redis-py cannot parse
        click.echo(f"error: FSM_STORE: {exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    try:
        app = build_app(settings, factory, store)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--engine'") from None
    where = "memory" if settings.store_url is None else safe_url(settings.store_url)
    click.echo(f"fsm serve: {engine_ref} on http://{host}:{port}/webhook, store {where}", err=True)
    try:
        asyncio.run(serve(app, store, host=host, port=port, check=settings.store_url is not None))
    except FsmError as exc:
        click.echo(f"error: cannot reach the store at {where}: {exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
