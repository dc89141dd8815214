"""``fsm check``, ``fsm recover`` and ``fsm quarantine``: find broken sessions, repair them,
and look after the bytes that were taken out of them."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from fsm.cli.common import (
    EXIT_PROBLEM,
    Duration,
    Progress,
    clock,
    echo_json,
    flow_option,
    json_option,
    main,
    open_store,
    problem_exit,
    session_flow,
    store_options,
    when,
)
from fsm.ops.backup import private_file
from fsm.ops.recover import (
    DEFAULT_TTL,
    Outcome,
    find_quarantined,
    plan_recovery,
    recover_session,
    restore_quarantined,
)
from fsm.ops.sessions import JWT, REDACTED, redact
from fsm.ops.validate import NOT_REPAIRABLE, Problem, check_store
from fsm.snapshot import named_fields

if TYPE_CHECKING:
    from fsm.clock import Clock
    from fsm.flow import FlowSpec
    from fsm.store import Store


@main.command()
@store_options
@flow_option
@json_option
def check(
    store_url: str | None, namespace: str | None, flow_ref: str | None, as_json: bool
) -> None:
    """Scan every session and report the invalid ones with the reason: undecodable or wrong
    types, a newer schema, a stage or step the flow does not have, an expired token in a
    protected stage. Exit 1 if any is invalid. With --json: JSON Lines, one object per invalid
    session, then always a last line {"summary": {"checked": N, "invalid": M, "problems":
    {...}}}."""
    store = open_store(store_url, namespace)
    spec = session_flow(flow_ref, store, namespace)
    now = clock().now()
    kinds: Counter[str] = Counter()
    with Progress("checking sessions") as progress:
        for found in check_store(store, spec, now=now, progress=progress.advance):
            assert found.problem is not None
            kinds[found.problem.value] += 1
            if as_json:
                echo_json(
                    {
                        "user": found.user_key,
                        "version": found.version,
                        "problem": found.problem.value,
                        "reason": found.reason,
                    }
                )
            else:
                click.echo(f"{found.user_key:<24}  {found.problem.value:<17}  {found.reason}")
    checked = progress.done
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    invalid = sum(kinds.values())
    if as_json:  # always a last line, so "all valid" is an answer too
        echo_json({"summary": {"checked": checked, "invalid": invalid, "problems": dict(kinds)}})
    click.echo(
        f"checked {checked} session(s): {invalid} invalid" + (f" ({summary})" if summary else ""),
        err=True,
    )
    if invalid:
        if kinds.get(Problem.EXPIRED_TOKEN.value):
            click.echo(
                "expired tokens are handled by the bot: the user is asked to sign in again "
                "and brought back; fsm recover USER moves one to the safe stage now",
                err=True,
            )
        raise SystemExit(EXIT_PROBLEM)


@main.command()
@click.argument("user", required=False)
@click.option("--all", "every", is_flag=True, help="Recover every invalid session.")
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@click.option(
    "--force", is_flag=True, help="Move USER to the safe stage even if the session is valid."
)
@store_options
@flow_option
@json_option
def recover(
    user: str | None,
    every: bool,
    dry_run: bool,
    force: bool,
    store_url: str | None,
    namespace: str | None,
    flow_ref: str | None,
    as_json: bool,
) -> None:
    """Move a broken session to the flow's safe stage, keeping the token if it is still valid
    (and the data, if the snapshot decodes); the original bytes go to the quarantine. Safe
    while the bot runs. --all skips expired tokens (the bot handles those). Exit 1 if a
    session could not be recovered."""
    if (user is None) == (not every):
        raise click.UsageError("give a USER or --all (not both)")
    if force and every:
        raise click.UsageError("--force is for one USER")
    store = open_store(store_url, namespace)
    spec = session_flow(flow_ref, store, namespace)
    clk = clock()
    users, left = ([user], 0) if user is not None else _repairable(store, spec, clk, as_json)
    failed = 0
    for key in users:
        if dry_run:
            found, decided = plan_recovery(
                store.session_view(key), key, spec, now=clk.now(), force=force
            )
            if decided is None:
                assert found is not None
                outcome, reason = "would-recover", found.reason
            else:
                outcome, reason = decided.outcome.value, decided.reason
                failed += decided.outcome not in (Outcome.RECOVERED, Outcome.VALID)
            _say(as_json, {"user": key, "outcome": outcome, "reason": reason})
            continue
        result = recover_session(store, spec, key, clock=clk, force=force)
        _say(
            as_json,
            {
                "user": key,
                "outcome": result.outcome.value,
                "reason": result.reason,
                "quarantine_id": result.quarantine_id,
                "kept_token": result.kept_token,
                "kept_data": result.kept_data,
                "version": result.version or None,
            },
        )
        failed += result.outcome not in (Outcome.RECOVERED, Outcome.VALID)
    if every and not as_json:
        click.echo(
            f"{len(users)} invalid session(s) handled, {failed} not recovered"
            + (f", {left} left alone (another flow's, or written by newer code)" if left else ""),
            err=True,
        )
    if failed:
        raise SystemExit(EXIT_PROBLEM)


def _repairable(store: Store, spec: FlowSpec, clk: Clock, as_json: bool) -> tuple[list[str], int]:
    """The users ``recover --all`` repairs (invalid, and this flow's to repair), and how many
    invalid sessions it leaves alone: each of those is reported (another flow's, or written
    by newer code), never rewritten."""
    users: list[str] = []
    left = 0
    for diagnosis in check_store(store, spec, now=clk.now()):
        if diagnosis.problem in NOT_REPAIRABLE:
            left += 1
            reason = f"{diagnosis.problem.value}: {diagnosis.reason}; left alone"
            _say(
                as_json, {"user": diagnosis.user_key, "outcome": "not-repairable", "reason": reason}
            )
        elif diagnosis.problem is not Problem.EXPIRED_TOKEN:
            users.append(diagnosis.user_key)
    return users, left


def _say(as_json: bool, info: dict[str, Any]) -> None:
    if as_json:
        echo_json(info)
        return
    line = f"{info['user']}: {info['outcome']} - {info['reason']}"
    if info.get("quarantine_id"):
        line += f"; original bytes in quarantine {info['quarantine_id']}"
    if info.get("outcome") == Outcome.RECOVERED.value:
        kept = [n for n in ("token", "data") if info.get(f"kept_{n}")]
        line += f"; kept: {', '.join(kept) or 'nothing'}; now version {info['version']}"
    click.echo(line)


@main.group()
def quarantine() -> None:
    """Bytes taken out of sessions because they could not be read (kept byte for byte)."""


@quarantine.command(name="ls")
@click.argument("user", required=False)
@store_options
@json_option
def quarantine_ls(
    user: str | None, store_url: str | None, namespace: str | None, as_json: bool
) -> None:
    """List quarantined entries (only USER's if given), oldest first."""
    store = open_store(store_url, namespace)
    now = clock().now()
    count = 0
    if not as_json:
        click.echo(f"{'ID':<30}  {'USER':<20}  {'AT':<38}  {'BYTES':>6}  REASON")
    for e in store.quarantined(user):
        count += 1
        if as_json:
            echo_json(
                {
                    "id": e.id,
                    "user": e.user_key,
                    "at": e.at,
                    "bytes": len(e.raw),
                    "reason": e.reason,
                }
            )
        else:
            click.echo(
                f"{e.id:<30}  {e.user_key:<20}  {when(e.at, now):<38}  {len(e.raw):>6}  {e.reason}"
            )
    click.echo(f"{count} quarantined entr{'y' if count == 1 else 'ies'}", err=True)


#: In text that is neither msgpack nor JSON: ``"password": "..."``, ``token=...`` and the like.
_SECRET_PAIR = re.compile(
    r"""(?ix)(["']?[A-Za-z0-9_\-]*(?:token|secret|password|passwd|pwd|jwt|pin|otp|api[_-]?key|
    authorization|credentials?|cookie|bearer)[A-Za-z0-9_\-]*["']?\s*[:=]\s*(?:bearer\s+)?)
    ("[^"]*"|'[^']*'|[^\s,;&}]+)"""
)


def _sensitive_pair(keys: frozenset[str]) -> re.Pattern[str] | None:
    """In text that is neither msgpack nor JSON: ``"address": "..."`` or ``address=...`` for
    the flow's sensitive keys (None if it declares none). Unquoted, the value runs to the next
    separator or the end of the line: an address has spaces in it."""
    if not keys:
        return None
    names = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
    return re.compile(
        rf"""(["']?(?<![A-Za-z0-9_\-])(?:{names})["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^,;&}}\r\n]+)"""
    )


def _readable(raw: bytes, show_secrets: bool, sensitive: frozenset[str] = frozenset()) -> Any:
    """What the bytes hold (msgpack, JSON or text), with secrets and the values of the flow's
    ``sensitive`` keys hidden unless asked."""
    try:
        value: Any = msgspec.msgpack.decode(raw)
        if isinstance(value, int) and raw[:1] in (b"{", b"["):
            raise ValueError("JSON, not msgpack")  # a JSON text starts like a msgpack int
    except Exception:  # noqa: BLE001 - not msgpack: JSON, or text
        text = raw.decode("utf-8", "replace")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            if show_secrets:
                return text
            text = _SECRET_PAIR.sub(lambda m: m[1] + REDACTED, text)
            pair = _sensitive_pair(sensitive)
            if pair is not None:
                text = pair.sub(lambda m: m[1] + REDACTED, text)
            return JWT.sub(REDACTED, text)
    fields = named_fields(value)  # a snapshot array: show (and redact) by field name
    if fields is not None:
        value = fields
    return value if show_secrets else redact(value, sensitive)


@quarantine.command(name="show")
@click.argument("entry_id")
@click.option("--user", default=None, help="The entry's user (faster on a large store).")
@click.option(
    "--raw",
    "raw_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the exact bytes to FILE (mode 0600: they may hold a token).",
)
@click.option(
    "--show-secrets",
    is_flag=True,
    help="Do not hide tokens, secret-looking values or the flow's sensitive keys in what is shown.",
)
@store_options
@flow_option
@json_option
def quarantine_show(
    entry_id: str,
    user: str | None,
    raw_out: Path | None,
    show_secrets: bool,
    store_url: str | None,
    namespace: str | None,
    flow_ref: str | None,
    as_json: bool,
) -> None:
    """One quarantined entry: who, when, why, and what the bytes hold (tokens and the values
    of the flow's sensitive keys hidden)."""
    store = open_store(store_url, namespace)
    sensitive = session_flow(flow_ref, store, namespace).sensitive
    entry = find_quarantined(store, entry_id, user)
    if entry is None:
        problem_exit(f"no quarantined entry {entry_id!r}")
        return
    content = _readable(entry.raw, show_secrets, sensitive)
    if raw_out is not None:
        with private_file(raw_out) as out:
            out.write(entry.raw)
    if as_json:
        echo_json(
            {
                "id": entry.id,
                "user": entry.user_key,
                "at": entry.at,
                "reason": entry.reason,
                "bytes": len(entry.raw),
                "content": content,
            }
        )
        return
    now = clock().now()
    click.echo(f"id          {entry.id}")
    click.echo(f"user        {entry.user_key}")
    click.echo(f"at          {when(entry.at, now)}")
    click.echo(f"reason      {entry.reason}")
    click.echo(f"bytes       {len(entry.raw)}")
    click.echo(f"content     {content!r}")
    if raw_out is not None:
        click.echo(f"raw bytes written to {raw_out} (mode 0600)")


@quarantine.command(name="restore")
@click.argument("entry_id")
@click.option("--user", default=None, help="The entry's user (faster on a large store).")
@click.option("--replace", is_flag=True, help="Write it over the session the user has now.")
@click.option(
    "--ttl",
    type=Duration(),
    default=DEFAULT_TTL,
    show_default="30m",
    metavar="DURATION",
    help="How long the restored session lives (give the bot's session_ttl).",
)
@store_options
@flow_option
def quarantine_restore(
    entry_id: str,
    user: str | None,
    replace: bool,
    ttl: float,
    store_url: str | None,
    namespace: str | None,
    flow_ref: str | None,
) -> None:
    """Put quarantined bytes back as the user's session (once a fix makes them valid for the
    flow), by compare-and-set, and drop them from the quarantine. Exit 1 if not restored."""
    store = open_store(store_url, namespace)
    spec = session_flow(flow_ref, store, namespace)
    entry = find_quarantined(store, entry_id, user)
    if entry is None:
        problem_exit(f"no quarantined entry {entry_id!r}")
        return
    done, _, detail = restore_quarantined(
        store, spec, entry.user_key, entry_id, clock=clock(), replace=replace, ttl=ttl
    )
    if not done:
        problem_exit(f"{entry.user_key}: {detail}")
    click.echo(f"{entry.user_key}: {detail}")


@quarantine.command(name="drop")
@click.argument("entry_id")
@click.option("--user", default=None, help="The entry's user (faster on a large store).")
@store_options
def quarantine_drop(
    entry_id: str, user: str | None, store_url: str | None, namespace: str | None
) -> None:
    """Delete one quarantined entry for good (after it was looked at, or saved with
    show --raw). Exit 1 if there is no such entry."""
    store = open_store(store_url, namespace)
    entry = find_quarantined(store, entry_id, user)
    if entry is None or store.remove_quarantined(entry.user_key, entry_id) is None:
        problem_exit(f"no quarantined entry {entry_id!r}")
        return
    click.echo(f"{entry.user_key}: dropped quarantined entry {entry_id} ({len(entry.raw)} bytes)")
