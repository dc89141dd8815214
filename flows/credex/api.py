"""The Credex API as a port: a :class:`CredexApi` protocol, its typed results and its errors.

The bot talks to Credex only through :class:`CredexApi`. The in-memory
:class:`~flows.credex.fake.FakeCredexApi` implements it for the demo and the tests; a real HTTP
client can come later behind the same protocol.

Theory of operation: the real API answers with camelCase JSON (``memberID``, ``pendingInData``,
...). Every implementation turns that raw JSON into the frozen structs below with
:func:`decode_response`, which decodes strictly and turns a response of an unexpected shape into
:class:`ApiResponseError` ending with msgspec's ``$.path`` of the bad field. So a changed response
shape reaches a step as one clear, typed error, never as a ``KeyError`` deep in a handler.

Unknown keys are ignored (the API may add fields without breaking us); missing or mistyped ones
are errors. No error message and no ``repr`` here ever contains a JWT.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import msgspec

__all__ = [
    "CALLS",
    "CREDEX_KIND",
    "DENOMINATIONS",
    "OFFER_RECEIVED",
    "TIER_SUBSCRIPTION",
    "Account",
    "AccountNotFound",
    "AccountRef",
    "ApiError",
    "ApiResponseError",
    "BalanceData",
    "CredexApi",
    "CredexCreated",
    "CredexUpdated",
    "Dashboard",
    "LedgerEntry",
    "LedgerPage",
    "LoginResult",
    "Member",
    "MemberNotFound",
    "Offer",
    "OfferReceived",
    "RecurringCreated",
    "Unauthorized",
    "decode_response",
]

#: The API's own names for its calls; an error raised by a call names it in :attr:`ApiError.call`.
CALLS = (
    "login",
    "onboardMember",
    "getMemberDashboardByPhone",
    "getAccountByHandle",
    "createCredex",
    "acceptCredex",
    "declineCredex",
    "cancelCredex",
    "createRecurring",
    "getLedger",
)

#: What every createCredex request carries besides its arguments: the bot only makes secured
#: purchase offers.
CREDEX_KIND: dict[str, object] = {
    "credexType": "PURCHASE",
    "OFFERSorREQUESTS": "OFFERS",
    "securedCredex": True,
}
#: The one subscription the bot makes with createRecurring: member tier 3, $1 every 28 days.
TIER_SUBSCRIPTION: dict[str, object] = {
    "templateType": "MEMBERTIER_SUBSCRIPTION",
    "memberTier": 3,
    "payFrequency": 28,
    "amount": 1.0,
    "denomination": "USD",
}

#: Denominations Credex accepts for an offer.
DENOMINATIONS = frozenset({"CXX", "XAU", "USD", "CAD", "ZWG"})


# --- errors -----------------------------------------------------------------------------------


class ApiError(Exception):
    """A call to the Credex API failed: ``status`` is the HTTP status, ``call`` the API call."""

    def __init__(self, status: int, call: str, message: str) -> None:
        self.status = status
        self.call = call
        self.message = message
        super().__init__(f"{call} failed ({status}): {message}")


class MemberNotFound(ApiError):
    """``login`` for a phone number Credex does not know: the bot offers onboarding."""

    def __init__(self, call: str = "login", message: str = "member not found") -> None:
        super().__init__(404, call, message)


class AccountNotFound(ApiError):
    """``getAccountByHandle`` for a handle no account has: the bot asks for the handle again."""

    def __init__(
        self, call: str = "getAccountByHandle", message: str = "account not found"
    ) -> None:
        super().__init__(404, call, message)


class Unauthorized(ApiError):
    """The bearer token is missing, invalid, revoked or expired: the bot logs in again."""

    def __init__(self, call: str, message: str = "invalid or expired token") -> None:
        super().__init__(401, call, message)


class ApiResponseError(ApiError):
    """The API answered, but not in the shape we expect (status 502, as a gateway would say)."""

    def __init__(self, call: str, message: str) -> None:
        super().__init__(502, call, message)


# --- results ----------------------------------------------------------------------------------
# Field names are snake_case in Python; ``rename="camel"`` maps them to the API's keys, and the
# keys the API spells with an upper-case acronym (``memberID``, ``remainingAvailableUSD``) are
# named explicitly. Collections are tuples so a frozen struct is immutable all the way down.


class _Wire(msgspec.Struct, frozen=True, rename="camel"):
    """Base of every result: frozen, camelCase on the wire."""


class Member(_Wire, frozen=True):
    member_id: str = msgspec.field(name="memberID")
    member_tier: int
    firstname: str
    lastname: str
    member_handle: str
    default_denom: str
    remaining_available_usd: float = msgspec.field(name="remainingAvailableUSD")


class BalanceData(_Wire, frozen=True):
    """Balances as the API formats them, e.g. ``("12.50 USD", "-3.00 ZWG")`` and ``"9.50 USD"``."""

    secured_net_balances_by_denom: tuple[str, ...]
    net_credex_assets_in_default_denom: str


class Offer(_Wire, frozen=True):
    """A pending credex as seen from one account; the counterparty is the other side."""

    credex_id: str = msgspec.field(name="credexID")
    formatted_initial_amount: str  # e.g. "12.50 USD"
    counterparty_account_name: str
    counterparty_handle: str
    denomination: str
    amount: float


class Account(_Wire, frozen=True):
    """An account of the logged-in member, with its balances and pending offers."""

    account_id: str = msgspec.field(name="accountID")
    account_name: str
    account_handle: str
    is_owned_account: bool
    default_denom: str
    balance_data: BalanceData
    pending_in: tuple[Offer, ...] = msgspec.field(name="pendingInData")
    pending_out: tuple[Offer, ...] = msgspec.field(name="pendingOutData")


class AccountRef(_Wire, frozen=True):
    """Another member's account as ``getAccountByHandle`` shows it: who, not how much."""

    account_id: str = msgspec.field(name="accountID")
    account_name: str
    account_handle: str


class Dashboard(_Wire, frozen=True):
    member: Member
    accounts: tuple[Account, ...]


class LoginResult(_Wire, frozen=True):
    """A JWT and the member's dashboard. Its repr redacts the token."""

    token: str
    dashboard: Dashboard

    def __repr__(self) -> str:  # the token is a bearer credential: never print it
        return f"LoginResult(token=<redacted>, dashboard={self.dashboard!r})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:  # msgspec's default would show it
        return [("token", "<redacted>"), ("dashboard", self.dashboard)]


class CredexCreated(_Wire, frozen=True):
    credex_id: str = msgspec.field(name="credexID")


class CredexUpdated(_Wire, frozen=True):
    """Result of accept / decline / cancel: the credex and its new status."""

    credex_id: str = msgspec.field(name="credexID")
    status: str  # "ACCEPTED", "DECLINED" or "CANCELLED"


class RecurringCreated(_Wire, frozen=True):
    recurring_id: str = msgspec.field(name="recurringID")


class LedgerEntry(_Wire, frozen=True):
    credex_id: str = msgspec.field(name="credexID")
    formatted_amount: str  # signed from the account's side: "+20.00 USD", "-3.00 USD"
    counterparty: str
    timestamp: str  # ISO 8601, UTC


class LedgerPage(_Wire, frozen=True):
    entries: tuple[LedgerEntry, ...]
    has_more: bool


# --- events: what the API tells a member's bot unasked ----------------------------------------

#: The event the API sends the receiver's bot when an offer to them is created (``POST /events``
#: on ``fsm serve``; in-process, :mod:`flows.credex.delivery`). Its id is the credex id.
OFFER_RECEIVED = "offer_received"


class OfferReceived(_Wire, frozen=True):
    """The data of :data:`OFFER_RECEIVED`: who offered how much, and the credex to accept or
    decline (``{"credexID": "cx-0006", "senderName": "Alice", "senderHandle": "alice",
    "amount": 25.0, "denomination": "USD"}``)."""

    credex_id: str = msgspec.field(name="credexID")
    sender_name: str
    sender_handle: str
    amount: float
    denomination: str

    def __str__(self) -> str:
        who = f"{self.sender_name} (@{self.sender_handle})"
        return f"{who} offered you {self.amount:.2f} {self.denomination}"


T = TypeVar("T")


def decode_response(call: str, raw: Any, type_: type[T]) -> T:
    """Convert a raw JSON-like response of ``call`` into ``type_``, or raise ApiResponseError.

    Decoding is strict (no ``"1"`` -> ``1`` coercion); unknown keys are ignored.

    >>> decode_response("createCredex", {"credexID": "cx-1"}, CredexCreated)
    CredexCreated(credex_id='cx-1')
    >>> decode_response("createCredex", {"id": "cx-1"}, CredexCreated)
    Traceback (most recent call last):
    ...
    flows.credex.api.ApiResponseError: createCredex failed (502): unexpected response: \
Object missing required field `credexID` - at `$`
    """
    try:
        return msgspec.convert(raw, type_, strict=True)
    except msgspec.ValidationError as exc:
        # msgspec omits the path when the root itself is wrong; add it so every message ends
        # with one. Its messages name types and paths, never values, so no token leaks here.
        text = str(exc)
        if " - at `$" not in text:
            text += " - at `$`"
        raise ApiResponseError(call, f"unexpected response: {text}") from None


# --- the port ---------------------------------------------------------------------------------


class CredexApi(Protocol):
    """The Credex calls the bot makes. Every call but ``login`` and ``onboard_member`` takes the
    member's JWT as ``token``; a bad one raises :class:`Unauthorized`. Any call may raise
    :class:`ApiError` (and :class:`ApiResponseError` for a response of an unexpected shape).

    Calls that create or change something take ``idempotency_key``: a retry with the same key
    must return the first result without changing anything again (an HTTP client sends it as
    the ``Idempotency-Key`` header). The bot passes the key of the engine's pending action.

    A client may say ``blocking = False`` when its calls never block (the in-memory fake):
    the bot's handlers then run on an AsyncEngine's loop instead of in worker threads.
    Without it they are taken to block.
    """

    def login(self, phone: str) -> LoginResult:
        """Log in by phone; raises :class:`MemberNotFound` for an unknown phone."""
        ...

    def onboard_member(
        self,
        firstname: str,
        lastname: str,
        phone: str,
        default_denom: str = "USD",
        *,
        idempotency_key: str | None = None,
    ) -> LoginResult:
        """Create a member (and an account) and log them in."""
        ...

    def get_member_dashboard_by_phone(self, phone: str, *, token: str) -> Dashboard:
        """The member's dashboard; the token must be that member's."""
        ...

    def get_account_by_handle(self, handle: str, *, token: str) -> AccountRef:
        """Find an account by handle. The method lower-cases (and strips) ``handle`` itself, so
        callers pass what the user typed; raises :class:`AccountNotFound`."""
        ...

    def create_credex(
        self,
        issuer_account_id: str,
        receiver_account_id: str,
        denomination: str,
        amount: float,
        *,
        token: str,
        idempotency_key: str | None = None,
    ) -> CredexCreated:
        """Offer ``amount`` from the issuer's account (owned by the token's member) to the
        receiver. The kind is fixed: credexType PURCHASE, OFFERS, securedCredex true."""
        ...

    def accept_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        """Accept an incoming offer of the token's member."""
        ...

    def decline_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        """Decline an incoming offer of the token's member."""
        ...

    def cancel_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        """Cancel an outgoing offer of the token's member."""
        ...

    def create_recurring(
        self, account_id: str, *, token: str, idempotency_key: str | None = None
    ) -> RecurringCreated:
        """Subscribe to member tier 3: MEMBERTIER_SUBSCRIPTION, 1.00 USD every 28 days."""
        ...

    def get_ledger(
        self, account_id: str, start_row: int, num_rows: int, *, token: str
    ) -> LedgerPage:
        """Settled credexes of an owned account, newest first, ``num_rows`` from ``start_row``."""
        ...
