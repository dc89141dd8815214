"""``fsm inspect``, ``fsm history`` and ``fsm ls``: read sessions on a live store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from fsm.cli.common import (
    Duration,
    clock,
    echo_json,
    flow_option,
    human_seconds,
    json_option,
    main,
    open_store,
    problem_exit,
    session_flow,
    store_options,
    to_json,
    when,
)
from fsm.ops.sessions import inspect_session, list_sessions


@main.command()
@click.argument("user")
@store_options
@flow_option
@json_option
@click.option(
    "--show-secrets",
    is_flag=True,
    help="Also print the JWT itself, secret-looking data values and the values of the flow's "
    "sensitive keys (personal data; all hidden by default).",
)
def inspect(
    user: str,
    store_url: str | None,
    namespace: str | None,
    flow_ref: str | None,
    as_json: bool,
    show_secrets: bool,
) -> None:
    """One user's session: stage, step, version, schema, last update and by whom, TTL left,
    lock holder, data (the flow's sensitive keys hidden), the token's claims (never the token
    unless --show-secrets), and whether it is valid for the flow. Exit 1 if the user has no
    session."""
    store = open_store(store_url, namespace)
    spec = session_flow(flow_ref, store, namespace)
    now = clock().now()
    report = inspect_session(store, spec, user, now=now)
    if report is None:
        problem_exit(f"no session for user {user!r} (expired, or never started)")
        return
    info = report.to_dict(now=now, show_secrets=show_secrets)
    if as_json:
        echo_json(info)
        return
    _print_session(info, now)


def _print_session(info: dict[str, Any], now: float) -> None:
    def row(name: str, value: str) -> None:
        click.echo(f"{name:<11} {value}")

    row("user", info["user"])
    problem = info["problem"]
    row(
        "valid",
        "yes"
        if problem is None
        else click.style(f"NO - {problem['kind']}: {problem['reason']}", fg="red"),
    )
    if "stage" not in info:  # the bytes do not decode: nothing more to show
        row("version", f"{info['version']} ({info['bytes']} bytes)")
        _outside(info, row)
        row("expires in", human_seconds(info["ttl"]))
        row("lock", _lock(info["lock"]))
        return
    row("flow", f"{info['flow']} (flow version {info['flow_version']}, schema {info['schema']})")
    option = f"  option {info['option']!r}" if info["option"] else ""
    row("stage", f"{info['stage']}.{info['step']}{option}")
    if info["on_load"] is not None:
        moved = info["on_load"]
        row(
            "",
            f"(written by flow version {info['flow_version']}: "
            f"runs as {moved['stage']}.{moved['step']})",
        )
    if info["needs_migration"]:
        row(
            "migrate",
            "older format: fsm migrate rewrites it (the bot does on the user's next message)",
        )
    row("version", f"{info['version']} ({info['bytes']} bytes)")
    row("updated", f"{when(info['last_updated'], now)} by {info['update_from'] or '?'}")
    _outside(info, row)
    row("expires in", human_seconds(info["ttl"]))
    row("lock", _lock(info["lock"]))
    auth = info["auth"]
    if auth is None:
        row("token", "none")
    else:
        state = "EXPIRED" if auth["expired"] else "valid until"
        row("token", f"subject {auth['subject']!r}, {state} {when(auth['expires_at'], now)}")
        if "token" in auth:
            row("", auth["token"])
        else:
            row("", "(the token itself is hidden: --show-secrets)")
    if info["pending_action"]:
        row("pending", "an action's idempotency key is kept (it waits, or a retry reuses it)")
    if info["resume"] is not None:
        row("resume", f"{info['resume']['stage']}.{info['resume']['step']} after sign-in")
    data = to_json(info["data"], indent=2)
    row("data", data.replace("\n", "\n" + " " * 12))


def _outside(info: dict[str, Any], row: Callable[[str, str], None]) -> None:
    """Say so when the stored version has no history entry: something else wrote it."""
    if info["written_outside"]:
        newest = info["history_version"]
        row(
            "",
            click.style(
                f"version {info['version']} has no history entry (newest: "
                f"{newest if newest is not None else 'none'}): written by something else",
                fg="yellow",
            ),
        )


def _where(stage: str, step: str) -> str:
    """``stage.step`` of a history entry; ``-`` where there was none (a restore's origin)."""
    return f"{stage}.{step}" if step else stage or "-"


def _lock(lock: dict[str, Any] | None) -> str:
    if lock is None:
        return "free"
    return f"held by {lock['owner']} for {human_seconds(lock['ttl'])} more"


@main.command()
@click.argument("user")
@store_options
@json_option
@click.option(
    "-n", "--limit", type=click.IntRange(min=1, max=100_000), default=None, help="Newest N only."
)
def history(
    user: str, store_url: str | None, namespace: str | None, as_json: bool, limit: int | None
) -> None:
    """One user's recent transitions, newest first: version, from -> to (stage.step), event,
    what wrote it and when. Shows where an unexpected transition came from. Exit 1 if there
    is none."""
    store = open_store(store_url, namespace)
    entries = store.history(user, limit=limit)
    if not entries:
        problem_exit(f"no history for user {user!r}")
    if as_json:
        for e in entries:
            echo_json(
                {
                    "version": e.version,
                    "from": _where(e.from_stage, e.from_step),
                    "to": _where(e.to_stage, e.to_step),
                    "event": e.event,
                    "update_from": e.update_from,
                    "at": e.at,
                }
            )
        return
    now = clock().now()
    click.echo(f"{'VERSION':>7}  {'AT':<36}  {'FROM -> TO':<44}  {'EVENT':<18}  BY")
    for e in entries:
        moved = f"{_where(e.from_stage, e.from_step)} -> {_where(e.to_stage, e.to_step)}"
        click.echo(
            f"{e.version:>7}  {when(e.at, now):<36}  {moved:<44}  "
            f"{e.event or '-':<18}  {e.update_from}"
        )


@main.command(name="ls")
@store_options
@flow_option
@json_option
@click.option("--stage", default=None, help="Only sessions in this stage.")
@click.option(
    "--locked/--unlocked", default=None, help="Only sessions whose lease is held (or free)."
)
@click.option(
    "--expiring-within",
    type=Duration(),
    default=None,
    metavar="DURATION",
    help="Only sessions with at most this much TTL left (30s, 5m, 2h).",
)
@click.option("--invalid", is_flag=True, default=None, help="Only sessions that fail fsm check.")
def ls(
    store_url: str | None,
    namespace: str | None,
    flow_ref: str | None,
    as_json: bool,
    stage: str | None,
    locked: bool | None,
    expiring_within: float | None,
    invalid: bool | None,
) -> None:
    """List sessions, streamed as the store is scanned (SCAN, never KEYS; every Cluster
    primary), with filters. The count goes to stderr."""
    store = open_store(store_url, namespace)
    spec = session_flow(flow_ref, store, namespace)
    if stage is not None and stage not in spec.stages:
        raise click.BadParameter(
            f"flow {spec.name!r} has no stage {stage!r} (stages: {', '.join(spec.stages)})",
            param_hint="'--stage'",
        )
    now = clock().now()
    count = 0
    if not as_json:
        click.echo(f"{'USER':<24}  {'STAGE.STEP':<32}  {'VERSION':>7}  {'TTL':>8}  LOCK")
    for report in list_sessions(
        store,
        spec,
        now=now,
        stage=stage,
        locked=locked,
        expiring_within=expiring_within,
        invalid=invalid,
    ):
        count += 1
        view, snap = report.view, report.diagnosis.stored
        where = f"{snap.stage}.{snap.step}" if snap is not None else "<unreadable>"
        if as_json:
            echo_json(
                {
                    "user": view.user_key,
                    "stage": None if snap is None else snap.stage,
                    "step": None if snap is None else snap.step,
                    "version": view.record.version,
                    "ttl": view.ttl,
                    "locked": view.lock is not None,
                    "valid": report.diagnosis.ok,
                }
            )
            continue
        problem = report.diagnosis.problem
        flag = "" if problem is None else f"  [invalid: {problem.value}]"
        if report.diagnosis.needs_migration:
            flag += "  [older format: fsm migrate]"
        lock = "held" if view.lock is not None else "-"
        click.echo(
            f"{view.user_key:<24}  {where:<32}  {view.record.version:>7}  "
            f"{human_seconds(view.ttl):>8}  {lock}{flag}"
        )
    click.echo(f"{count} session(s)", err=True)
