"""The dashboard as the bot keeps it, and the menu built from it.

The snapshot keeps a compact :class:`Summary` under ``data["dashboard"]`` (balances, offer
counts, what the menu needs), not the API's whole response, so a session stays small. Lists of
offers are fetched when a sub-flow needs them and stored as ``(id, title)`` rows, shown a page
at a time (:func:`fsm.paged`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import msgspec

from flows.credex.api import Account, ApiResponseError, Dashboard, Offer
from fsm import Option, Page, Reply, choices, paged

#: The last row of every page of an offer list.
BACK = Option("back", "Back to menu")


class Summary(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What the menu needs from the dashboard, stored under data["dashboard"] as an array in
    field order (compact: no field names in every session)."""

    member_id: str
    firstname: str
    handle: str
    tier: int
    account_id: str
    account_name: str
    balances: tuple[str, ...]
    net: str
    pending_in: int
    pending_out: int

    @classmethod
    def of(cls, dashboard: Dashboard) -> Summary:
        member = dashboard.member
        account = owned_account(dashboard)
        return cls(
            member_id=member.member_id,
            firstname=member.firstname,
            handle=member.member_handle,
            tier=member.member_tier,
            account_id=account.account_id,
            account_name=account.account_name,
            balances=account.balance_data.secured_net_balances_by_denom,
            net=account.balance_data.net_credex_assets_in_default_denom,
            pending_in=len(account.pending_in),
            pending_out=len(account.pending_out),
        )

    def stored(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


def owned_account(dashboard: Dashboard) -> Account:
    """The member's own account (the first owned one), or ApiResponseError if there is none."""
    owned = [a for a in dashboard.accounts if a.is_owned_account] or list(dashboard.accounts)
    if not owned:
        raise ApiResponseError("getMemberDashboardByPhone", "the dashboard lists no account")
    return owned[0]


def summary_in(data: Mapping[str, Any]) -> Summary | None:
    """The stored summary, or None when absent or written by an older release (refetch it)."""
    raw = data.get("dashboard")
    if raw is None:
        return None
    try:
        return msgspec.convert(raw, Summary)
    except msgspec.ValidationError:
        return None


def menu_options(summary: Summary) -> list[Option]:
    """The options that apply to this member now, with counts."""
    options = [Option("offer", "Offer credex")]
    if summary.pending_in:
        options.append(Option("accept", f"Accept offers ({summary.pending_in})"))
        options.append(Option("decline", f"Decline offers ({summary.pending_in})"))
    if summary.pending_out:
        options.append(Option("cancel", f"Cancel my offers ({summary.pending_out})"))
    if summary.tier <= 2:
        options.append(Option("upgrade", "Upgrade membership"))
    options.append(Option("ledger", "My ledger"))
    options.append(Option("statement", "My statement"))
    return options


@functools.lru_cache(maxsize=4096)
def menu_reply(summary: Summary) -> Reply:
    """The menu for ``summary``: built once per distinct summary (a member typing at the menu
    sees the same one message after message; Summary and Reply are immutable)."""
    balances = ", ".join(summary.balances) or "no balance yet"
    body = (
        f"Welcome {summary.firstname} (@{summary.handle}).\n"
        f"{summary.account_name}: {balances}. Net: {summary.net}.\n"
        "What would you like to do?"
    )
    return choices(body, menu_options(summary))


def offer_rows(dashboard: Dashboard, which: str) -> list[dict[str, str]]:
    """Rows for the accept/decline list (incoming offers) or the cancel list (outgoing), as
    stored in ``data["offers"]``: the credex id and the title the member picks."""
    account = owned_account(dashboard)
    offers: tuple[Offer, ...] = account.pending_out if which == "cancel" else account.pending_in
    word = "to" if which == "cancel" else "from"
    return [
        {
            "id": o.credex_id,
            "title": f"{o.formatted_initial_amount} {word} @{o.counterparty_handle}",
        }
        for o in offers
    ]


def offer_list(rows: list[dict[str, str]] | tuple[Any, ...], which: str, page: int = 0) -> Page:
    """Page ``page`` of the offer list: up to 9 offers then "Back to menu", or with more
    offers, 8 and a "More…" row (kept as ``data["offers_page"]``)."""
    verb = {"accept": "accept", "decline": "decline", "cancel": "cancel"}[which]
    return paged(f"Which offer do you want to {verb}?", rows, page, extra=[BACK])
