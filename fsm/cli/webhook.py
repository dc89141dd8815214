"""``fsm fake-graph`` and ``fsm sign-webhook``: run a WhatsApp bot (``fsm serve``) on your own
machine without Meta. The fake Graph API receives the bot's replies and prints them; the
signature lets you post a webhook body by hand (``curl``) that the bot accepts as Meta's.

Both live in :mod:`adapters.whatsapp` (the ``convo-fsm[whatsapp]`` extra), imported only when
the command runs. See docs/whatsapp.md.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import click

from fsm.cli.common import EXIT_UNAVAILABLE, main

SECRET_ENV = "WHATSAPP_APP_SECRET"


def _needs_extra(exc: ImportError, command: str) -> SystemExit:
    click.echo(
        f"error: fsm {command} needs the whatsapp extra (in a checkout of convo-fsm: "
        f"pip install -e '.[whatsapp]'; a wheel: docs/your-bot.md): {exc}",
        err=True,
    )
    return SystemExit(EXIT_UNAVAILABLE)


@main.command("sign-webhook")
@click.argument("body", type=click.File("rb"), metavar="FILE")
@click.option(
    "--secret-env",
    default=SECRET_ENV,
    show_default=True,
    metavar="NAME",
    help="The environment variable that holds the app secret. The secret itself is never "
    "taken on the command line, where the shell's history would keep it.",
)
def sign_webhook(body: BinaryIO, secret_env: str) -> None:
    """Print the X-Hub-Signature-256 header value (sha256=...) that signs the webhook body in
    FILE ('-' for stdin), byte for byte, with the app secret, as Meta signs what it posts.

    Post exactly those bytes: curl --data-binary @FILE, not -d (which drops newlines)."""
    try:
        from adapters.whatsapp.testing import sign
    except ImportError as exc:
        raise _needs_extra(exc, "sign-webhook") from None
    secret = os.environ.get(secret_env, "").strip()  # as fsm serve reads it
    if not secret:
        click.echo(f"error: {secret_env} is not set: export the app secret in it", err=True)
        raise SystemExit(EXIT_UNAVAILABLE)
    click.echo(sign(body.read(), secret))


@main.command("fake-graph")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8700,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: a free one; the first line printed names it).",
)
@click.option(
    "--phone-number-id",
    default=None,
    metavar="ID",
    help="Refuse sends from another business number than this one. Default: any.",
)
@click.option("--quiet", is_flag=True, help="Print only the first line, not every request.")
def fake_graph(host: str, port: int, phone_number_id: str | None, quiet: bool) -> None:
    """Serve a fake WhatsApp Graph API and print every message a bot sends to it: the
    recipient, the text, and a button or list message's options; read receipts; requests it
    refused, and why.

    Point fsm serve at it: WHATSAPP_API_URL=http://127.0.0.1:8700/v99.0 (the first line
    printed gives the URL). Any access token is accepted. Nothing is kept; Ctrl-C stops it."""
    try:
        from adapters.whatsapp.fake_graph import run_printing
    except ImportError as exc:
        raise _needs_extra(exc, "fake-graph") from None
    try:
        run_printing(host=host, port=port, quiet=quiet, phone_number_id=phone_number_id)
    except OSError as exc:
        click.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
