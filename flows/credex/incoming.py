"""Offers that arrive while the member is anywhere in the bot, and buttons that answer them
from anywhere.

The Credex API sends the receiver's bot the event ``offer_received`` (its data an
:class:`~flows.credex.api.OfferReceived`, its id the credex id; :mod:`.delivery` in-process,
``POST /events`` when served). Wherever the member is, the bot says "Alice (@alice) offered you
25.00 USD" with *Accept* and *Decline* buttons, keeps the step and its data (an offer the member
is writing stays as it is) and asks the step's question again.

The buttons are event options (:func:`fsm.event_option`): a tap applies ``offer_accept`` or
``offer_decline`` (``data={"arg": credex id}``) at whatever step the member is by then, not that
step's answer. The handler checks the offer is still pending, makes the call with an
idempotency key derived from the tap's id (the event's id: a re-delivered tap is applied once
anyway), says what happened, refreshes the menu's figures and asks the step's question again:
the step and the member's own draft are untouched. Without a valid token it says to sign in
first, and changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from flows.credex.api import (
    OFFER_RECEIVED,
    ApiError,
    ApiResponseError,
    Offer,
    OfferReceived,
    Unauthorized,
    decode_response,
)
from flows.credex.base import OFFER_RECEIVED_TEMPLATE, CredexSteps, problem, signed_in
from flows.credex.dashboard import Summary, owned_account, summary_in
from fsm import Context, Event, Outcome, Reply, buttons, event_option, on_event, template
from fsm.redaction import user_tail

log = logging.getLogger("flows.credex")

OFFER_ACCEPT = "offer_accept"
OFFER_DECLINE = "offer_decline"
#: Statuses that say the request was refused and nothing happened.
REFUSED = frozenset({400, 403, 422})
VERB = {OFFER_ACCEPT: "Accept", OFFER_DECLINE: "Decline"}
DONE = {OFFER_ACCEPT: "Accepted", OFFER_DECLINE: "Declined"}
GONE = "That offer is no longer pending: it was answered or cancelled already."
UNREADABLE = "Credex sent you a notice this bot cannot read. Check your menu for new offers."


def offer_buttons(notice: OfferReceived) -> Reply:
    """ "Alice (@alice) offered you 25.00 USD" with Accept and Decline, which work from any
    step; outside the member's 24-hour window, the ``credex_offer_received`` template with the
    same two buttons."""
    accept = event_option(OFFER_ACCEPT, notice.credex_id)
    decline = event_option(OFFER_DECLINE, notice.credex_id)
    said = buttons(str(notice), [(accept, VERB[OFFER_ACCEPT]), (decline, VERB[OFFER_DECLINE])])
    amount = f"{notice.amount:.2f} {notice.denomination}"
    spec = OFFER_RECEIVED_TEMPLATE
    params = [" ".join(notice.sender_name.split()) or "-", notice.sender_handle or "-", amount]
    return template(
        spec.name, spec.language, params=params, buttons=[accept, decline], fallback=said
    )


def _one_more_incoming(data: Any) -> dict[str, Any]:
    """The stored dashboard with one more incoming offer counted (so the menu, asked again,
    offers to accept it), or nothing when none is stored."""
    summary = summary_in(data)
    if summary is None:
        return {}
    counted = msgspec.structs.replace(summary, pending_in=summary.pending_in + 1)
    return {"dashboard": counted.stored()}


def _key(event: Event) -> str | None:
    """The idempotency key of the call a tap makes: derived from the tap's (the event's) id."""
    return None if event.id is None else f"{event.name}:{event.id}"


class IncomingSteps(CredexSteps, abstract=True):
    @on_event(OFFER_RECEIVED, starts=True)
    def offer_received(self, ctx: Context) -> Outcome:
        assert ctx.event is not None
        try:
            notice = decode_response(OFFER_RECEIVED, dict(ctx.event.data), OfferReceived)
        except ApiResponseError as exc:  # says which field, never a value
            log.warning("user %s: %s", user_tail(ctx.user_key), exc.message)
            return ctx.stay(UNREADABLE)
        return ctx.stay(offer_buttons(notice), set=_one_more_incoming(ctx.data))

    @on_event(OFFER_ACCEPT, side_effects=True)
    def offer_accept(self, ctx: Context) -> Outcome:
        return self.answer_offer(ctx)

    @on_event(OFFER_DECLINE, side_effects=True)
    def offer_decline(self, ctx: Context) -> Outcome:
        return self.answer_offer(ctx)

    def answer_offer(self, ctx: Context) -> Outcome:
        """Accept or decline (the event's name) the offer a tapped button names, from the step
        the member is at; the step and its data stay as they are."""
        event = ctx.event
        assert event is not None
        verb = VERB[event.name]
        sign_in = (
            f"To {verb.lower()} the offer, sign in first (send *hi*), then tap *{verb}* again."
        )
        if not signed_in(ctx):
            return ctx.stay(sign_in)
        try:
            offer = self._pending_in(ctx, str(event.data.get("arg", "")))
        except Unauthorized:
            return ctx.stay(sign_in)
        except ApiError as exc:
            return ctx.stay(problem(exc))
        if offer is None:
            return ctx.stay(GONE)
        call = self.api.accept_credex if event.name == OFFER_ACCEPT else self.api.decline_credex
        try:
            call(offer.credex_id, token=ctx.token or "", idempotency_key=_key(event))
        except Unauthorized:
            return ctx.stay(sign_in)
        except ApiError as exc:
            return ctx.stay(self._not_answered(exc))
        title = f"{offer.formatted_initial_amount} from @{offer.counterparty_handle}"
        return ctx.stay(f"{DONE[event.name]}: {title}.", set=self._refreshed(ctx))

    def _pending_in(self, ctx: Context, credex_id: str) -> Offer | None:
        """The member's incoming offer ``credex_id`` if it is still pending (raises ApiError)."""
        account = owned_account(self.fetch_dashboard(ctx))
        return next((o for o in account.pending_in if o.credex_id == credex_id), None)

    @staticmethod
    def _not_answered(exc: ApiError) -> str:
        if isinstance(exc, ApiResponseError):
            return problem(exc)
        if exc.status in (404, 409):
            return GONE
        if exc.status in REFUSED:
            return problem(exc)
        return (  # a timeout, a 5xx: it may have been applied
            "Credex is not reachable right now, so this may or may not have gone through. "
            "Check your menu before trying again."
        )

    def _refreshed(self, ctx: Context) -> dict[str, Any]:
        """The dashboard as it is now, for the menu's figures; nothing if it cannot be read
        (the menu refreshes when the member asks for it)."""
        try:
            return {"dashboard": Summary.of(self.fetch_dashboard(ctx)).stored()}
        except ApiError:
            return {}
