"""The reference Credex bot, declared as a flow (see REFERENCE_BOT.md for the stage graph).

Stages and the moves between them are exactly the reference graph::

    init -> auth | menu | registration      auth -> menu | registration
    menu -> credex | account | auth | menu   credex | account | registration -> menu

Login is by the sender's phone number (the user key). The dashboard the menu shows is kept in the
snapshot as a compact summary (balances, offer counts, what the menu needs), not as the API's full
response, so a session stays small; lists of offers are fetched when a sub-flow needs them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from flows.credex.api import (
    ApiError,
    CredexApi,
    Dashboard,
    LoginResult,
    MemberNotFound,
    Unauthorized,
)
from fsm import Context, Flow, Login, Option, Outcome, Reply, Stage, choices, on_enter, pick, step

GREETINGS = frozenset(
    {
        "hi",
        "hello",
        "hey",
        "hie",
        "hola",
        "howzit",
        "start",
        "menu",
        "good morning",
        "good afternoon",
        "good evening",
    }
)

UNREACHABLE = "Credex is not reachable right now. Please try again in a moment."


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """What the menu needs from the dashboard, stored under data["dashboard"]."""

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
        owned = [a for a in dashboard.accounts if a.is_owned_account] or list(dashboard.accounts)
        if not owned:
            raise ApiError(502, "getMemberDashboardByPhone", "the dashboard lists no account")
        account = owned[0]
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
    return options


def menu_reply(summary: Summary) -> Reply:
    balances = ", ".join(summary.balances) or "no balance yet"
    body = (
        f"Welcome {summary.firstname} (@{summary.handle}).\n"
        f"{summary.account_name}: {balances}. Net: {summary.net}.\n"
        "What would you like to do?"
    )
    return choices(body, menu_options(summary))


class CredexBot(Flow):
    """The Credex WhatsApp bot: login and dashboard menu; sub-flows land in the next release."""

    name = "credex"
    version = 1
    initial = "init"
    auth_stage = "auth"
    stages = (
        Stage("init", ("greeting",)),
        Stage("auth", ("login",)),
        Stage("menu", ("dashboard",), protected=True),
        Stage("credex", ("soon",), protected=True),
        Stage("account", ("soon",), protected=True),
        Stage("registration", ("soon",)),
    )
    transitions = (
        # trigger       source(s)                                                 dest
        ("sign_in", ["init", "menu"], "auth"),
        ("show_menu", ["init", "auth", "menu", "credex", "account", "registration"], "menu"),
        ("register", ["init", "auth"], "registration"),
        ("open_credex", "menu", "credex"),
        ("open_account", "menu", "account"),
    )

    def __init__(self, api: CredexApi) -> None:
        self.api = api

    def __repr__(self) -> str:
        return f"CredexBot(api={type(self.api).__name__})"

    # -- init: a greeting signs the member in by phone ---------------------------------------
    @step("init", "greeting")
    def greeting(self, ctx: Context) -> Outcome:
        if ctx.text.strip().casefold() not in GREETINGS:
            return ctx.stay("Hi! Send *hi* to start.")
        return self._sign_in(
            ctx, unknown=ctx.go("register"), unreachable=ctx.go("sign_in", UNREACHABLE)
        )

    # -- auth: (re-)login by phone, then back where the user was -------------------------------
    @on_enter("auth", "login")
    def prompt_login(self, ctx: Context) -> list[str]:
        return ["Please reply with anything to sign in to Credex."]

    @step("auth", "login")
    def login(self, ctx: Context) -> Outcome:
        return self._sign_in(ctx, unknown=ctx.go("register"), unreachable=ctx.stay(UNREACHABLE))

    def _sign_in(self, ctx: Context, *, unknown: Outcome, unreachable: Outcome) -> Outcome:
        """Log in by phone; on success go to the menu (or back to where a re-login began)."""
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
            set={"dashboard": msgspec.to_builtins(summary)},
            resume=True,
        )

    # -- menu: the dashboard and the options that apply ---------------------------------------
    @on_enter("menu", "dashboard")
    def show_dashboard(self, ctx: Context) -> list[Reply]:
        summary = _summary(ctx.data)
        if summary is None:
            return [Reply("Your dashboard is loading; reply *menu* to refresh it.")]
        return [menu_reply(summary)]

    @step("menu", "dashboard")
    def dashboard(self, ctx: Context) -> Outcome:
        answer = ctx.text.strip()
        summary = _summary(ctx.data)
        if answer.casefold() in GREETINGS or summary is None:
            return self._refresh(ctx)
        chosen = pick(menu_reply(summary), answer)
        if chosen is None:
            return ctx.stay("Please choose one of the options.", menu_reply(summary))
        if chosen.id in {"ledger", "upgrade"}:
            return ctx.go("open_account", option=chosen.id)
        return ctx.go("open_credex", option=chosen.id)

    def _refresh(self, ctx: Context) -> Outcome:
        try:
            dashboard = self.api.get_member_dashboard_by_phone(ctx.user_key, token=ctx.token or "")
            summary = Summary.of(dashboard)
        except Unauthorized:
            return ctx.reauth()
        except ApiError:
            return ctx.stay(UNREACHABLE)
        return ctx.go("show_menu", set={"dashboard": msgspec.to_builtins(summary)})

    # -- sub-flows not built yet: say so and go back ----------------------------------------
    @on_enter("credex", "soon")
    @on_enter("account", "soon")
    def coming_soon(self, ctx: Context) -> list[str]:
        what = ctx.option or ctx.stage
        return [f"'{what}' is coming soon. Reply with anything to go back to the menu."]

    @step("credex", "soon")
    @step("account", "soon")
    def back_to_menu(self, ctx: Context) -> Outcome:
        return ctx.go("show_menu")

    @on_enter("registration", "soon")
    def welcome_new_member(self, ctx: Context) -> list[str]:
        return [
            "Welcome to Credex! We could not find an account for this number. "
            "Registration is coming soon; send *hi* to try signing in again."
        ]

    @step("registration", "soon")
    def registration_soon(self, ctx: Context) -> Outcome:
        if ctx.text.strip().casefold() in GREETINGS:
            return self._sign_in(
                ctx,
                unknown=ctx.stay("Registration is coming soon."),
                unreachable=ctx.stay(UNREACHABLE),
            )
        return ctx.stay("Registration is coming soon; send *hi* to try signing in again.")


def _summary(data: Any) -> Summary | None:
    raw = data.get("dashboard")
    if raw is None:
        return None
    try:
        return msgspec.convert(raw, Summary)
    except msgspec.ValidationError:
        return None  # an older or damaged summary: the handler refreshes it from the API
