"""``fsm migrate``: rewrite sessions written by an older snapshot schema or flow version."""

from __future__ import annotations

import click

from fsm.cli.common import (
    EXIT_PROBLEM,
    Progress,
    clock,
    echo_json,
    flow_option,
    json_option,
    main,
    open_store,
    session_flow,
    store_options,
)
from fsm.ops.migrate import Migrated, Step, migrate_sessions
from fsm.snapshot import SCHEMA_VERSION


@main.command()
@click.option("--dry-run", is_flag=True, help="Count what would be migrated; write nothing.")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=10**12),
    default=None,
    help="Stop after migrating N sessions (a canary; run again to go on).",
)
@store_options
@flow_option
@json_option
def migrate(
    dry_run: bool,
    limit: int | None,
    store_url: str | None,
    namespace: str | None,
    flow_ref: str | None,
    as_json: bool,
) -> None:
    """Bring every session to the current snapshot schema and flow version, by
    compare-and-set, while the bot runs. Idempotent: an interrupted run is resumed by running
    it again. Invalid sessions are reported and left for fsm check / fsm recover; sessions a
    worker holds are left for the next run. Exit 1 if any session was skipped."""
    store = open_store(store_url, namespace)
    spec = session_flow(flow_ref, store, namespace)
    click.echo(
        f"migrating to schema {SCHEMA_VERSION}, flow {spec.name!r} version {spec.version}"
        + (" (dry run)" if dry_run else ""),
        err=True,
    )
    with Progress("sessions scanned") as progress:

        def seen(outcome: Migrated) -> None:
            progress.advance()
            if outcome.step in (Step.INVALID, Step.BUSY) and not as_json:
                click.echo(
                    f"skipped {outcome.user_key}: {outcome.step.value}: {outcome.detail}", err=True
                )

        report = migrate_sessions(
            store, spec, clock=clock(), dry_run=dry_run, limit=limit, progress=seen
        )
    counts = {step.value: report.counts.get(step, 0) for step in Step}
    if as_json:
        echo_json(
            {
                "dry_run": dry_run,
                "scanned": report.scanned,
                **counts,
                "skipped": [
                    {"user": p.user_key, "why": p.step.value, "detail": p.detail}
                    for p in report.problems
                ],
            }
        )
    else:
        verb = "would migrate" if dry_run else "migrated"
        click.echo(
            f"scanned {report.scanned}: {verb} {counts['migrated']}, already current "
            f"{counts['current']}, busy {counts['busy']}, invalid {counts['invalid']}, "
            f"gone {counts['gone']}"
        )
    if report.problems:
        click.echo(
            f"{len(report.problems)} session(s) skipped: run again for busy ones; "
            "fsm check / fsm recover for invalid ones",
            err=True,
        )
        raise SystemExit(EXIT_PROBLEM)
