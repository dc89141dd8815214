"""An in-memory, deterministic :class:`~flows.credex.api.CredexApi` for the demo and the tests.

It behaves like the real service where the bot can tell the difference:

- tokens are real HS256 JWTs (PyJWT) with ``sub``, ``phone``, ``iat``, ``exp`` and ``jti``, and
  every token-taking call verifies them for real, expiry read from the injected clock;
- offers really move: ``create_credex`` adds a pending credex, accept / decline / cancel settle it,
  and dashboards and ledgers are computed from that data;
- responses are built as the camelCase JSON the API sends and decoded with
  :func:`~flows.credex.api.decode_response`, exactly as an HTTP client would, so a test can change
  a response's shape (:meth:`FakeCredexApi.raw_response_override`) and see ``ApiResponseError``.

Seeded members, each with one owned personal account (``mem-000N`` owns ``acc-000N``):

- 1 Alice Moyo, ``263770000001``, tier 1, ``alice``: incoming cx-0001, cx-0002; outgoing cx-0003
- 2 Bob Dube, ``263770000002``, tier 3, ``bob``: no pending offers
- 3 Carol Chirwa, ``263770000003``, tier 2, ``carol_c``: incoming cx-0003
- 4 Dan Ncube, ``263770000004``, tier 1, ``dan``: outgoing cx-0001, cx-0002

cx-0001 is 12.50 USD, cx-0002 100.00 ZWG, cx-0003 7.25 USD (all pending). Settled history for
ledgers: cx-0004 (Bob -> Alice, 20.00 USD) and cx-0005 (Alice -> Dan, 3.00 USD), both accepted.
New ids continue from there: cx-0006, tok-0001, rec-0001, mem-0005 / acc-0005.

Like the real service, it tells the receiver's bot about a new offer: each offer created
(not a replay of one) makes a :class:`Notification` of the event ``offer_received`` for the
receiver's phone (the bot's user key), kept in :attr:`FakeCredexApi.notifications` and handed
to :attr:`FakeCredexApi.notifier`, if set, once the call is over (outside the fake's lock).
:mod:`flows.credex.delivery` applies them in-process; the fake HTTP server POSTs them to the
bot's ``/events`` (:mod:`flows.credex.fake_server`).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import RSAAlgorithm

from fsm.clock import SYSTEM_CLOCK, Clock

from .api import (
    CALLS,
    CREDEX_KIND,
    DENOMINATIONS,
    OFFER_RECEIVED,
    TIER_SUBSCRIPTION,
    AccountNotFound,
    AccountRef,
    ApiError,
    ApiResponseError,
    CredexCreated,
    CredexUpdated,
    Dashboard,
    LedgerPage,
    LoginResult,
    MemberNotFound,
    RecurringCreated,
    Unauthorized,
    decode_response,
)

__all__ = ["DEV_SECRET", "FakeCredexApi", "Notification", "Notifier"]

#: The default signing key: fixed so demo runs are reproducible; 32+ bytes as HS256 asks.
DEV_SECRET = b"credex-fake-api-dev-secret-not-for-production"

T = TypeVar("T")

#: accept / decline / cancel: the status each sets, and whether the member must be the receiver.
_SETTLE = {
    "acceptCredex": ("ACCEPTED", True),
    "declineCredex": ("DECLINED", True),
    "cancelCredex": ("CANCELLED", False),
}
# The fake derives the credit left today from the tier; it reports it but does not enforce it.
_REMAINING_USD_BY_TIER = {1: 10.0, 2: 100.0, 3: 1000.0}


@dataclass(slots=True)
class _Member:
    member_id: str
    phone: str
    firstname: str
    lastname: str
    handle: str
    tier: int
    default_denom: str
    account_id: str


@dataclass(slots=True)
class _Account:
    account_id: str
    member_id: str
    name: str
    handle: str
    default_denom: str


@dataclass(slots=True)
class _Credex:
    credex_id: str
    issuer: str  # account ids
    receiver: str
    denomination: str
    amount: float
    status: str = "PENDING"  # or ACCEPTED, DECLINED, CANCELLED
    updated_at: float = 0.0  # when created, then when settled


def _fmt(amount: float, denom: str) -> str:
    return f"{amount:.2f} {denom}"


@dataclass(frozen=True, slots=True)
class Notification:
    """An event the API sends a member's bot: for ``user`` (the member's phone, the bot's
    user key), the event's name, its data (the API's JSON) and its id. Its repr names the
    event and its id only: the phone and the data are the members' own."""

    user: str
    event: str
    data: dict[str, Any]
    event_id: str

    def __repr__(self) -> str:
        return f"Notification(event={self.event!r}, event_id={self.event_id!r})"


#: Where the fake sends its notifications (called outside its lock, on the caller's thread).
Notifier = Callable[[Notification], None]


class FakeCredexApi:
    """The Credex API in memory. Thread-safe: one lock around every call. It never blocks
    (``blocking = False``), so the bot's handlers run on an AsyncEngine's loop.

    >>> api = FakeCredexApi()
    >>> api.login("263770000001").dashboard.member.member_handle
    'alice'
    """

    blocking = False

    def __init__(
        self,
        *,
        secret: bytes = DEV_SECRET,
        private_key: RSAPrivateKey | None = None,
        key_id: str = "fake-credex-1",
        token_ttl: float = 3600.0,
        clock: Clock = SYSTEM_CLOCK,
        notifier: Notifier | None = None,
    ) -> None:
        # HS256 with ``secret`` by default; with an RSA ``private_key``, RS256 tokens whose
        # header names ``key_id``, verifiable with the public key alone (see :meth:`jwks`).
        self._secret = secret
        self._private_key = private_key
        self._key_id = key_id
        self._token_ttl = token_ttl
        self._clock = clock
        self._lock = threading.RLock()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._members: dict[str, _Member] = {}
        self._accounts: dict[str, _Account] = {}
        self._credexes: dict[str, _Credex] = {}
        self._failures: dict[str, list[ApiError]] = {}
        self._overrides: dict[str, list[Any]] = {}
        self._issued: list[str] = []  # jti of every token issued, in order
        self._expired: set[str] = set()
        self._revoked: set[str] = set()
        self._serials: dict[str, int] = {}
        # idempotency key -> ((call, request), result)
        self._done: dict[str, tuple[tuple[str, tuple[Any, ...]], Any]] = {}
        self.replays: list[tuple[str, str]] = []  # (call, idempotency key) answered from _done
        #: Every notification sent, oldest first; ``notifier`` gets each one as it is sent.
        self.notifications: list[Notification] = []
        self.notifier = notifier
        self._unsent: list[Notification] = []  # made under the lock, sent after it
        self._seed()

    # --- test controls --------------------------------------------------------------------

    @property
    def verification_key(self) -> Any:
        """The key that verifies the tokens this fake issues: the HS256 secret, or the RSA
        public key when it signs with a private key."""
        with self._lock:
            if self._private_key is not None:
                return self._private_key.public_key()
            return self._secret

    @property
    def algorithm(self) -> str:
        return "HS256" if self._private_key is None else "RS256"

    def jwks(self) -> dict[str, Any]:
        """The public keys as a JSON Web Key Set (empty when signing with a shared secret)."""
        if self._private_key is None:
            return {"keys": []}
        jwk = RSAAlgorithm.to_jwk(self._private_key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self._key_id, "alg": "RS256", "use": "sig"}]}

    def count(self, call: str) -> int:
        """How many times ``call`` (an API name such as ``"createCredex"``) was made."""
        with self._lock:
            return sum(1 for name, _ in self.calls if name == call)

    def fail_next(self, call: str, error: ApiError) -> None:
        """Make the next ``call`` raise ``error`` (once, before doing anything)."""
        with self._lock:
            self._failures.setdefault(_known(call), []).append(error)

    def raw_response_override(self, call: str, raw: Any) -> None:
        """Make the next ``call`` answer ``raw`` instead of its usual JSON (its effect still
        happens, as when a server changes its response shape)."""
        with self._lock:
            self._overrides.setdefault(_known(call), []).append(raw)

    def expire_tokens(self) -> None:
        """Make every token issued so far expired (401); new logins get valid tokens."""
        with self._lock:
            self._expired.update(self._issued)

    def revoke(self, token: str) -> None:
        """Revoke one token (401 from now on); raises Unauthorized if it is not a valid token."""
        with self._lock:
            self._revoked.add(self._claims("revoke", token)["jti"])

    def rotate_secret(self, new_secret: bytes | None = None) -> None:
        """Sign with a new key: every earlier token fails its signature check."""
        with self._lock:
            self._secret = new_secret or hashlib.sha256(self._secret).digest()

    def _once(
        self,
        call: str,
        key: str | None,
        token: str | None,
        request: tuple[Any, ...],
        run: Callable[[], T],
    ) -> T:
        """Run a changing call once per idempotency key: a retry with the same key and the same
        request gets the first result back (after the usual token check) without changing
        anything again; the same key with another request is refused (422), as real APIs do."""
        with self._lock:
            if key is not None and key in self._done:
                first, result = self._done[key]
                self._begin(call, {"idempotencyKey": key})  # an injected failure fires first
                if token is not None:
                    self._authenticate(call, token)
                if first != (call, request):
                    raise ApiError(422, call, "idempotency key already used for another request")
                self.replays.append((call, key))
                if isinstance(result, ApiResponseError):
                    raise ApiResponseError(call, result.message)
                return result  # type: ignore[no-any-return]
            try:
                result = run()
            except ApiResponseError as exc:
                # The change was made; only the answer was garbled (raw_response_override).
                # An idempotent API replays that same answer, and does not change it again.
                if key is not None:
                    self._done[key] = ((call, request), exc)
                raise
            if key is not None:
                self._done[key] = ((call, request), result)
            return result

    # --- the API --------------------------------------------------------------------------

    def login(self, phone: str) -> LoginResult:
        with self._lock:
            self._begin("login", {"phone": phone})
            member = self._member_by_phone(phone)
            if member is None:
                raise MemberNotFound("login")
            return self._login_result("login", member)

    def onboard_member(
        self,
        firstname: str,
        lastname: str,
        phone: str,
        default_denom: str = "USD",
        *,
        idempotency_key: str | None = None,
    ) -> LoginResult:
        return self._once(
            "onboardMember",
            idempotency_key,
            None,
            (firstname, lastname, phone, default_denom),
            lambda: self._onboard(firstname, lastname, phone, default_denom),
        )

    def _onboard(
        self, firstname: str, lastname: str, phone: str, default_denom: str
    ) -> LoginResult:
        call = "onboardMember"
        with self._lock:
            self._begin(
                call,
                {
                    "firstname": firstname,
                    "lastname": lastname,
                    "phone": phone,
                    "defaultDenom": default_denom,
                },
            )
            if not firstname.strip() or not lastname.strip():
                raise ApiError(400, call, "firstname and lastname are required")
            if default_denom not in DENOMINATIONS:
                raise ApiError(400, call, f"unknown denomination {default_denom!r}")
            if self._member_by_phone(phone) is not None:
                raise ApiError(409, call, "a member with this phone already exists")
            member = self._add_member(phone, firstname.strip(), lastname.strip(), 1, default_denom)
            return self._login_result(call, member)

    def get_member_dashboard_by_phone(self, phone: str, *, token: str) -> Dashboard:
        call = "getMemberDashboardByPhone"
        with self._lock:
            self._begin(call, {"phone": phone})
            member = self._authenticate(call, token)
            if member.phone != phone:
                raise ApiError(403, call, "the token is not this member's")
            return self._respond(call, self._dashboard_raw(member), Dashboard)

    def get_account_by_handle(self, handle: str, *, token: str) -> AccountRef:
        call = "getAccountByHandle"
        handle = handle.strip().lower()  # handles are lower-case; the method normalises input
        with self._lock:
            self._begin(call, {"accountHandle": handle})
            self._authenticate(call, token)
            account = next((a for a in self._accounts.values() if a.handle == handle), None)
            if account is None:
                raise AccountNotFound(call, f"no account with handle {handle!r}")
            raw = {
                "accountID": account.account_id,
                "accountName": account.name,
                "accountHandle": account.handle,
            }
            return self._respond(call, raw, AccountRef)

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
        try:
            return self._once(
                "createCredex",
                idempotency_key,
                token,
                (issuer_account_id, receiver_account_id, denomination, amount),
                lambda: self._create(
                    issuer_account_id, receiver_account_id, denomination, amount, token
                ),
            )
        finally:  # an offer made with a garbled answer (ApiResponseError) exists: tell them
            self._send_notifications()

    def _send_notifications(self) -> None:
        """Hand the notifications made by this call to :attr:`notifier`, outside the lock (a
        notifier may take its time, or call the fake again)."""
        with self._lock:
            unsent, self._unsent = self._unsent, []
            notifier = self.notifier
        for notification in unsent:
            if notifier is not None:
                notifier(notification)

    def _create(
        self,
        issuer_account_id: str,
        receiver_account_id: str,
        denomination: str,
        amount: float,
        token: str,
    ) -> CredexCreated:
        call = "createCredex"
        with self._lock:
            self._begin(
                call,
                {"issuerAccountID": issuer_account_id, "receiverAccountID": receiver_account_id}
                | {"Denomination": denomination, "InitialAmount": amount, **CREDEX_KIND},
            )
            member = self._authenticate(call, token)
            self._owned(call, member, issuer_account_id)
            if denomination not in DENOMINATIONS:
                raise ApiError(400, call, f"unknown denomination {denomination!r}")
            if isinstance(amount, bool) or not math.isfinite(amount) or amount <= 0:
                raise ApiError(400, call, "the amount must be a positive number")
            if receiver_account_id not in self._accounts:
                raise ApiError(404, call, "receiver account not found")
            if receiver_account_id == issuer_account_id:
                raise ApiError(400, call, "an account cannot make an offer to itself")
            credex_id = self._next_id("cx")
            credex = _Credex(
                credex_id, issuer_account_id, receiver_account_id, denomination, float(amount)
            )
            credex.updated_at = self._clock.now()
            self._credexes[credex_id] = credex
            self._offer_made(credex)
            return self._respond(call, {"credexID": credex_id}, CredexCreated)

    def _offer_made(self, credex: _Credex) -> None:
        """Record the receiver's ``offer_received`` notification, to send once the call is
        over (lock held)."""
        sender = self._members[self._accounts[credex.issuer].member_id]
        receiver = self._members[self._accounts[credex.receiver].member_id]
        data = {
            "credexID": credex.credex_id,
            "senderName": sender.firstname,
            "senderHandle": self._accounts[credex.issuer].handle,
            "amount": credex.amount,
            "denomination": credex.denomination,
        }
        notification = Notification(receiver.phone, OFFER_RECEIVED, data, credex.credex_id)
        self.notifications.append(notification)
        self._unsent.append(notification)

    def accept_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        return self._settle_once("acceptCredex", credex_id, token, idempotency_key)

    def decline_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        return self._settle_once("declineCredex", credex_id, token, idempotency_key)

    def cancel_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        return self._settle_once("cancelCredex", credex_id, token, idempotency_key)

    def _settle_once(self, call: str, credex_id: str, token: str, key: str | None) -> CredexUpdated:
        status, incoming = _SETTLE[call]
        return self._once(
            call,
            key,
            token,
            (credex_id,),
            lambda: self._settle(call, credex_id, token, status, incoming=incoming),
        )

    def create_recurring(
        self, account_id: str, *, token: str, idempotency_key: str | None = None
    ) -> RecurringCreated:
        return self._once(
            "createRecurring",
            idempotency_key,
            token,
            (account_id,),
            lambda: self._recurring(account_id, token),
        )

    def _recurring(self, account_id: str, token: str) -> RecurringCreated:
        call = "createRecurring"
        with self._lock:
            self._begin(
                call,
                {"sourceAccountID": account_id, **TIER_SUBSCRIPTION},
            )
            member = self._authenticate(call, token)
            self._owned(call, member, account_id)
            if member.tier >= 3:
                raise ApiError(409, call, "the member is already on tier 3")
            member.tier = 3
            return self._respond(call, {"recurringID": self._next_id("rec")}, RecurringCreated)

    def get_ledger(
        self, account_id: str, start_row: int, num_rows: int, *, token: str
    ) -> LedgerPage:
        call = "getLedger"
        with self._lock:
            self._begin(call, {"accountID": account_id, "startRow": start_row, "numRows": num_rows})
            member = self._authenticate(call, token)
            self._owned(call, member, account_id)
            if start_row < 0 or num_rows <= 0:
                raise ApiError(400, call, "startRow must be >= 0 and numRows > 0")
            settled = sorted(
                (
                    c
                    for c in self._credexes.values()
                    if c.status == "ACCEPTED" and account_id in (c.issuer, c.receiver)
                ),
                key=lambda c: (c.updated_at, c.credex_id),
                reverse=True,
            )
            entries = []
            for c in settled[start_row : start_row + num_rows]:
                incoming = c.receiver == account_id
                other = self._accounts[c.issuer if incoming else c.receiver]
                stamp = datetime.fromtimestamp(c.updated_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                entries.append(
                    {
                        "credexID": c.credex_id,
                        "formattedAmount": ("+" if incoming else "-")
                        + _fmt(c.amount, c.denomination),
                        "counterparty": other.name,
                        "timestamp": stamp,
                    }
                )
            raw = {"entries": entries, "hasMore": start_row + num_rows < len(settled)}
            return self._respond(call, raw, LedgerPage)

    # --- internals (called with the lock held) --------------------------------------------

    def _begin(self, call: str, params: dict[str, Any]) -> None:
        """Record the call (its request body, never the token) and fire an injected failure."""
        self.calls.append((call, params))
        queued = self._failures.get(call)
        if queued:
            raise queued.pop(0)

    def _claims(self, call: str, token: str | None) -> dict[str, Any]:
        if not token:
            raise Unauthorized(call, "missing bearer token")
        try:
            # PyJWT checks exp and iat against the real time; this fake runs on ``self._clock``,
            # so it turns those checks off and checks exp itself below.
            claims: dict[str, Any] = jwt.decode(
                token,
                self.verification_key,
                algorithms=[self.algorithm],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "require": ["sub", "phone", "iat", "exp", "jti"],
                },
            )
        except jwt.InvalidTokenError:
            raise Unauthorized(call, "invalid token") from None  # PyJWT's text is not needed
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise Unauthorized(call, "invalid token")
        if self._clock.now() >= exp or claims["jti"] in self._expired:
            raise Unauthorized(call, "token expired")
        return claims

    def _authenticate(self, call: str, token: str | None) -> _Member:
        claims = self._claims(call, token)
        if claims["jti"] in self._revoked:
            raise Unauthorized(call, "token revoked")
        member = self._members.get(claims["sub"])
        if member is None or member.phone != claims["phone"]:
            raise Unauthorized(call, "the token's member does not exist")
        return member

    def _respond(self, call: str, raw: Any, type_: type[T]) -> T:
        overrides = self._overrides.get(call)
        if overrides:
            raw = overrides.pop(0)
        return decode_response(call, raw, type_)

    def _login_result(self, call: str, member: _Member) -> LoginResult:
        iat = math.floor(self._clock.now())
        jti = self._next_id("tok")
        claims = {
            "sub": member.member_id,
            "phone": member.phone,
            "iat": iat,
            "exp": iat + math.ceil(self._token_ttl),  # NumericDate: whole seconds
            "jti": jti,  # makes every token distinct, so one can be revoked alone
        }
        self._issued.append(jti)
        if self._private_key is None:
            token = jwt.encode(claims, self._secret, algorithm="HS256")
        else:
            token = jwt.encode(
                claims, self._private_key, algorithm="RS256", headers={"kid": self._key_id}
            )
        return self._respond(
            call, {"token": token, "dashboard": self._dashboard_raw(member)}, LoginResult
        )

    def _settle(
        self, call: str, credex_id: str, token: str, status: str, *, incoming: bool
    ) -> CredexUpdated:
        with self._lock:
            self._begin(call, {"credexID": credex_id})
            member = self._authenticate(call, token)
            credex = self._credexes.get(credex_id)
            if credex is None:
                raise ApiError(404, call, f"credex {credex_id!r} not found")
            side = credex.receiver if incoming else credex.issuer
            if self._accounts[side].member_id != member.member_id:
                raise ApiError(
                    403, call, f"credex {credex_id!r} is not yours to {call.removesuffix('Credex')}"
                )
            if credex.status != "PENDING":
                raise ApiError(409, call, f"credex {credex_id!r} is {credex.status}, not PENDING")
            credex.status, credex.updated_at = status, self._clock.now()
            return self._respond(call, {"credexID": credex_id, "status": status}, CredexUpdated)

    def _owned(self, call: str, member: _Member, account_id: str) -> None:
        account = self._accounts.get(account_id)
        if account is None or account.member_id != member.member_id:
            raise ApiError(403, call, f"account {account_id!r} is not one of yours")

    def _member_by_phone(self, phone: str) -> _Member | None:
        return next((m for m in self._members.values() if m.phone == phone), None)

    def _next_id(self, prefix: str) -> str:
        # One counter per kind, so ids stay predictable: cx-0006 is the first credex a test makes.
        self._serials[prefix] = n = self._serials.get(prefix, 0) + 1
        return f"{prefix}-{n:04d}"

    def _dashboard_raw(self, member: _Member) -> dict[str, Any]:
        account = self._accounts[member.account_id]
        pending = [c for c in self._credexes.values() if c.status == "PENDING"]
        net: dict[str, float] = {}
        for c in self._credexes.values():
            if c.status == "ACCEPTED" and account.account_id in (c.issuer, c.receiver):
                sign = 1.0 if c.receiver == account.account_id else -1.0
                net[c.denomination] = net.get(c.denomination, 0.0) + sign * c.amount
        return {
            "member": {
                "memberID": member.member_id,
                "memberTier": member.tier,
                "firstname": member.firstname,
                "lastname": member.lastname,
                "memberHandle": member.handle,
                "defaultDenom": member.default_denom,
                "remainingAvailableUSD": _REMAINING_USD_BY_TIER[member.tier],
            },
            "accounts": [
                {
                    "accountID": account.account_id,
                    "accountName": account.name,
                    "accountHandle": account.handle,
                    "isOwnedAccount": True,
                    "defaultDenom": account.default_denom,
                    "balanceData": {
                        "securedNetBalancesByDenom": [_fmt(v, d) for d, v in sorted(net.items())],
                        # No currency conversion here: only the default denomination counts.
                        "netCredexAssetsInDefaultDenom": _fmt(
                            net.get(account.default_denom, 0.0), account.default_denom
                        ),
                    },
                    "pendingInData": [
                        self._offer_raw(c, c.issuer)
                        for c in pending
                        if c.receiver == account.account_id
                    ],
                    "pendingOutData": [
                        self._offer_raw(c, c.receiver)
                        for c in pending
                        if c.issuer == account.account_id
                    ],
                }
            ],
        }

    def _offer_raw(self, credex: _Credex, counterparty_account_id: str) -> dict[str, Any]:
        other = self._accounts[counterparty_account_id]
        return {
            "credexID": credex.credex_id,
            "formattedInitialAmount": _fmt(credex.amount, credex.denomination),
            "counterpartyAccountName": other.name,
            "counterpartyHandle": other.handle,
            "denomination": credex.denomination,
            "amount": credex.amount,
            "secured": True,  # the API sends more than we read; unknown keys are ignored
        }

    def _add_member(
        self, phone: str, first: str, last: str, tier: int, denom: str, handle: str | None = None
    ) -> _Member:
        n = len(self._members) + 1
        if handle is None:
            base = re.sub(r"[^a-z0-9]+", "_", f"{first} {last}".lower()).strip("_")[:27] or "member"
            handle, k = base, 1
            while any(a.handle == handle for a in self._accounts.values()):
                k += 1
                handle = f"{base}_{k}"
        member = _Member(f"mem-{n:04d}", phone, first, last, handle, tier, denom, f"acc-{n:04d}")
        self._members[member.member_id] = member
        self._accounts[member.account_id] = _Account(
            member.account_id, member.member_id, f"{first} {last} Personal", handle, denom
        )
        return member

    def _seed(self) -> None:
        for phone, first, last, tier, handle in [
            ("263770000001", "Alice", "Moyo", 1, "alice"),
            ("263770000002", "Bob", "Dube", 3, "bob"),
            ("263770000003", "Carol", "Chirwa", 2, "carol_c"),
            ("263770000004", "Dan", "Ncube", 1, "dan"),
        ]:
            self._add_member(phone, first, last, tier, "USD", handle)
        day, now = 86_400.0, self._clock.now()
        for n, (issuer, receiver, denom, amount, status, age_days) in enumerate(
            [
                ("acc-0004", "acc-0001", "USD", 12.50, "PENDING", 1),
                ("acc-0004", "acc-0001", "ZWG", 100.0, "PENDING", 2),
                ("acc-0001", "acc-0003", "USD", 7.25, "PENDING", 3),
                ("acc-0002", "acc-0001", "USD", 20.0, "ACCEPTED", 10),
                ("acc-0001", "acc-0004", "USD", 3.0, "ACCEPTED", 5),
            ],
            start=1,
        ):
            cid = f"cx-{n:04d}"
            self._credexes[cid] = _Credex(
                cid, issuer, receiver, denom, amount, status, now - age_days * day
            )
        self._serials["cx"] = len(self._credexes)  # credex ids continue after the seed


def _known(call: str) -> str:
    if call not in CALLS:
        raise ValueError(f"unknown Credex call {call!r}; expected one of {', '.join(CALLS)}")
    return call
