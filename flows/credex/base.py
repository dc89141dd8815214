"""What every Credex sub-flow shares: the API client, the dashboard refresh, leaving to the menu,
and turning API errors into replies. The sub-flows (:mod:`.offers`, :mod:`.account`,
:mod:`.registration`) are abstract flows that :class:`~flows.credex.flow.CredexBot` combines.
"""

from __future__ import annotations

from collections.abc import Iterable

from flows.credex.api import ApiError, ApiResponseError, CredexApi, Dashboard
from flows.credex.dashboard import Summary, summary_in
from fsm import Context, Flow, Outcome, Reply, TemplateSpec, buttons, template
from fsm.step import ReplyLike
from fsm.timers import seconds

UNREACHABLE = "Credex is not reachable right now. Please try again in a moment."
UNCLEAR = (
    "Credex answered in a way this bot does not understand, so it cannot tell whether that "
    "worked. Please check the menu before trying again."
)
CONFIRM = buttons("Confirm?", [("confirm", "Confirm"), ("cancel", "Cancel")])
YES = frozenset({"yes", "y", "ok", "okay", "sure"})
NO = frozenset({"no", "n", "nope"})

#: At a confirm step where a draft waits (an offer, a choice of offer, a registration): a
#: reminder after this long without an answer (a message there pushes it back) ...
REMIND_AFTER = "10m"
#: ... and the draft dropped this long after arriving (20 minutes after the reminder). That is
#: the session's own length (30 minutes), so these timers extend the session to fire.
DROP_AFTER = "30m"
STILL_THERE = "Still there?"

#: The message templates the bot sends when a member's 24-hour window is closed (created and
#: approved in Meta's dashboard, English): an offer received ("{{1}} (@{{2}}) offered you
#: {{3}}." with Accept and Decline), and a confirm step's reminder ("Still there? {{1}}" with
#: the step's two buttons).
OFFER_RECEIVED_TEMPLATE = TemplateSpec("credex_offer_received", "en", body_params=3, buttons=2)
REMINDER_TEMPLATE = TemplateSpec("credex_reminder", "en", body_params=1, buttons=2)
TEMPLATES = (OFFER_RECEIVED_TEMPLATE, REMINDER_TEMPLATE)


def reminder(question: Reply) -> Reply:
    """A confirm step's reminder: ``question`` with "Still there?" in front, and the
    ``credex_reminder`` template (its two buttons' ids as the payloads) for a closed window."""
    said = question.with_body(f"{STILL_THERE} {question.body}")
    spec = REMINDER_TEMPLATE
    return template(
        spec.name,
        spec.language,
        params=[" ".join(question.body.split())],
        buttons=[option.id for option in question.options],
        fallback=said,
    )


def problem(exc: ApiError) -> str:
    """A short reply for an API error: the API's own words for a refused request, a general
    message when the service failed (its details belong in logs, not in a chat)."""
    if isinstance(exc, ApiResponseError):
        return UNCLEAR
    if exc.status >= 500:
        return UNREACHABLE
    return f"Credex could not do that: {exc.message}."


def maybe_sent(exc: ApiError) -> str:
    """The reply to a failure that may still have been applied (a timeout, a 5xx): the bot
    does not know, so it says so, and confirming again retries the same request."""
    if exc.status >= 500 or isinstance(exc, ApiResponseError):
        return (
            "Credex is not reachable right now, so this may or may not have gone through. "
            "Confirm again to retry: it will not be applied twice."
        )
    return f"{problem(exc)} Confirm again to retry: it will not be applied twice."


def stopped(ctx: Context, option: str, said: str) -> str:
    """What a sub-flow's declared way out says: ``said`` when the member leaves the ``option``
    sub-flow, nothing for another, and, after a failure that may have been applied (a kept
    idempotency key: ``ctx.uncertain``), that the last attempt may still have gone through."""
    if ctx.uncertain:
        return "Stopped. Your last attempt may still have gone through: check the menu."
    return said if ctx.option == option else ""


def signed_in(ctx: Context) -> bool:
    """Whether the member holds a token that has not expired (an event or a timer may come
    when it has: the engine sends no one to sign in for those)."""
    expires = ctx.token_expires_at
    return ctx.token is not None and (expires is None or expires > ctx.now)


def dropped(
    ctx: Context,
    what: str,
    then: str,
    maybe: str = "Your last attempt may still have gone through: check the menu.",
) -> str:
    """What a confirm step's ``drop`` timer says: ``what`` was dropped, and ``then``; or,
    after a failure that may have been applied (``ctx.uncertain``), ``maybe``: the last
    attempt may still have gone through."""
    minutes = round(seconds(DROP_AFTER) / 60)
    return f"{what} was dropped after {minutes} minutes without an answer. " + (
        maybe if ctx.uncertain else then
    )


def confirmed(text: str) -> bool | None:
    """True for Confirm (1, "confirm", "yes"), False for Cancel (2, "cancel", "no"), else None."""
    folded = " ".join(text.split()).casefold()
    if folded in {"1", "confirm"} | YES:
        return True
    if folded in {"2", "cancel"} | NO:
        return False
    return None


class CredexSteps(Flow, abstract=True):
    """Shared helpers of the Credex sub-flows."""

    api: CredexApi

    def fetch_dashboard(self, ctx: Context) -> Dashboard:
        return self.api.get_member_dashboard_by_phone(ctx.user_key, token=ctx.token or "")

    def refreshed_summary(self, ctx: Context) -> Summary:
        return Summary.of(self.fetch_dashboard(ctx))

    def to_menu(
        self,
        ctx: Context,
        *replies: ReplyLike,
        unset: Iterable[str] = (),
        refresh: bool = False,
    ) -> Outcome:
        """Back to the menu, dropping this sub-flow's data (``unset``: deleted, so it cannot
        come back). With ``refresh`` the dashboard is reloaded first; if that fails the menu
        shows the last known one and says so."""
        summary: dict[str, object] = {}
        said = list(replies)
        if refresh:
            try:
                summary = {"dashboard": Summary.of(self.fetch_dashboard(ctx)).stored()}
            except ApiError:
                if summary_in(ctx.data) is not None:
                    said.append("(Your balances may be out of date; send *menu* to refresh.)")
        return ctx.go("show_menu", *said, set=summary, unset=unset)

    def drop_draft(self, ctx: Context, said: str, unset: Iterable[str]) -> Outcome:
        """A confirm step's ``drop`` timer: back to the menu with the draft (``unset``)
        deleted. The menu needs a valid token: with an expired one the member is sent to sign
        in instead, the draft kept for when they are back (its timers armed again there)."""
        if not signed_in(ctx):
            return ctx.reauth(
                "Your sign-in has expired. What you were confirming is kept: sign in to finish it."
            )
        return self.to_menu(ctx, said, unset=unset)
