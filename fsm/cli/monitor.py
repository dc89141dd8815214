"""``fsm metrics`` and ``fsm health``: the store's figures, and a probe."""

from __future__ import annotations

import click

from fsm.cli.common import (
    EXIT_PROBLEM,
    Duration,
    Progress,
    echo_json,
    human_seconds,
    json_option,
    main,
    open_store,
    open_store_unchecked,
    store_options,
)
from fsm.errors import StoreUnavailable
from fsm.ops.health import Check, HealthReport, health_check
from fsm.ops.metrics import collect_metrics
from fsm.store import Store


@main.command()
@store_options
@json_option
@click.option(
    "--prometheus", is_flag=True, help="Print the Prometheus text exposition format instead."
)
@click.option(
    "--expiring-within",
    type=Duration(),
    default=300.0,
    show_default="5m",
    metavar="DURATION",
    help="What counts as expiring soon.",
)
@click.option(
    "--serve",
    "serve_at",
    default=None,
    metavar="[HOST:]PORT",
    help="Serve the Prometheus format at http://HOST:PORT/metrics until stopped (an "
    "exporter; each scrape scans the store). HOST defaults to 127.0.0.1.",
)
def metrics(
    store_url: str | None,
    namespace: str | None,
    as_json: bool,
    prometheus: bool,
    expiring_within: float,
    serve_at: str | None,
) -> None:
    """Store-wide figures: sessions in all and by stage, locked, average TTL left, expiring
    soon, expired and evicted keys, memory and maxmemory (Redis INFO), unreadable and
    quarantined. One scan of the store. The message path's counters live in the bot
    process (fsm serve's /metrics; fsm.ops.prometheus.engine_registry)."""
    store = open_store(store_url, namespace)
    if serve_at is not None:
        _serve_exporter(store, serve_at, expiring_within)
        return
    if prometheus:
        from prometheus_client import generate_latest

        from fsm.ops.prometheus import store_registry

        click.echo(
            generate_latest(store_registry(store, expiring_within=expiring_within)).decode(),
            nl=False,
        )
        return
    with Progress("sessions counted") as progress:
        m = collect_metrics(store, expiring_within=expiring_within, progress=progress.advance)
    if as_json:
        echo_json(m.as_dict())
        return
    click.echo(f"sessions              {m.sessions}")
    for stage, n in m.by_stage.items():
        click.echo(f"  {stage:<20}{n}")
    click.echo(f"locked                {m.locked}")
    click.echo(f"average TTL left      {human_seconds(m.average_ttl)}")
    soon = f"expiring within {human_seconds(expiring_within)}"
    click.echo(f"{soon:<21} {m.expiring_soon}")
    expired = "-" if m.expired_since_start is None else str(m.expired_since_start)
    click.echo(f"expired since start   {expired}  (the server's count, all keys)")
    click.echo(f"unreadable            {m.unreadable}")
    if m.newer_schema:
        click.echo(f"newer schema          {m.newer_schema}  (written by newer code)")
    click.echo(f"quarantined           {m.quarantined}")
    if m.used_memory is not None:
        limit = "" if not m.maxmemory else f" of {m.maxmemory / 1048576:.1f} MiB maxmemory"
        click.echo(f"server memory         {m.used_memory / 1048576:.1f} MiB{limit}")
    if m.evicted_since_start:
        click.echo(f"evicted since start   {m.evicted_since_start}  (lost sessions, if any)")


def _serve_exporter(store: Store, where: str, expiring_within: float) -> None:
    from adapters.exporter import serve_store_metrics

    host, _, port_text = where.rpartition(":")
    if not port_text.isdecimal() or not port_text.isascii() or not 0 < int(port_text) < 65536:
        raise click.BadParameter(f"{where!r}: [HOST:]PORT", param_hint="'--serve'")
    host = host.strip("[]") or "127.0.0.1"
    click.echo(f"fsm metrics: serving http://{host}:{port_text}/metrics", err=True)
    try:
        serve_store_metrics(store, host, int(port_text), expiring_within=expiring_within)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except OSError as exc:
        click.echo(f"error: cannot serve on {where}: {exc}", err=True)
        raise SystemExit(2) from None


@main.command()
@store_options
@json_option
@click.option(
    "--max-latency",
    type=Duration(),
    default=0.5,
    show_default="500ms",
    metavar="DURATION",
    help="Slowest operation allowed before the store counts as unhealthy.",
)
def health(store_url: str | None, namespace: str | None, as_json: bool, max_latency: float) -> None:
    """Probe the store: connection, state operations (a real write/read/delete on a reserved
    key), the lock, the script cache, latency. Exit 0 healthy, 1 unhealthy (an unreachable
    store included: that is the probe's answer)."""
    try:
        store = open_store_unchecked(store_url, namespace)
    except StoreUnavailable as exc:  # a Cluster client connects as it is made
        report = HealthReport([Check("connection", False, f"cannot connect: {exc.detail}")])
    else:
        report = health_check(store, max_latency=max_latency)
    if as_json:
        echo_json(report.as_dict())
    else:
        for c in report.checks:
            mark = click.style("ok  ", fg="green") if c.ok else click.style("FAIL", fg="red")
            click.echo(f"{mark}  {c.name:<11} {c.detail}")
        click.echo("healthy" if report.healthy else "UNHEALTHY")
    if not report.healthy:
        raise SystemExit(EXIT_PROBLEM)
