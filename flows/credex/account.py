"""The account stage: upgrade the membership, and read the ledger page by page.

Upgrade: ``upgrade`` (confirm "$1 per 28 days") -> ``subscribe`` (action: createRecurring) ->
menu. Ledger: ``ledger`` shows ``LEDGER_PAGE`` settled credexes at a time, with next/previous.
Statement (from the menu): the whole ledger (up to ``STATEMENT_ROWS`` credexes) as a CSV
document, sent as plain text (WhatsApp takes no ``text/csv``), the member staying at the menu.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from flows.credex.api import ApiError, ApiResponseError, Unauthorized
from flows.credex.base import CONFIRM, CredexSteps, confirmed, maybe_sent, problem, stopped
from flows.credex.dashboard import summary_in
from fsm import (
    Context,
    Exit,
    Option,
    Outcome,
    Reply,
    action,
    buttons,
    document,
    on_enter,
    pick,
    step,
)

LEDGER_PAGE = 5
#: The most credexes a statement lists, and the page size it reads the ledger with.
STATEMENT_ROWS, STATEMENT_PAGE = 500, 50
UPGRADE = (
    "Upgrade to the tier 3 membership for $1.00 every 28 days, paid from your account? "
    "It raises how much you can offer."
)


def _left(ctx: Context) -> str:
    return stopped(ctx, "upgrade", "Upgrade cancelled.")


#: The account stage's way out: to the menu. A tapped Cancel (the upgrade's confirm) or
#: "Back to menu" (the ledger's buttons) leaves at once.
EXIT = Exit("show_menu", say=_left, unset=("ledger",), ids=("cancel", "menu"))


def ledger_reply(page: Any) -> Reply:
    """One ledger page as text, with the moves that apply as buttons (at most 3)."""
    start, rows = page["start"], page["rows"]
    if not rows:
        body = "Your ledger is empty: no settled credexes yet."
    else:
        lines = [f"{r['amount']}  {r['counterparty']}  {r['date']}" for r in rows]
        span = f"{start + 1}-{start + len(rows)}"
        body = "\n".join([f"Your ledger, newest first ({span}):", *lines])
    moves = []
    if page["more"]:
        moves.append(Option("next", "Next page"))
    if start > 0:
        moves.append(Option("previous", "Previous page"))
    moves.append(Option("menu", "Back to menu"))
    return buttons(body, moves)


class AccountSteps(CredexSteps, abstract=True):
    # -- upgrade ------------------------------------------------------------------------------
    @on_enter("account", "upgrade", blocking=False)
    def ask_upgrade(self, ctx: Context) -> list[Reply]:
        return [CONFIRM.with_body(UPGRADE)]

    @step("account", "upgrade", blocking=False)
    def upgrade(self, ctx: Context) -> Outcome:
        answer = confirmed(ctx.text)
        if answer is None:
            return ctx.stay("Please choose *Confirm* or *Cancel*.", *self.ask_upgrade(ctx))
        if not answer:  # the stage's way out, which says so honestly after a timeout
            return ctx.exit()
        return ctx.stay(step="subscribe")

    @action("account", "subscribe")
    def subscribe(self, ctx: Context) -> Outcome:
        summary = summary_in(ctx.data)
        if summary is None:
            return self.to_menu(ctx, "Please try the upgrade again from the menu.", refresh=True)
        try:
            self.api.create_recurring(
                summary.account_id, token=ctx.token or "", idempotency_key=ctx.idempotency_key
            )
        except Unauthorized:
            return ctx.reauth("Please sign in again; your upgrade is kept and made after that.")
        except ApiResponseError as exc:
            return self.to_menu(ctx, problem(exc), refresh=True)
        except ApiError as exc:
            if exc.status == 409:
                return self.to_menu(ctx, "You already have the tier 3 membership.", refresh=True)
            if exc.status < 500:  # refused: nothing happened
                return ctx.stay(problem(exc), step="upgrade")
            return ctx.retry_later(maybe_sent(exc), step="upgrade")
        return self.to_menu(
            ctx, "Done: you are now a tier 3 member ($1.00 every 28 days).", refresh=True
        )

    # -- statement ----------------------------------------------------------------------------
    def send_statement(self, ctx: Context, menu: Reply) -> Outcome:
        """From the menu: the ledger as a CSV document, then the menu again."""
        try:
            rows = self.statement_rows(ctx)
        except Unauthorized:
            return ctx.reauth()
        except ApiError as exc:
            return ctx.stay(problem(exc), menu)
        if not rows:
            return ctx.stay("Your ledger is empty: no settled credexes yet.", menu)
        day = _today(ctx.now)
        statement = document(
            statement_csv(rows),
            filename=f"credex-statement-{day}.csv",
            mime_type="text/plain",
            caption=f"Your Credex statement: {_credexes(len(rows))}, newest first.",
        )
        return ctx.stay(statement, menu)

    def statement_rows(self, ctx: Context) -> list[dict[str, str]]:
        """Every settled credex, newest first, up to ``STATEMENT_ROWS`` (ApiError when the
        API fails: the caller says so)."""
        rows: list[dict[str, str]] = []
        while len(rows) < STATEMENT_ROWS:
            page = self.ledger_page(ctx, len(rows), STATEMENT_PAGE)
            rows += page["rows"]
            if not page["more"] or not page["rows"]:
                break
        return rows[:STATEMENT_ROWS]

    # -- ledger -------------------------------------------------------------------------------
    def ledger_page(self, ctx: Context, start: int, size: int = LEDGER_PAGE) -> dict[str, Any]:
        """Fetch one page; raises ApiError (the caller says so and keeps the member where
        they are)."""
        summary = summary_in(ctx.data)
        if summary is None:
            summary = self.refreshed_summary(ctx)
        page = self.api.get_ledger(summary.account_id, start, size, token=ctx.token or "")
        rows = [
            {"amount": e.formatted_amount, "counterparty": e.counterparty, "date": e.timestamp[:10]}
            for e in page.entries
        ]
        return {"start": start, "rows": rows, "more": page.has_more}

    def open_ledger(self, ctx: Context) -> Outcome:
        """From the menu: the first page of the ledger."""
        try:
            page = self.ledger_page(ctx, 0)
        except Unauthorized:
            return ctx.reauth()
        except ApiError as exc:
            return ctx.stay(problem(exc))
        return ctx.go("open_account", step="ledger", option="ledger", set={"ledger": page})

    @on_enter("account", "ledger", blocking=False)
    def show_ledger(self, ctx: Context) -> list[Reply]:
        return [ledger_reply(ctx.data["ledger"])]

    @step("account", "ledger")
    def ledger(self, ctx: Context) -> Outcome:
        page = ctx.data["ledger"]
        shown = ledger_reply(page)
        chosen = pick(shown, ctx.text)
        if chosen is not None and chosen.id == "menu":  # its number typed
            return self.to_menu(ctx, unset=["ledger"])
        if chosen is None:
            return ctx.stay("Please choose one of the buttons.", shown)
        start = page["start"] + (LEDGER_PAGE if chosen.id == "next" else -LEDGER_PAGE)
        try:
            new_page = self.ledger_page(ctx, max(0, start))
        except Unauthorized:
            return ctx.reauth()
        except ApiError as exc:
            return ctx.stay(problem(exc), shown)
        return ctx.stay(ledger_reply(new_page), set={"ledger": new_page})


def statement_csv(rows: list[dict[str, str]]) -> bytes:
    """The statement's bytes: a header, then one line per credex (UTF-8, CRLF as CSV wants).

    >>> statement_csv([{"date": "2026-12-01", "amount": "+20.00 USD", "counterparty": "Bob"}])
    b"date,amount,counterparty\\r\\n2026-12-01,'+20.00 USD,Bob\\r\\n"
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=("date", "amount", "counterparty"))
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return out.getvalue().encode()


def _cell(value: str) -> str:
    """A value a spreadsheet shows as text, never runs as a formula (a counterparty's name is
    another member's words; an amount starts with + or -): ``'`` before = + - @ tab CR.

    >>> _cell("=HYPERLINK(1)"), _cell("+20.00 USD"), _cell("Bob")
    ("'=HYPERLINK(1)", "'+20.00 USD", 'Bob')
    """
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _credexes(count: int) -> str:
    return f"{count} settled credex" + ("" if count == 1 else "es")


def _today(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))
