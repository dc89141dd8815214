"""The credex stage: make an offer; accept, decline or cancel pending ones.

Offer: ``amount`` -> ``recipient`` -> ``confirm`` -> ``create`` (action: createCredex) -> menu.
Accept / decline / cancel: ``pick`` (a list of offers) -> ``review`` ("Accept $25.00 from Bob?
Confirm / Back": money never moves on one tap) -> ``settle`` (action) -> the list again, or the
menu when none are left. Answers are stored under step ids (``amount``, ``recipient``,
``offers``, ``offers_page``, ``chosen``) and deleted when the sub-flow ends, so a cancelled offer
cannot come back.

The way out (*cancel*, *menu*, *stop*, ...) is the stage's declared :data:`EXIT`, applied by the
engine before any step here runs; at the recipient step, where any word may be a handle, the
engine asks first. A call that failed but may have been applied (a timeout, a 5xx) sends the
member back to confirm with ``ctx.retry_later``: confirming again reuses the idempotency key.

Idle at ``confirm`` or ``review`` (a draft waits there): after 10 minutes without an answer a
reminder asks again, with the buttons; 30 minutes after arriving (20 after the reminder) the
draft is dropped and the member is back at the menu. A message at the step pushes both back.
"""

from __future__ import annotations

from typing import Any

from flows.credex.api import ApiError, ApiResponseError, Unauthorized
from flows.credex.base import (
    CONFIRM,
    DROP_AFTER,
    REMIND_AFTER,
    UNREACHABLE,
    CredexSteps,
    confirmed,
    dropped,
    maybe_sent,
    problem,
    reminder,
    stopped,
)
from flows.credex.dashboard import BACK, Summary, offer_list, offer_rows, summary_in
from flows.credex.inputs import Amount, parse_amount, parse_handle, unknown_denomination
from fsm import (
    Context,
    Exit,
    Outcome,
    Page,
    Reply,
    action,
    buttons,
    on_enter,
    pick,
    step,
    timeout,
)

OFFER_KEYS = ("amount", "recipient")
#: Statuses that say the request was refused and nothing happened (a retry is a new request).
FINAL = frozenset({400, 403, 404, 422})
LIST_KEYS = ("offers", "offers_page", "chosen")
VERB = {"accept": "Accept", "decline": "Decline", "cancel": "Cancel"}
#: Confirm, or back to the list ("pick" is no exit id: Back returns to the offers, not the menu).
REVIEW = buttons("Confirm?", [("confirm", "Confirm"), ("pick", "Back to list")])
DONE = {"accept": "Accepted", "decline": "Declined", "cancel": "Cancelled"}
NONE_LEFT = {
    "accept": "You have no incoming offers.",
    "decline": "You have no incoming offers.",
    "cancel": "You have no outgoing offers.",
}
ASK_AMOUNT = (
    "How much do you want to offer? For example *25*, *12.50* or *100 ZWG* "
    "(USD unless you name CXX, XAU, CAD or ZWG). Send *cancel* to stop."
)


def _left(ctx: Context) -> str:
    return stopped(ctx, "offer", "Offer cancelled.")


#: The credex stage's way out: to the menu, this sub-flow's data deleted. A tapped Cancel
#: (the confirm buttons) or "Back to menu" (the offer lists) leaves at once.
EXIT = Exit(
    "show_menu",
    say=_left,
    ask="Stop the offer?",
    unset=(*OFFER_KEYS, *LIST_KEYS),
    ids=("cancel", "back"),
)


def _amount(data: Any) -> Amount:
    raw = data["amount"]
    return Amount(raw["value"], raw["denom"])


class OfferSteps(CredexSteps, abstract=True):
    # -- offer: amount -----------------------------------------------------------------------
    @on_enter("credex", "amount", blocking=False)
    def ask_amount(self, ctx: Context) -> list[str]:
        return [ASK_AMOUNT]

    @step("credex", "amount", blocking=False)
    def amount(self, ctx: Context) -> Outcome:
        amount = parse_amount(ctx.text)
        if amount is None:
            code = unknown_denomination(ctx.text)
            why = f"*{code}* is not a denomination we know." if code else "That is not an amount."
            return ctx.stay(f"{why} {ASK_AMOUNT}")
        return ctx.stay(
            step="recipient", set={"amount": {"value": amount.value, "denom": amount.denom}}
        )

    # -- offer: recipient ----------------------------------------------------------------------
    @on_enter("credex", "recipient", blocking=False)
    def ask_recipient(self, ctx: Context) -> list[str]:
        return [
            f"Who should receive {_amount(ctx.data)}? Send their Credex handle, like *bob*. "
            "(Send *cancel* to stop.)"
        ]

    @step("credex", "recipient", free_text=True)  # a handle may be any word, even "cancel"
    def recipient(self, ctx: Context) -> Outcome:
        amount = _amount(ctx.data)
        handle = parse_handle(ctx.text)
        if handle is None:
            return ctx.stay(
                "A handle is letters, digits and underscores, at most 30. "
                f"Who should receive {amount}? (Send *cancel* to stop.)"
            )
        summary = summary_in(ctx.data)
        if summary is not None and handle == summary.handle.lower():
            return ctx.stay(f"That is your own handle. Who should receive {amount}?")
        try:
            account = self.api.get_account_by_handle(handle, token=ctx.token or "")
        except Unauthorized:
            return ctx.reauth()
        except ApiError as exc:
            if exc.status == 404:
                return ctx.stay(
                    f"No member has the handle @{handle}. Check it and send it again; "
                    f"your amount ({amount}) is kept. (Send *cancel* to stop.)"
                )
            return ctx.stay(f"{problem(exc)} Send the handle again when you are ready.")
        if summary is not None and account.account_id == summary.account_id:
            return ctx.stay(f"That is your own account. Who should receive {amount}?")
        chosen = {
            "account_id": account.account_id,
            "name": account.account_name,
            "handle": account.account_handle,
        }
        return ctx.stay(step="confirm", set={"recipient": chosen})

    # -- offer: confirm and create -------------------------------------------------------------
    @staticmethod
    def offer_question(ctx: Context) -> str:
        to = ctx.data["recipient"]
        summary = summary_in(ctx.data)
        source = summary.account_name if summary else "your account"
        return f"Offer {_amount(ctx.data)} from {source} to {to['name']} (@{to['handle']})?"

    @on_enter("credex", "confirm", blocking=False)
    def ask_confirm(self, ctx: Context) -> list[Reply]:
        return [CONFIRM.with_body(self.offer_question(ctx))]

    @timeout("credex", "confirm", after=REMIND_AFTER)
    def remind_offer(self, ctx: Context) -> Outcome:
        return ctx.stay(reminder(CONFIRM.with_body(self.offer_question(ctx))))

    @timeout("credex", "confirm", after=DROP_AFTER, extends_session=True)
    def drop_offer(self, ctx: Context) -> Outcome:
        what = f"Your offer of {_amount(ctx.data)} to @{ctx.data['recipient']['handle']}"
        return self.drop_draft(ctx, dropped(ctx, what, "Nothing was sent."), OFFER_KEYS)

    @step("credex", "confirm", blocking=False)
    def confirm(self, ctx: Context) -> Outcome:
        answer = confirmed(ctx.text)
        if answer is None:
            return ctx.stay("Please choose *Confirm* or *Cancel*.", *self.ask_confirm(ctx))
        if not answer:  # the stage's way out, which says so honestly after a timeout
            return ctx.exit()
        return ctx.stay(step="create")

    @action("credex", "create")
    def create(self, ctx: Context) -> Outcome:
        summary = summary_in(ctx.data)
        amount, to = _amount(ctx.data), ctx.data["recipient"]
        if summary is None:  # cannot happen from the menu; refuse rather than guess an account
            return self.to_menu(ctx, UNREACHABLE, unset=OFFER_KEYS, refresh=True)
        try:
            self.api.create_credex(
                summary.account_id,
                to["account_id"],
                amount.denom,
                amount.value,
                token=ctx.token or "",
                idempotency_key=ctx.idempotency_key,
            )
        except Unauthorized:
            return ctx.reauth("Please sign in again; your offer is kept and sent after that.")
        except ApiResponseError as exc:
            return self.to_menu(ctx, problem(exc), unset=OFFER_KEYS, refresh=True)
        except ApiError as exc:
            if exc.status in FINAL:  # refused for good: a new attempt is a new request
                return ctx.stay(problem(exc), step="confirm")
            # Failed, timed out or throttled: the offer may or may not exist. Confirming again
            # retries with the same key, so it is created at most once.
            return ctx.retry_later(maybe_sent(exc), step="confirm")
        return self.to_menu(
            ctx, f"Offer of {amount} sent to @{to['handle']}.", unset=OFFER_KEYS, refresh=True
        )

    # -- accept / decline / cancel ----------------------------------------------------------------
    @on_enter("credex", "pick", blocking=False)
    def show_offers(self, ctx: Context) -> list[Reply]:
        return [offer_list(ctx.data["offers"], ctx.option, ctx.data.get("offers_page", 0)).reply]

    @step("credex", "pick", blocking=False)
    def pick_offer(self, ctx: Context) -> Outcome:
        listed = offer_list(ctx.data["offers"], ctx.option, ctx.data.get("offers_page", 0))
        chosen = listed.pick(ctx.text)
        if isinstance(chosen, Page):  # "More…": the next page of offers
            return ctx.stay(chosen.reply, set={"offers_page": chosen.number})
        if chosen == BACK:  # its number typed (tapped, its id is the stage's way out)
            return self.to_menu(ctx, unset=LIST_KEYS)
        if chosen is None:
            return ctx.stay("Please choose an offer from the list.", listed.reply)
        return ctx.stay(step="review", set={"chosen": {"id": chosen.id, "title": chosen.title}})

    @on_enter("credex", "review", blocking=False)
    def ask_review(self, ctx: Context) -> list[Reply]:
        return [REVIEW.with_body(f"{VERB[ctx.option]} {ctx.data['chosen']['title']}?")]

    @timeout("credex", "review", after=REMIND_AFTER)
    def remind_review(self, ctx: Context) -> Outcome:
        question = f"{VERB[ctx.option]} {ctx.data['chosen']['title']}?"
        return ctx.stay(reminder(REVIEW.with_body(question)))

    @timeout("credex", "review", after=DROP_AFTER, extends_session=True)
    def drop_review(self, ctx: Context) -> Outcome:
        what = f"Your choice ({VERB[ctx.option]} {ctx.data['chosen']['title']})"
        then = f"Nothing was {DONE[ctx.option].lower()}."
        return self.drop_draft(ctx, dropped(ctx, what, then), LIST_KEYS)

    @step("credex", "review", blocking=False)
    def review(self, ctx: Context) -> Outcome:
        chosen = pick(REVIEW, ctx.text)
        if chosen is None and confirmed(ctx.text) is True:
            chosen = REVIEW.options[0]
        if chosen is None:
            return ctx.stay("Please choose *Confirm* or *Back to list*.", *self.ask_review(ctx))
        if chosen.id == "pick":
            return ctx.stay(step="pick", unset=["chosen"])
        return ctx.stay(step="settle")

    @action("credex", "settle")
    def settle(self, ctx: Context) -> Outcome:
        which, chosen = ctx.option, ctx.data["chosen"]
        call = {
            "accept": self.api.accept_credex,
            "decline": self.api.decline_credex,
            "cancel": self.api.cancel_credex,
        }[which]
        try:
            call(chosen["id"], token=ctx.token or "", idempotency_key=ctx.idempotency_key)
            said = f"{DONE[which]}: {chosen['title']}."
        except Unauthorized:
            return ctx.reauth()
        except ApiResponseError as exc:
            return self.to_menu(ctx, problem(exc), unset=LIST_KEYS, refresh=True)
        except ApiError as exc:
            if exc.status in FINAL - {404}:  # refused: nothing happened
                return ctx.stay(problem(exc), step="pick", unset=["chosen"])
            if exc.status not in (404, 409):  # it may have been applied: retry with the key
                return ctx.retry_later(maybe_sent(exc), step="review")
            said = "That offer is no longer pending."
        return self.back_to_list(ctx, said)

    def back_to_list(self, ctx: Context, said: str) -> Outcome:
        """The refreshed list (a data refresh never moves the member elsewhere), or the menu
        when no offers are left."""
        try:
            dashboard = self.fetch_dashboard(ctx)
            rows = offer_rows(dashboard, ctx.option)
            summary = Summary.of(dashboard).stored()
        except ApiError:
            left = [r for r in ctx.data["offers"] if r["id"] != ctx.data["chosen"]["id"]]
            rows, summary = left, dict(ctx.data.get("dashboard") or {})
        if not rows:
            return self.to_menu(ctx, said, NONE_LEFT[ctx.option], unset=LIST_KEYS, refresh=True)
        return ctx.stay(
            said, step="pick", set={"offers": rows, "dashboard": summary}, unset=["chosen"]
        )

    def open_list(self, ctx: Context, which: str) -> Outcome:
        """From the menu: fetch the current offers and show them, or say there are none."""
        try:
            dashboard = self.fetch_dashboard(ctx)
            rows = offer_rows(dashboard, which)
            summary = Summary.of(dashboard).stored()
        except Unauthorized:
            return ctx.reauth()
        except ApiError as exc:
            return ctx.stay(problem(exc))
        if not rows:
            return ctx.go("show_menu", NONE_LEFT[which], set={"dashboard": summary})
        return ctx.go(
            "open_credex",
            step="pick",
            option=which,
            set={"offers": rows, "dashboard": summary},
        )
