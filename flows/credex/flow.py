"""The reference Credex bot, declared as a flow (the stage graph below is the reference one).

Stages and the moves between them are exactly the reference graph::

    init -> auth | menu | registration      auth -> menu | registration
    menu -> credex | account | auth | menu   credex | account | registration -> menu

Login is by the sender's phone number (the user key). The sub-flows live in their own modules
and are combined here: :mod:`.offers` (the credex stage), :mod:`.account` (upgrade, ledger),
:mod:`.registration`, and :mod:`.incoming` (offers that arrive wherever the member is, and the
buttons that answer them from any step). API calls that change something are actions
(:func:`fsm.action`): they run after the state that expects their outcome is saved, once, with
an idempotency key.
"""

from __future__ import annotations

import msgspec

from flows.credex.account import EXIT as ACCOUNT_EXIT
from flows.credex.account import AccountSteps
from flows.credex.api import ApiError, CredexApi, LoginResult, MemberNotFound, Unauthorized
from flows.credex.base import TEMPLATES, UNREACHABLE, problem
from flows.credex.dashboard import Summary, menu_reply, summary_in
from flows.credex.directives import directives
from flows.credex.fake import FakeCredexApi
from flows.credex.incoming import IncomingSteps
from flows.credex.inputs import is_greeting
from flows.credex.offers import EXIT as CREDEX_EXIT
from flows.credex.offers import OfferSteps
from flows.credex.registration import EXIT as REGISTRATION_EXIT
from flows.credex.registration import RegistrationSteps
from fsm import Context, Login, Outcome, Reply, Snapshot, Stage, on_enter, pick, step
from fsm.transcript import Directive


def _from_v1(snap: Snapshot) -> Snapshot:
    """Version 1 had placeholder "soon" steps where the sub-flows are now."""
    stage, step_id, option = snap.stage, snap.step, snap.option
    if step_id == "soon" and stage in ("credex", "account"):
        stage, step_id, option = "menu", "dashboard", ""  # the menu offers the real thing now
    elif step_id == "soon" and stage == "registration":
        step_id = "welcome"
    resume = snap.resume
    if resume is not None and resume.step == "soon":
        resume = None  # nothing to resume: the user lands on the menu after signing in
    return msgspec.structs.replace(snap, stage=stage, step=step_id, option=option, resume=resume)


def _from_v2(snap: Snapshot) -> Snapshot:
    """Version 3 added the ``review`` step (accept / decline / cancel ask first) and declared
    ways out; every version 2 step is still there. Version 2 kept a timed-out offer's key in
    ``data["retry_key"]``; version 3 keeps it where the engine does (``pending``, at the
    confirm step), so confirming again still reuses it. The version also tells a version 2
    deploy that a session at ``review`` is a newer deploy's, not corrupt."""
    data = dict(snap.data)
    key = data.pop("retry_key", None)
    if key is None:
        return snap
    kept = str(key) if (snap.stage, snap.step) == ("credex", "confirm") else snap.pending
    return msgspec.structs.replace(snap, data=data, pending=kept)


def _from_v3(snap: Snapshot) -> Snapshot:
    """Version 4 added timers at the confirm steps (``credex.confirm``, ``credex.review``,
    ``registration.confirm``: a reminder after 10 minutes, the draft dropped after 30) and the
    events ``offer_received``, ``offer_accept`` and ``offer_decline``. Nothing a version 3
    session holds changes: a session waiting at a confirm step has no timer armed (timers arm
    when the conversation arrives at their step) until the member's next message there arms
    them. The version tells a version 3 deploy that a session with timers armed, or with an
    offer's buttons on screen, is a newer deploy's."""
    return snap


class CredexBot(IncomingSteps, OfferSteps, AccountSteps, RegistrationSteps):
    """The Credex WhatsApp bot: login, the dashboard menu and every sub-flow."""

    name = "credex"
    version = 4
    # The message templates it sends when a member's 24-hour window is closed.
    templates = TEMPLATES
    initial = "init"
    auth_stage = "auth"
    # The greeting step reads the first message ("hi" signs the member in by phone).
    takes_first_message = True
    # Personal data, hidden by fsm inspect, the simulator's panel and every repr (kept by
    # backups): a new member's name; the member's dashboard (name, handle, account, balances)
    # and ledger (counterparties, amounts, dates); the offers listed, the one chosen and an
    # offer's recipient (counterparties' names and handles). Not ``amount``: the number and
    # currency of an offer being written names no one, and shows where an offer stopped.
    sensitive = (
        "first_name",
        "last_name",
        "photo",
        "dashboard",
        "ledger",
        "offers",
        "chosen",
        "recipient",
    )
    stages = (
        Stage("init", ("greeting",)),
        Stage("auth", ("login",)),
        Stage("menu", ("dashboard",), protected=True),
        Stage(
            "credex",
            ("amount", "recipient", "confirm", "create", "pick", "review", "settle"),
            protected=True,
            exit=CREDEX_EXIT,
        ),
        Stage("account", ("upgrade", "subscribe", "ledger"), protected=True, exit=ACCOUNT_EXIT),
        Stage(
            "registration",
            ("welcome", "first_name", "last_name", "photo", "confirm", "onboard"),
            exit=REGISTRATION_EXIT,
        ),
    )
    transitions = (
        # trigger       source(s)                                                 dest
        ("sign_in", ["init", "menu"], "auth"),
        ("show_menu", ["init", "auth", "menu", "credex", "account", "registration"], "menu"),
        ("register", ["init", "auth"], "registration"),
        ("open_credex", "menu", "credex"),
        ("open_account", "menu", "account"),
    )
    migrations = {1: _from_v1, 2: _from_v2, 3: _from_v3}

    def __init__(self, api: CredexApi) -> None:
        self.api = api
        # The handlers block only where the API client does (an HTTP client); with a client
        # that never blocks (the in-memory fake) AsyncEngine runs them on the loop.
        self.blocking = bool(getattr(api, "blocking", True))

    def __repr__(self) -> str:
        return f"CredexBot(api={type(self.api).__name__})"

    def transcript_directives(self) -> dict[str, Directive]:
        """``! api ...`` (:mod:`flows.credex.directives`) when the API is the in-memory fake."""
        if isinstance(self.api, FakeCredexApi):
            return directives(self.api)
        return {}

    def close(self) -> None:
        """Close the API client, if it holds connections (the HTTP client does)."""
        close = getattr(self.api, "close", None)
        if callable(close):
            close()

    # -- init: a greeting signs the member in by phone ---------------------------------------
    @step("init", "greeting")
    def greeting(self, ctx: Context) -> Outcome:
        if not is_greeting(ctx.text):
            return ctx.stay("Hi! Send *hi* to start.")
        return self._sign_in(
            ctx, unknown=ctx.go("register"), unreachable=ctx.go("sign_in", UNREACHABLE)
        )

    # -- auth: (re-)login by phone, then back where the user was -------------------------------
    @on_enter("auth", "login", blocking=False)
    def prompt_login(self, ctx: Context) -> list[str]:
        return ["Please reply with anything to sign in to Credex."]

    @step("auth", "login")
    def login(self, ctx: Context) -> Outcome:
        return self._sign_in(ctx, unknown=ctx.go("register"), unreachable=ctx.stay(UNREACHABLE))

    def _sign_in(self, ctx: Context, *, unknown: Outcome, unreachable: Outcome) -> Outcome:
        """Log in by phone; on success go to the menu (or back to where a re-login began).
        The dashboard is refreshed on the way, but a refresh never picks the stage: a resume
        point, when there is one, does."""
        try:
            result: LoginResult = self.api.login(ctx.user_key)
            summary = Summary.of(result.dashboard)
        except MemberNotFound:
            return unknown
        except ApiError:
            return unreachable
        return ctx.go(
            "show_menu",
            auth=Login(result.token),
            set={"dashboard": summary.stored()},
            resume=True,
        )

    # -- menu: the dashboard and the options that apply ---------------------------------------
    @on_enter("menu", "dashboard", blocking=False)
    def show_dashboard(self, ctx: Context) -> list[Reply]:
        summary = summary_in(ctx.data)
        if summary is None:
            return [Reply("Your dashboard is loading; reply *menu* to refresh it.")]
        return [menu_reply(summary)]

    @step("menu", "dashboard")
    def dashboard(self, ctx: Context) -> Outcome:
        summary = summary_in(ctx.data)
        if is_greeting(ctx.text) or summary is None:
            return self._refresh(ctx)
        shown = menu_reply(summary)
        chosen = pick(shown, ctx.text)
        if chosen is None:
            return ctx.stay("Please choose one of the options (its number or its name).", shown)
        if chosen.id == "offer":
            return ctx.go("open_credex", step="amount", option="offer")
        if chosen.id in ("accept", "decline", "cancel"):
            return self.open_list(ctx, chosen.id)
        if chosen.id == "upgrade":
            return ctx.go("open_account", step="upgrade", option="upgrade")
        if chosen.id == "statement":
            return self.send_statement(ctx, shown)
        return self.open_ledger(ctx)

    def _refresh(self, ctx: Context) -> Outcome:
        try:
            summary = self.refreshed_summary(ctx)
        except Unauthorized:
            return ctx.reauth()
        except ApiError as exc:
            return ctx.stay(problem(exc))
        return ctx.go("show_menu", set={"dashboard": summary.stored()})
