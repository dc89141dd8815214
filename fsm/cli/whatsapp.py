"""``fsm whatsapp``: the WhatsApp account, seen from the flow. ``fsm whatsapp templates check``
compares the message templates a flow declares (``Flow.templates``) with the ones the
WhatsApp Business Account has, as the Graph API lists them (:mod:`adapters.whatsapp.templates_api`).

Exit status: 0 every declared template is there, approved and shaped as declared; 1 one is
missing, not approved or mismatched; 2 bad usage, a missing or unusable setting, the Graph API
refusing the request (a bad token or account id) or out of reach. The access token is never
printed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NoReturn

import click

from fsm.cli.common import (
    DEFAULT_FLOW,
    EXIT_PROBLEM,
    EXIT_UNAVAILABLE,
    echo_json,
    flow_spec,
    json_option,
    main,
    resolve,
)
from fsm.errors import ConfigurationError

if TYPE_CHECKING:
    from adapters.whatsapp.templates_api import Check
    from fsm.flow import FlowSpec

#: Hints for the Graph API's refusals, by Meta's error code.
REFUSAL_HINTS = {
    190: "the access token is invalid or expired (WHATSAPP_ACCESS_TOKEN)",
    100: "is WHATSAPP_BUSINESS_ACCOUNT_ID the WhatsApp Business Account's id (not the phone "
    "number's id)?",
    10: "the token lacks the whatsapp_business_management permission",
    200: "the token lacks the whatsapp_business_management permission",
}


@main.group("whatsapp")
def whatsapp() -> None:
    """The WhatsApp Business Account, checked against the flow (the whatsapp extra)."""


@whatsapp.group("templates")
def templates() -> None:
    """The flow's message templates and the account's."""


@templates.command("check")
@click.option(
    "--flow",
    "flow_ref",
    default=None,
    metavar="MODULE:NAME",
    help=f"The flow whose templates to check: a Flow subclass [default: {DEFAULT_FLOW}].",
)
@click.option(
    "--engine",
    "engine_ref",
    default=None,
    metavar="MODULE:FACTORY",
    help="Or the engine factory fsm serve runs (a function taking the async store and "
    "returning an fsm.AsyncEngine): its flow's templates are checked.",
)
@json_option
def check_command(flow_ref: str | None, engine_ref: str | None, as_json: bool) -> None:
    """Compare the flow's declared templates with the account's: each must exist with the
    same name and language, be APPROVED, and have the declared number of body variables,
    header kind and quick-reply buttons. Reads WHATSAPP_BUSINESS_ACCOUNT_ID and
    WHATSAPP_ACCESS_TOKEN (with the whatsapp_business_management permission), and
    WHATSAPP_API_URL. Exit 0: all match; 1: one is missing, not approved or mismatched; 2:
    bad usage, a missing setting, or the Graph API refused or is out of reach."""
    try:
        from adapters.whatsapp import templates_api as api
        from adapters.whatsapp.settings import SettingsError
    except ImportError as exc:
        _fail(
            "fsm whatsapp needs the whatsapp extra (in a checkout of convo-fsm: "
            f"pip install -e '.[whatsapp]'; a wheel: docs/your-bot.md): {exc}"
        )
    spec = _flow(flow_ref, engine_ref)
    declared = list(spec.templates.values())
    if not declared:
        _report(spec, [], as_json)
        click.echo(f"flow {spec.name!r} declares no templates: nothing to check", err=True)
        return
    try:
        account = api.Account.from_env(os.environ)
        found = account.fetch()
    except SettingsError as exc:
        _fail(str(exc))
    except api.TemplatesRefused as exc:
        hint = REFUSAL_HINTS.get(exc.code)
        _fail(f"the Graph API refused the template list: {exc}" + (f"; {hint}" if hint else ""))
    except api.TemplatesUnavailable as exc:
        _fail(f"cannot read the account's templates: {exc}")
    checks = api.check_templates(declared, found)
    _report(spec, checks, as_json)
    bad = [c for c in checks if c.outcome != "ok"]
    click.echo(f"{len(checks)} template(s) checked: {_summary(checks)}", err=True)
    if bad:
        raise SystemExit(EXIT_PROBLEM)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(EXIT_UNAVAILABLE)


def _flow(flow_ref: str | None, engine_ref: str | None) -> FlowSpec:
    """The flow ``--flow`` names, or the one ``--engine``'s factory builds its engine on,
    else the reference bot."""
    if flow_ref and engine_ref:
        raise click.UsageError("give --flow or --engine, not both")
    if not engine_ref:
        return flow_spec(flow_ref or DEFAULT_FLOW)
    from adapters import AsyncMemoryStore
    from adapters.whatsapp import server

    factory = resolve(engine_ref, "--engine", example="mybot.wiring:build_async_engine")
    if not callable(factory):
        raise click.BadParameter(f"{engine_ref} is not callable", param_hint="'--engine'")
    try:
        engine = server.build_engine(factory, AsyncMemoryStore())
    except ConfigurationError as exc:  # a setting the factory reads (CREDEX_*, say)
        _fail(str(exc))
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--engine'") from None
    close = getattr(engine.flow, "close", None)
    if callable(close):
        close()
    return engine.spec


def _report(spec: FlowSpec, checks: list[Check], as_json: bool) -> None:
    """The checks as one JSON document, or as a table."""
    if as_json:
        echo_json(
            {
                "flow": spec.name,
                "ok": all(c.outcome == "ok" for c in checks),
                "templates": [c.to_dict() for c in checks],
            }
        )
        return
    if not checks:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"message templates of flow {spec.name!r}", title_justify="left")
    for column in ("template", "language", "account status", "result"):
        table.add_column(column, no_wrap=True)
    table.add_column("problems", overflow="fold")
    colours = {"ok": "green", "not_approved": "yellow"}
    for check in checks:
        colour = colours.get(check.outcome, "red")
        table.add_row(
            check.spec.name,
            check.spec.language,
            check.status or "-",
            f"[{colour}]{check.outcome.replace('_', ' ')}[/{colour}]",
            "; ".join(check.problems) or "-",
        )
    Console(highlight=False).print(table)


def _summary(checks: list[Check]) -> str:
    counts: dict[str, int] = {}
    for check in checks:
        counts[check.outcome] = counts.get(check.outcome, 0) + 1
    return ", ".join(f"{n} {outcome.replace('_', ' ')}" for outcome, n in sorted(counts.items()))
