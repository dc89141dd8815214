"""``fsm backup`` and ``fsm restore``: every session to a file and back."""

from __future__ import annotations

import sys
from pathlib import Path

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
from fsm.flow import FlowSpec
from fsm.ops.backup import BackupError, Entry, Restored, private_file
from fsm.ops.backup import backup as write_backup
from fsm.ops.backup import restore as read_restore
from fsm.store import Store

WARNING = (
    "warning: the backup holds every user's API token{personal}. It is readable by you only "
    "(mode 0600); keep it that way and store it encrypted (see docs/operations.md)."
)


def warning(spec: FlowSpec | None) -> str:
    """What ``fsm backup`` says of the file it wrote: it keeps tokens and, unlike every
    display, the values of the flow's sensitive keys (personal data), named; with no flow to
    name them (a store of several bots), that it may hold personal data."""
    if spec is None:
        personal = " and their data, personal data included"
    elif spec.sensitive:
        keys = ", ".join(sorted(spec.sensitive))
        personal = f" and their personal data (flow {spec.name!r}, keys: {keys})"
    else:
        personal = ""
    return WARNING.format(personal=personal)


def _flow_of(flow_ref: str | None, store: Store, namespace: str | None) -> FlowSpec | None:
    """The flow whose sensitive keys the warning names: the one named, else the one the
    sessions are for; None when that cannot be told, since a backup needs no flow."""
    try:
        return session_flow(flow_ref, store, namespace)
    except click.UsageError:
        if flow_ref:
            raise  # a --flow that names no flow is a mistake to report
        return None


@main.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The backup file to write (replaced whole when the backup is complete).",
)
@store_options
@flow_option
def backup(
    output: Path, store_url: str | None, namespace: str | None, flow_ref: str | None
) -> None:
    """Stream every session (snapshot bytes, version, TTL left) to a JSON Lines file. Sessions
    that do not decode are kept as raw bytes, reported, and not fatal. The file keeps
    everything, tokens and the flow's sensitive keys (personal data) included: the warning
    names those keys."""
    store = open_store(store_url, namespace)
    if not output.parent.exists():
        raise click.BadParameter(f"folder {output.parent} does not exist", param_hint="'-o'")
    spec = _flow_of(flow_ref, store, namespace)
    with Progress("sessions backed up") as progress, private_file(output) as out:

        def seen(entry: Entry) -> None:
            progress.advance()
            if entry.corrupt is not None:
                click.echo(f"corrupt: {entry.user}: {entry.corrupt} (kept as raw bytes)", err=True)

        report = write_backup(store, out, clock=clock(), progress=seen)
    click.echo(
        f"backed up {report.sessions} session(s) to {output}"
        + (f"; {len(report.corrupt)} corrupt kept as raw bytes" if report.corrupt else "")
    )
    for user, why in report.history_unreadable:
        click.echo(f"history not backed up: {user}: {why}", err=True)
    click.echo(warning(spec), err=True)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace sessions the store holds in a newer version (default: keep them).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be restored; write nothing.")
@store_options
@json_option
def restore(
    file: Path,
    overwrite: bool,
    dry_run: bool,
    store_url: str | None,
    namespace: str | None,
    as_json: bool,
) -> None:
    """Write the sessions of a backup back by compare-and-set, each with the TTL it had left.
    A newer session in the store is kept unless --overwrite; versions never go backwards.
    Exit 1 if the file is truncated, or an entry was not written (a worker held the session,
    or the entry holds bytes that are not a session)."""
    store = open_store(store_url, namespace)
    with Progress("sessions restored") as progress, file.open("rb") as lines:
        try:
            report = read_restore(
                store,
                lines,
                clock=clock(),
                overwrite=overwrite,
                dry_run=dry_run,
                progress=lambda _entry, _outcome: progress.advance(),
            )
        except BackupError as exc:
            click.echo(f"error: {file}: {exc}", err=True)
            raise SystemExit(EXIT_PROBLEM) from None
    counts = {o.value: report.counts.get(o, 0) for o in Restored}
    if as_json:
        echo_json(
            {
                "dry_run": dry_run,
                "entries": report.entries,
                "complete": report.complete,
                **counts,
                "history_entries": report.history,
                "skipped": [{"user": u, "why": o.value, "detail": d} for u, o, d in report.skipped],
            }
        )
    else:
        for user, outcome, detail in report.skipped:
            click.echo(f"{outcome.value}: {user}: {detail}", err=True)
        prefix = "dry run: " if dry_run else ""
        done = [f"{n} {name}" for name, n in counts.items() if n]
        if report.history:
            done.append(f"{report.history} history entr(ies) appended")
        click.echo(prefix + ", ".join(done) if done else prefix + "nothing to restore")
    if report.history_refused:
        click.echo(f"warning: history not restored: {report.history_refused}", err=True)
    if not report.complete:
        click.echo(f"error: {file} is truncated (no end line): restored what it holds", err=True)
    if report.counts.get(Restored.CORRUPT):
        click.echo(
            f"{report.counts[Restored.CORRUPT]} entr(ies) held bytes that are not a session "
            "and were not restored (their raw bytes stay in the file)",
            err=True,
        )
    if (
        not report.complete
        or report.counts.get(Restored.BUSY)
        or report.counts.get(Restored.CORRUPT)
    ):
        sys.exit(EXIT_PROBLEM)
