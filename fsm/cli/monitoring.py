"""``fsm monitoring``: the alerting rules and the Grafana dashboard, written out for import."""

from __future__ import annotations

import json

import click

from fsm.cli.common import main
from fsm.ops.monitoring import ALERTS, THRESHOLDS, dashboard, resolve_thresholds, rules_yaml

DEFAULT_RUNBOOK = "docs/operations.md"  # pass your published copy: --runbook-base URL


def _overrides(pairs: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise click.BadParameter(f"{pair!r}: use NAME=VALUE", param_hint="'--set'")
        found[name.strip()] = value.strip()
    try:
        resolve_thresholds(found)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--set'") from None
    return found


set_option = click.option(
    "--set",
    "pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="Change a threshold (repeat it); `fsm monitoring thresholds` lists them.",
)


@main.group("monitoring")
def monitoring() -> None:
    """Prometheus alerting rules and a Grafana dashboard for the bot (see docs/monitoring.md)."""


@monitoring.command("rules")
@set_option
@click.option(
    "--runbook-base",
    default=DEFAULT_RUNBOOK,
    show_default=True,
    metavar="URL",
    help="Where docs/operations.md is published; each alert links to its section.",
)
def rules(pairs: tuple[str, ...], runbook_base: str) -> None:
    """Print the Prometheus rule file: fsm monitoring rules > fsm-rules.yml"""
    click.echo(rules_yaml(_overrides(pairs), runbook_base=runbook_base.rstrip("#")), nl=False)


@monitoring.command("dashboard")
@set_option
def dashboard_command(pairs: tuple[str, ...]) -> None:
    """Print the Grafana dashboard (JSON, import-ready): fsm monitoring dashboard > fsm.json"""
    click.echo(json.dumps(dashboard(_overrides(pairs)), indent=2))


@monitoring.command("thresholds")
def thresholds() -> None:
    """List the thresholds, their defaults and what they mean, and the alerts."""
    for name, threshold in THRESHOLDS.items():
        click.echo(f"{name:<20} {threshold.default:<8} {threshold.meaning}")
    click.echo()
    for alert in ALERTS:
        click.echo(f"{alert.name:<28} {alert.severity:<8} {alert.summary}")
