"""Reading sessions as an operator: one in full (``fsm inspect``), or all of them, filtered and
streamed (``fsm ls``). Nothing here writes, and nothing here shows a token, a secret-looking
value or a value under one of the flow's sensitive keys unless asked to (:mod:`fsm.redaction`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fsm.flow import FlowSpec
from fsm.ops.validate import Diagnosis, diagnose_view, is_reserved
from fsm.records import SessionView
from fsm.redaction import JWT as JWT
from fsm.redaction import REDACTED as REDACTED
from fsm.redaction import SECRET_WORDS as SECRET_WORDS
from fsm.redaction import TOO_DEEP as TOO_DEEP
from fsm.redaction import is_secret_key as is_secret_key
from fsm.redaction import redact as redact
from fsm.store import Store, operator_store


@dataclass(frozen=True, slots=True)
class SessionReport:
    """One session as ``fsm inspect`` shows it: the view (record, TTL, lock) and the verdict."""

    view: SessionView
    diagnosis: Diagnosis
    #: The version of the user's newest history entry (None: not read, or no history).
    #: Every write through this library appends one, so a stored version above it was
    #: written by something else.
    history_version: int | None = None
    #: The data keys whose values :meth:`to_dict` hides (the flow's
    #: :attr:`~fsm.flow.FlowSpec.sensitive`; :meth:`of` sets them).
    sensitive: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls, view: SessionView, spec: FlowSpec, *, now: float, history_version: int | None = None
    ) -> SessionReport:
        """``view`` judged against ``spec``, to be shown with ``spec``'s sensitive keys
        hidden: how every display of a session (``fsm inspect``, ``fsm ls``, the simulator's
        panel) makes its report."""
        return cls(view, diagnose_view(view, spec, now=now), history_version, spec.sensitive)

    @property
    def user_key(self) -> str:
        return self.view.user_key

    @property
    def written_outside(self) -> bool:
        """The stored version has no history entry: something else wrote the session."""
        newest = self.history_version or 0
        return self.view.record.version > newest and self.view.record.version > 0

    def to_dict(self, *, now: float, show_secrets: bool = False) -> dict[str, Any]:
        """Plain data for JSON or a table; the token, secret-looking data and the values of
        the flow's sensitive keys (personal data) only with ``show_secrets``."""
        view, found = self.view, self.diagnosis
        snap, runs = found.stored, found.snapshot
        out: dict[str, Any] = {
            "user": view.user_key,
            "version": view.record.version,
            "valid": found.ok,
            "problem": None
            if found.problem is None
            else {"kind": found.problem.value, "reason": found.reason},
            "schema": found.stored_schema,
            "ttl": view.ttl,
            "lock": None if view.lock is None else {"owner": view.lock.owner, "ttl": view.lock.ttl},
            "bytes": len(view.record.payload),
            "history_version": self.history_version,
            "written_outside": self.written_outside,
        }
        if snap is None:
            return out
        auth = snap.auth
        token: dict[str, Any] | None = None
        if auth is not None:
            token = {
                "subject": auth.subject,
                "expires_at": auth.expires_at,
                "issued_at": auth.issued_at,
                "expires_in": None if auth.expires_at is None else auth.expires_at - now,
                "expired": auth.expires_at is not None and auth.expires_at <= now,
            }
            if show_secrets:
                token["token"] = auth.token
        out.update(
            {
                "flow": snap.flow,
                "flow_version": found.stored_flow_version,
                "stage": snap.stage,
                "step": snap.step,
                "option": snap.option,
                "needs_migration": found.needs_migration,
                "on_load": None
                if runs is None or (runs.stage, runs.step) == (snap.stage, snap.step)
                else {"stage": runs.stage, "step": runs.step},
                "pending_action": bool(snap.pending),
                "resume": None
                if snap.resume is None
                else {"stage": snap.resume.stage, "step": snap.resume.step},
                "last_updated": snap.last_updated,
                "update_from": snap.update_from,
                "data": snap.data if show_secrets else redact(snap.data, self.sensitive),
                "auth": token,
            }
        )
        return out


def inspect_session(
    store: Store, spec: FlowSpec, user_key: str, *, now: float
) -> SessionReport | None:
    """The user's session with its verdict, or None if there is none."""
    store = operator_store(store)
    view = store.session_view(user_key)
    if view is None:
        return None
    newest = store.history(user_key, limit=1)
    return SessionReport.of(
        view, spec, now=now, history_version=newest[0].version if newest else None
    )


def list_sessions(
    store: Store,
    spec: FlowSpec,
    *,
    now: float,
    stage: str | None = None,
    locked: bool | None = None,
    expiring_within: float | None = None,
    invalid: bool | None = None,
    batch: int = 500,
) -> Iterator[SessionReport]:
    """Every session that passes the filters, streamed as the store scans (SCAN on Redis,
    across every Cluster primary): ``stage`` (its stage is this one), ``locked`` (a worker
    holds its lease, or not), ``expiring_within`` (seconds of TTL left at most), ``invalid``."""
    views = operator_store(store).sessions(batch=batch)  # refused here, not at the first row
    return _filtered(views, spec, now, stage, locked, expiring_within, invalid)


def _filtered(
    views: Iterator[SessionView],
    spec: FlowSpec,
    now: float,
    stage: str | None,
    locked: bool | None,
    expiring_within: float | None,
    invalid: bool | None,
) -> Iterator[SessionReport]:
    for view in views:
        if is_reserved(view.user_key):
            continue
        if locked is not None and (view.lock is not None) != locked:
            continue
        if expiring_within is not None and (view.ttl is None or view.ttl > expiring_within):
            continue
        found = diagnose_view(view, spec, now=now)
        if stage is not None and (found.stored is None or found.stored.stage != stage):
            continue
        if invalid is not None and (not found.ok) != invalid:
            continue
        yield SessionReport(view, found, sensitive=spec.sensitive)
