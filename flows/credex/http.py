"""The Credex API over HTTP: :class:`CredexHttpApi` (sync, httpx) and :class:`AsyncCredexHttpApi`.

Every call is ``POST {base_url}/{call}`` with a JSON body in the API's own camelCase (the bodies
:mod:`flows.credex.fake` records), the ``x-client-api-key`` header, and ``Authorization: Bearer
<jwt>`` on every call but ``login`` and ``onboardMember``. Calls that change something carry an
``Idempotency-Key`` header (the engine's key for the pending action), so the bot's own retry of
an action that may have been applied is answered from the first attempt, never applied twice.

Theory of operation: the two clients share one sans-I/O core. :class:`Request` says what to send
for a call (path, body, which headers, whether it may be retried), and :func:`outcome` turns the
status and body that came back into the call's typed result or its :class:`ApiError`. The clients
only move bytes: :class:`CredexHttpApi` with ``httpx.Client`` (for :class:`fsm.Engine`, and for
the reference bot's plain-``def`` handlers that :class:`fsm.AsyncEngine` runs in worker threads),
:class:`AsyncCredexHttpApi` with ``httpx.AsyncClient`` (for ``async def`` handlers on the loop).

Errors, as the bot needs them:

- 401 is :class:`Unauthorized` (the bot signs in again); 404 on ``login`` is
  :class:`MemberNotFound`, on ``getAccountByHandle`` :class:`AccountNotFound`;
- any other status is an :class:`ApiError` with the API's ``message`` (cut short, any JWT in it
  redacted);
- a 2xx body that is not JSON or not of the expected shape is :class:`ApiResponseError` ending in
  the ``$.path`` of the bad field (:func:`decode_response`);
- a timeout is status 504, a connection that failed or dropped 503 (so a flow treats both as
  "Credex is not reachable").

Only calls that change nothing are retried here (``retries`` times, on 502/503/504, timeouts and
failed connections, with a short backoff). A call that changes something is sent once: whether
to try again is the flow's decision, with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
import msgspec

from flows.credex.api import (
    CREDEX_KIND,
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

__all__ = [
    "AsyncCredexHttpApi",
    "CredexHttpApi",
    "Request",
    "Timeouts",
    "outcome",
]

T = TypeVar("T")

#: Statuses worth another try of a call that changes nothing.
RETRYABLE = frozenset({502, 503, 504})
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MESSAGE_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait: for a connection, for each read of the answer, and for the whole call
    (all attempts of a retried call included)."""

    connect: float = 3.0
    read: float = 10.0
    total: float = 20.0

    def httpx(self, left: float | None = None) -> httpx.Timeout:
        """httpx's timeouts, none longer than ``left`` seconds (what remains of ``total``)."""
        if left is None:
            return httpx.Timeout(self.read, connect=self.connect)
        return httpx.Timeout(min(self.read, left), connect=min(self.connect, left))


@dataclass(frozen=True, slots=True)
class Request(Generic[T]):
    """One call as the wire sees it. ``token`` and ``key`` go in headers; neither is shown by
    the repr."""

    call: str
    body: dict[str, Any]
    result: type[T]
    token: str | None = field(default=None, repr=False)
    key: str | None = field(default=None, repr=False)

    @property
    def changes(self) -> bool:
        """It creates or changes something: sent once, with an Idempotency-Key."""
        return self.call in _CHANGING

    def headers(self, client_key: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "x-client-api-key": client_key}
        if self.call not in _ANONYMOUS:
            headers["authorization"] = f"Bearer {self.token or ''}"
        if self.key is not None and self.changes:
            headers["idempotency-key"] = self.key
        return headers

    def content(self) -> bytes:
        return msgspec.json.encode(self.body)


_ANONYMOUS = frozenset({"login", "onboardMember"})
_CHANGING = frozenset(
    {"onboardMember", "createCredex", "acceptCredex", "declineCredex", "cancelCredex"}
    | {"createRecurring"}
)


def outcome(request: Request[T], status: int, body: bytes, hide: tuple[str, ...] = ()) -> T:
    """The result of ``request`` given the answer's ``status`` and ``body``, or its ApiError.
    An error's message never shows the request's token, nor any string of ``hide``.

    >>> req = Request("createCredex", {}, CredexCreated)
    >>> outcome(req, 200, b'{"credexID": "cx-9"}')
    CredexCreated(credex_id='cx-9')
    >>> outcome(req, 409, b'{"message": "credex cx-9 is ACCEPTED, not PENDING"}')
    Traceback (most recent call last):
    ...
    flows.credex.api.ApiError: createCredex failed (409): credex cx-9 is ACCEPTED, not PENDING
    """
    call = request.call
    if 200 <= status < 300:
        try:
            raw = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise ApiResponseError(call, "unexpected response: not JSON - at `$`") from None
        return decode_response(call, raw, request.result)
    message = _message(body, status, (request.token or "", *hide))
    if status == 401:
        raise Unauthorized(call, message)
    if status == 404 and call == "login":
        raise MemberNotFound(call, message)
    if status == 404 and call == "getAccountByHandle":
        raise AccountNotFound(call, message)
    raise ApiError(status, call, message)


def _message(body: bytes, status: int, hide: tuple[str, ...]) -> str:
    """The API's ``message`` (or ``error``), short, with any JWT and each secret of ``hide``
    (the token, the client key) redacted, should the API echo them."""
    text = ""
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raw = None
    if isinstance(raw, dict):
        found = raw.get("message") or raw.get("error")
        text = found if isinstance(found, str) else ""
    for secret in hide:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = " ".join(_JWT.sub("<redacted>", text).split())[:_MESSAGE_LIMIT]
    return text or f"HTTP {status}"


def _transport_error(call: str, exc: httpx.RequestError | TimeoutError) -> ApiError:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return ApiError(504, call, "timed out")
    if isinstance(exc, httpx.DecodingError):  # a body its own encoding header cannot undo
        return ApiResponseError(call, "unexpected response: not decodable - at `$`")
    return ApiError(503, call, "not reachable")  # refused, reset or dropped mid-answer


def _retryable(error: ApiError) -> bool:
    return error.status in RETRYABLE and not isinstance(error, ApiResponseError)


def _status_error(
    request: Request[Any], status: int, body: bytes, hide: tuple[str, ...]
) -> ApiError:
    """The ApiError a retryable status answer stands for."""
    try:
        outcome(request, status, body, hide)
    except ApiError as exc:
        return exc
    raise AssertionError("a retryable status is an error")  # pragma: no cover


def _pause(attempt: int) -> float:
    return min(0.1 * 2.0**attempt, 1.0)


# --- the requests -------------------------------------------------------------------------------
# One function per call: what the bot's arguments become on the wire.


def login(phone: str) -> Request[LoginResult]:
    return Request("login", {"phone": phone}, LoginResult)


def onboard_member(
    firstname: str, lastname: str, phone: str, default_denom: str, key: str | None
) -> Request[LoginResult]:
    body = {
        "firstname": firstname,
        "lastname": lastname,
        "phone": phone,
        "defaultDenom": default_denom,
    }
    return Request("onboardMember", body, LoginResult, key=key)


def dashboard(phone: str, token: str) -> Request[Dashboard]:
    return Request("getMemberDashboardByPhone", {"phone": phone}, Dashboard, token)


def account_by_handle(handle: str, token: str) -> Request[AccountRef]:
    body = {"accountHandle": handle.strip().lower()}
    return Request("getAccountByHandle", body, AccountRef, token)


def create_credex(
    issuer: str, receiver: str, denomination: str, amount: float, token: str, key: str | None
) -> Request[CredexCreated]:
    body = {
        "issuerAccountID": issuer,
        "receiverAccountID": receiver,
        "Denomination": denomination,
        "InitialAmount": amount,
        **CREDEX_KIND,
    }
    return Request("createCredex", body, CredexCreated, token, key)


def settle(call: str, credex_id: str, token: str, key: str | None) -> Request[CredexUpdated]:
    return Request(call, {"credexID": credex_id}, CredexUpdated, token, key)


def create_recurring(account_id: str, token: str, key: str | None) -> Request[RecurringCreated]:
    body = {"sourceAccountID": account_id, **TIER_SUBSCRIPTION}
    return Request("createRecurring", body, RecurringCreated, token, key)


def ledger(account_id: str, start_row: int, num_rows: int, token: str) -> Request[LedgerPage]:
    body = {"accountID": account_id, "startRow": start_row, "numRows": num_rows}
    return Request("getLedger", body, LedgerPage, token)


# --- the clients --------------------------------------------------------------------------------


class _Config:
    """What both clients hold: the base URL, the client key (never shown), the timeouts."""

    def __init__(
        self, base_url: str, client_api_key: str, timeouts: Timeouts, retries: int
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        if not client_api_key:
            raise ValueError("client_api_key is required (the x-client-api-key header)")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self._client_key = client_api_key
        self._hide = (client_api_key,)
        self.timeouts = timeouts
        self.retries = retries

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, client_api_key=<redacted>)"

    def _attempts(self, request: Request[Any]) -> int:
        return 1 if request.changes else 1 + self.retries

    def _url(self, request: Request[Any]) -> str:
        return f"{self.base_url}/{request.call}"


class CredexHttpApi(_Config):
    """:class:`~flows.credex.api.CredexApi` over HTTP with a blocking ``httpx.Client`` (one
    connection pool, shared by the threads that call it). Close it with :meth:`close`."""

    blocking = True

    def __init__(
        self,
        base_url: str,
        client_api_key: str,
        *,
        timeouts: Timeouts = Timeouts(),
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, client_api_key, timeouts, retries)
        self._http = httpx.Client(timeout=timeouts.httpx(), transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CredexHttpApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, request: Request[T]) -> T:
        """Send ``request`` (retrying a call that changes nothing) and return its result.
        No attempt starts, nor waits, past ``timeouts.total`` from the first."""
        deadline = time.monotonic() + self.timeouts.total
        attempts = self._attempts(request)
        for attempt in range(attempts):
            left = deadline - time.monotonic()
            try:
                answer = self._http.post(
                    self._url(request),
                    content=request.content(),
                    headers=request.headers(self._client_key),
                    timeout=self.timeouts.httpx(left),
                )
            except httpx.RequestError as exc:
                error = _transport_error(request.call, exc)
            else:
                if answer.status_code not in RETRYABLE:
                    return outcome(request, answer.status_code, answer.content, self._hide)
                error = _status_error(request, answer.status_code, answer.content, self._hide)
            pause, left = _pause(attempt), deadline - time.monotonic()
            if attempt == attempts - 1 or not _retryable(error) or left - pause <= 0.05:
                raise error
            time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt raises

    # The CredexApi protocol, call by call.

    def login(self, phone: str) -> LoginResult:
        return self.send(login(phone))

    def onboard_member(
        self,
        firstname: str,
        lastname: str,
        phone: str,
        default_denom: str = "USD",
        *,
        idempotency_key: str | None = None,
    ) -> LoginResult:
        return self.send(onboard_member(firstname, lastname, phone, default_denom, idempotency_key))

    def get_member_dashboard_by_phone(self, phone: str, *, token: str) -> Dashboard:
        return self.send(dashboard(phone, token))

    def get_account_by_handle(self, handle: str, *, token: str) -> AccountRef:
        return self.send(account_by_handle(handle, token))

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
        request = create_credex(
            issuer_account_id, receiver_account_id, denomination, amount, token, idempotency_key
        )
        return self.send(request)

    def accept_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        return self.send(settle("acceptCredex", credex_id, token, idempotency_key))

    def decline_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        return self.send(settle("declineCredex", credex_id, token, idempotency_key))

    def cancel_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        return self.send(settle("cancelCredex", credex_id, token, idempotency_key))

    def create_recurring(
        self, account_id: str, *, token: str, idempotency_key: str | None = None
    ) -> RecurringCreated:
        return self.send(create_recurring(account_id, token, idempotency_key))

    def get_ledger(
        self, account_id: str, start_row: int, num_rows: int, *, token: str
    ) -> LedgerPage:
        return self.send(ledger(account_id, start_row, num_rows, token))


class AsyncCredexHttpApi(_Config):
    """The same calls on ``httpx.AsyncClient``, for ``async def`` handlers on an
    :class:`fsm.AsyncEngine`'s loop. Close it with :meth:`aclose`."""

    def __init__(
        self,
        base_url: str,
        client_api_key: str,
        *,
        timeouts: Timeouts = Timeouts(),
        retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, client_api_key, timeouts, retries)
        self._http = httpx.AsyncClient(timeout=timeouts.httpx(), transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncCredexHttpApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(self, request: Request[T]) -> T:
        """:meth:`CredexHttpApi.send`, awaited; each attempt is also cut off at the deadline
        as a whole (httpx's read timeout applies to each read)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total
        attempts = self._attempts(request)
        for attempt in range(attempts):
            left = deadline - loop.time()
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    answer = await self._http.post(
                        self._url(request),
                        content=request.content(),
                        headers=request.headers(self._client_key),
                        timeout=self.timeouts.httpx(left),
                    )
            except (httpx.RequestError, TimeoutError) as exc:
                error = _transport_error(request.call, exc)
            else:
                if answer.status_code not in RETRYABLE:
                    return outcome(request, answer.status_code, answer.content, self._hide)
                error = _status_error(request, answer.status_code, answer.content, self._hide)
            pause, left = _pause(attempt), deadline - loop.time()
            if attempt == attempts - 1 or not _retryable(error) or left - pause <= 0.05:
                raise error
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt raises

    async def login(self, phone: str) -> LoginResult:
        return await self.send(login(phone))

    async def onboard_member(
        self,
        firstname: str,
        lastname: str,
        phone: str,
        default_denom: str = "USD",
        *,
        idempotency_key: str | None = None,
    ) -> LoginResult:
        request = onboard_member(firstname, lastname, phone, default_denom, idempotency_key)
        return await self.send(request)

    async def get_member_dashboard_by_phone(self, phone: str, *, token: str) -> Dashboard:
        return await self.send(dashboard(phone, token))

    async def get_account_by_handle(self, handle: str, *, token: str) -> AccountRef:
        return await self.send(account_by_handle(handle, token))

    async def create_credex(
        self,
        issuer_account_id: str,
        receiver_account_id: str,
        denomination: str,
        amount: float,
        *,
        token: str,
        idempotency_key: str | None = None,
    ) -> CredexCreated:
        request = create_credex(
            issuer_account_id, receiver_account_id, denomination, amount, token, idempotency_key
        )
        return await self.send(request)

    async def accept_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        return await self.send(settle("acceptCredex", credex_id, token, idempotency_key))

    async def decline_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        return await self.send(settle("declineCredex", credex_id, token, idempotency_key))

    async def cancel_credex(
        self, credex_id: str, *, token: str, idempotency_key: str | None = None
    ) -> CredexUpdated:
        return await self.send(settle("cancelCredex", credex_id, token, idempotency_key))

    async def create_recurring(
        self, account_id: str, *, token: str, idempotency_key: str | None = None
    ) -> RecurringCreated:
        return await self.send(create_recurring(account_id, token, idempotency_key))

    async def get_ledger(
        self, account_id: str, start_row: int, num_rows: int, *, token: str
    ) -> LedgerPage:
        return await self.send(ledger(account_id, start_row, num_rows, token))
