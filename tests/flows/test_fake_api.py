"""The in-memory Credex API: real JWTs, offers that really move, and the failures tests inject."""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Callable
from typing import Any

import jwt
import msgspec
import pytest

from flows.credex.api import (
    Account,
    AccountNotFound,
    ApiError,
    ApiResponseError,
    CredexApi,
    Dashboard,
    LoginResult,
    Member,
    MemberNotFound,
    Unauthorized,
    decode_response,
)
from flows.credex.fake import FakeCredexApi
from fsm.clock import FakeClock

ALICE, BOB, CAROL, DAN = "263770000001", "263770000002", "263770000003", "263770000004"
TTL = 900


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.25)


@pytest.fixture
def api(clock: FakeClock) -> FakeCredexApi:
    return FakeCredexApi(clock=clock, token_ttl=TTL)


def token_of(api: FakeCredexApi, phone: str) -> str:
    return api.login(phone).token


def account(api: FakeCredexApi, phone: str) -> Account:
    dashboard = api.get_member_dashboard_by_phone(phone, token=token_of(api, phone))
    assert len(dashboard.accounts) == 1
    return dashboard.accounts[0]


def pending(api: FakeCredexApi, phone: str) -> tuple[list[str], list[str]]:
    acc = account(api, phone)
    return [o.credex_id for o in acc.pending_in], [o.credex_id for o in acc.pending_out]


def test_the_fake_satisfies_the_protocol(api: FakeCredexApi) -> None:
    port: CredexApi = api  # mypy checks the structural match; this checks it at run time too
    assert port.login(BOB).dashboard.member.member_handle == "bob"


# --- login and seeded data --------------------------------------------------------------------


def test_login_of_a_known_member_returns_the_dashboard(api: FakeCredexApi) -> None:
    result = api.login(ALICE)
    assert result.dashboard.member == Member(
        member_id="mem-0001",
        member_tier=1,
        firstname="Alice",
        lastname="Moyo",
        member_handle="alice",
        default_denom="USD",
        remaining_available_usd=10.0,
    )
    (acc,) = result.dashboard.accounts
    assert (acc.account_id, acc.account_handle, acc.account_name) == (
        "acc-0001",
        "alice",
        "Alice Moyo Personal",
    )
    assert acc.is_owned_account
    assert [
        (o.credex_id, o.formatted_initial_amount, o.counterparty_handle) for o in acc.pending_in
    ] == [
        ("cx-0001", "12.50 USD", "dan"),
        ("cx-0002", "100.00 ZWG", "dan"),
    ]
    (out,) = acc.pending_out
    assert (out.credex_id, out.amount, out.denomination, out.counterparty_account_name) == (
        "cx-0003",
        7.25,
        "USD",
        "Carol Chirwa Personal",
    )
    # Settled history: +20 USD from Bob, -3 USD to Dan.
    assert acc.balance_data.secured_net_balances_by_denom == ("17.00 USD",)
    assert acc.balance_data.net_credex_assets_in_default_denom == "17.00 USD"


@pytest.mark.parametrize(
    ("phone", "handle", "tier", "incoming", "outgoing"),
    [
        (ALICE, "alice", 1, ["cx-0001", "cx-0002"], ["cx-0003"]),
        (BOB, "bob", 3, [], []),
        (CAROL, "carol_c", 2, ["cx-0003"], []),
        (DAN, "dan", 1, [], ["cx-0001", "cx-0002"]),
    ],
)
def test_seeded_members(
    api: FakeCredexApi,
    phone: str,
    handle: str,
    tier: int,
    incoming: list[str],
    outgoing: list[str],
) -> None:
    member = api.login(phone).dashboard.member
    assert (member.member_handle, member.member_tier) == (handle, tier)
    assert pending(api, phone) == (incoming, outgoing)


def test_login_of_an_unknown_phone_raises_member_not_found(api: FakeCredexApi) -> None:
    with pytest.raises(MemberNotFound) as caught:
        api.login("263779999999")
    assert (caught.value.status, caught.value.call) == (404, "login")
    assert isinstance(caught.value, ApiError)


# --- tokens -----------------------------------------------------------------------------------


def test_token_is_a_real_hs256_jwt_with_exp_iat_plus_ttl(
    api: FakeCredexApi, clock: FakeClock
) -> None:
    token = token_of(api, ALICE)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(
        token, api.verification_key, algorithms=["HS256"], options={"verify_exp": False}
    )
    assert claims["sub"] == "mem-0001"
    assert claims["phone"] == ALICE
    assert claims["iat"] == math.floor(clock.now())
    assert claims["exp"] == claims["iat"] + TTL
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, b"another-key-of-at-least-32-bytes!!", algorithms=["HS256"])


def test_every_login_issues_a_distinct_token(api: FakeCredexApi) -> None:
    assert token_of(api, ALICE) != token_of(api, ALICE)


def _tampered(token: str) -> str:
    """Swap the payload for Bob's claims, keeping Alice's signature."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"], claims["phone"] = "mem-0002", BOB
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _claims(api: FakeCredexApi, token: str) -> dict[str, Any]:
    return jwt.decode(
        token, api.verification_key, algorithms=["HS256"], options={"verify_exp": False}
    )


def _after(clock: FakeClock, seconds: float, token: str) -> str:
    clock.advance(seconds)
    return token


BAD_TOKENS: dict[str, Callable[[FakeCredexApi, FakeClock, str], str]] = {
    "missing": lambda api, clock, good: "",
    "garbage": lambda api, clock, good: "not.a.jwt",
    "tampered": lambda api, clock, good: _tampered(good),
    "alg none": lambda api, clock, good: jwt.encode(_claims(api, good), None, algorithm="none"),
    "wrong key": lambda api, clock, good: jwt.encode(
        _claims(api, good), b"x" * 32 + b"-a-different-key", algorithm="HS256"
    ),
    "no exp": lambda api, clock, good: jwt.encode(
        {k: v for k, v in _claims(api, good).items() if k != "exp"},
        api.verification_key,
        algorithm="HS256",
    ),
    "expired": lambda api, clock, good: _after(clock, TTL, good),
    "phone of another member": lambda api, clock, good: jwt.encode(
        _claims(api, good) | {"phone": BOB}, api.verification_key, algorithm="HS256"
    ),
    "unknown member": lambda api, clock, good: jwt.encode(
        _claims(api, good) | {"sub": "mem-9999"}, api.verification_key, algorithm="HS256"
    ),
}

TOKEN_CALLS: dict[str, Callable[[FakeCredexApi, str], object]] = {
    "getMemberDashboardByPhone": lambda api, t: api.get_member_dashboard_by_phone(ALICE, token=t),
    "getAccountByHandle": lambda api, t: api.get_account_by_handle("bob", token=t),
    "createCredex": lambda api, t: api.create_credex("acc-0001", "acc-0002", "USD", 5, token=t),
    "acceptCredex": lambda api, t: api.accept_credex("cx-0001", token=t),
    "declineCredex": lambda api, t: api.decline_credex("cx-0001", token=t),
    "cancelCredex": lambda api, t: api.cancel_credex("cx-0003", token=t),
    "createRecurring": lambda api, t: api.create_recurring("acc-0001", token=t),
    "getLedger": lambda api, t: api.get_ledger("acc-0001", 0, 5, token=t),
}


@pytest.mark.parametrize("call", TOKEN_CALLS)
@pytest.mark.parametrize("bad", BAD_TOKENS)
def test_token_calls_refuse_bad_tokens_and_change_nothing(
    api: FakeCredexApi, clock: FakeClock, call: str, bad: str
) -> None:
    token = BAD_TOKENS[bad](api, clock, token_of(api, ALICE))
    before = pending(api, ALICE), pending(api, BOB)
    with pytest.raises(Unauthorized) as caught:
        TOKEN_CALLS[call](api, token)
    assert (caught.value.status, caught.value.call) == (401, call)
    assert (pending(api, ALICE), pending(api, BOB)) == before
    assert api.login(ALICE).dashboard.member.member_tier == 1  # createRecurring did not run
    if token:
        assert token not in str(caught.value) and token not in repr(caught.value)


@pytest.mark.parametrize("call", TOKEN_CALLS)
def test_token_calls_accept_a_good_token(api: FakeCredexApi, call: str) -> None:
    result = TOKEN_CALLS[call](api, token_of(api, ALICE))
    assert isinstance(result, msgspec.Struct)
    assert api.calls[-1][0] == call


def test_token_expires_at_exp_on_the_injected_clock(api: FakeCredexApi, clock: FakeClock) -> None:
    token = token_of(api, ALICE)
    exp = _claims(api, token)["exp"]
    clock.advance(exp - clock.now() - 0.01)
    assert api.get_ledger("acc-0001", 0, 1, token=token).entries  # still valid just before exp
    clock.advance(0.01)
    with pytest.raises(Unauthorized, match="expired"):
        api.get_ledger("acc-0001", 0, 1, token=token)
    assert api.get_ledger("acc-0001", 0, 1, token=token_of(api, ALICE)).entries


def test_expire_tokens_invalidates_only_tokens_issued_so_far(api: FakeCredexApi) -> None:
    old = token_of(api, ALICE)
    api.expire_tokens()
    with pytest.raises(Unauthorized, match="expired"):
        api.get_member_dashboard_by_phone(ALICE, token=old)
    fresh = token_of(api, ALICE)
    assert api.get_member_dashboard_by_phone(ALICE, token=fresh).member.member_handle == "alice"


def test_rotate_secret_breaks_old_signatures_and_changes_the_key(api: FakeCredexApi) -> None:
    old_key, old = api.verification_key, token_of(api, ALICE)
    api.rotate_secret()
    assert api.verification_key != old_key and len(api.verification_key) >= 32
    with pytest.raises(Unauthorized, match="invalid token"):
        api.get_ledger("acc-0001", 0, 1, token=old)
    new = token_of(api, ALICE)
    jwt.decode(new, api.verification_key, algorithms=["HS256"], options={"verify_exp": False})


def test_revoke_invalidates_one_token(api: FakeCredexApi) -> None:
    first, second = token_of(api, ALICE), token_of(api, ALICE)
    api.revoke(first)
    with pytest.raises(Unauthorized, match="revoked"):
        api.get_ledger("acc-0001", 0, 1, token=first)
    assert api.get_ledger("acc-0001", 0, 1, token=second).entries


def test_dashboard_of_another_member_is_refused(api: FakeCredexApi) -> None:
    with pytest.raises(ApiError) as caught:
        api.get_member_dashboard_by_phone(BOB, token=token_of(api, ALICE))
    assert caught.value.status == 403


# --- offers move ------------------------------------------------------------------------------


def test_create_then_accept_moves_the_offer_and_settles_it(
    api: FakeCredexApi, clock: FakeClock
) -> None:
    alice, bob = token_of(api, ALICE), token_of(api, BOB)
    created = api.create_credex("acc-0001", "acc-0002", "USD", 5, token=alice)
    assert created.credex_id == "cx-0006"
    assert pending(api, ALICE) == (["cx-0001", "cx-0002"], ["cx-0003", "cx-0006"])
    (offer,) = account(api, BOB).pending_in
    assert (offer.formatted_initial_amount, offer.counterparty_handle) == ("5.00 USD", "alice")
    assert (offer.counterparty_account_name, offer.amount) == ("Alice Moyo Personal", 5.0)

    clock.advance(60)
    updated = api.accept_credex("cx-0006", token=bob)
    assert (updated.credex_id, updated.status) == ("cx-0006", "ACCEPTED")
    assert pending(api, BOB) == ([], [])
    assert pending(api, ALICE) == (["cx-0001", "cx-0002"], ["cx-0003"])
    # Bob had -20 USD (he paid Alice); he now has -15. Alice: 17 - 5 = 12.
    assert account(api, BOB).balance_data.net_credex_assets_in_default_denom == "-15.00 USD"
    assert account(api, ALICE).balance_data.secured_net_balances_by_denom == ("12.00 USD",)
    entry = api.get_ledger("acc-0002", 0, 1, token=bob).entries[0]
    assert (entry.credex_id, entry.formatted_amount) == ("cx-0006", "+5.00 USD")
    assert (entry.counterparty, entry.timestamp) == ("Alice Moyo Personal", "2023-11-14T22:14:20Z")
    assert api.get_ledger("acc-0001", 0, 1, token=alice).entries[0].formatted_amount == "-5.00 USD"


def test_decline_removes_the_offer_from_both_sides(api: FakeCredexApi) -> None:
    result = api.decline_credex("cx-0001", token=token_of(api, ALICE))
    assert result.status == "DECLINED"
    assert pending(api, ALICE) == (["cx-0002"], ["cx-0003"])
    assert pending(api, DAN) == ([], ["cx-0002"])
    ledger = api.get_ledger("acc-0001", 0, 10, token=token_of(api, ALICE))
    assert "cx-0001" not in [e.credex_id for e in ledger.entries]


def test_cancel_removes_the_offer_from_both_sides(api: FakeCredexApi) -> None:
    assert api.cancel_credex("cx-0003", token=token_of(api, ALICE)).status == "CANCELLED"
    assert pending(api, ALICE) == (["cx-0001", "cx-0002"], [])
    assert pending(api, CAROL) == ([], [])


@pytest.mark.parametrize(
    ("phone", "act", "credex_id", "status"),
    [
        (ALICE, "accept", "cx-9999", 404),
        (ALICE, "cancel", "cx-9999", 404),
        (BOB, "accept", "cx-0001", 403),  # not Bob's offer
        (ALICE, "cancel", "cx-0001", 403),  # incoming to Alice: she may not cancel it
        (ALICE, "accept", "cx-0003", 403),  # outgoing from Alice: only Carol may accept it
        (ALICE, "accept", "cx-0004", 409),  # already accepted
    ],
)
def test_settling_someone_elses_or_a_settled_or_unknown_credex_fails(
    api: FakeCredexApi, phone: str, act: str, credex_id: str, status: int
) -> None:
    before = pending(api, ALICE)
    settle = {"accept": api.accept_credex, "cancel": api.cancel_credex}[act]
    with pytest.raises(ApiError) as caught:
        settle(credex_id, token=token_of(api, phone))
    assert caught.value.status == status and credex_id in caught.value.message
    assert pending(api, ALICE) == before


@pytest.mark.parametrize(
    ("issuer", "receiver", "denom", "amount", "status"),
    [
        ("acc-0001", "acc-0002", "USD", 0, 400),
        ("acc-0001", "acc-0002", "USD", -1.5, 400),
        ("acc-0001", "acc-0002", "USD", math.nan, 400),
        ("acc-0001", "acc-0002", "USD", math.inf, 400),
        ("acc-0001", "acc-0002", "EUR", 5, 400),
        ("acc-0001", "acc-0002", "usd", 5, 400),
        ("acc-0001", "acc-9999", "USD", 5, 404),
        ("acc-0001", "acc-0001", "USD", 5, 400),
        ("acc-0002", "acc-0001", "USD", 5, 403),  # Alice cannot spend from Bob's account
    ],
)
def test_create_credex_validates_and_creates_nothing_on_error(
    api: FakeCredexApi, issuer: str, receiver: str, denom: str, amount: float, status: int
) -> None:
    with pytest.raises(ApiError) as caught:
        api.create_credex(issuer, receiver, denom, amount, token=token_of(api, ALICE))
    assert (caught.value.status, caught.value.call) == (status, "createCredex")
    assert pending(api, ALICE) == (["cx-0001", "cx-0002"], ["cx-0003"])
    assert pending(api, BOB) == ([], [])


@pytest.mark.parametrize("denom", ["CXX", "XAU", "USD", "CAD", "ZWG"])
def test_create_credex_accepts_every_denomination(api: FakeCredexApi, denom: str) -> None:
    api.create_credex("acc-0002", "acc-0003", denom, 1.25, token=token_of(api, BOB))
    assert account(api, CAROL).pending_in[-1].formatted_initial_amount == f"1.25 {denom}"


def test_get_account_by_handle_lowercases_and_reports_unknown_handles(api: FakeCredexApi) -> None:
    token = token_of(api, ALICE)
    found = api.get_account_by_handle("  Carol_C ", token=token)
    assert (found.account_id, found.account_name, found.account_handle) == (
        "acc-0003",
        "Carol Chirwa Personal",
        "carol_c",
    )
    assert api.calls[-1] == ("getAccountByHandle", {"accountHandle": "carol_c"})
    with pytest.raises(AccountNotFound) as caught:
        api.get_account_by_handle("nobody", token=token)
    assert caught.value.status == 404


def test_onboard_member_creates_a_member_with_a_unique_handle(api: FakeCredexApi) -> None:
    first = api.onboard_member("Tendai", "Ndlovu", "263771111111")
    assert first.dashboard.member.member_handle == "tendai_ndlovu"
    assert first.dashboard.member.member_tier == 1
    (acc,) = first.dashboard.accounts
    assert (acc.pending_in, acc.pending_out) == ((), ())
    assert acc.balance_data.net_credex_assets_in_default_denom == "0.00 USD"
    second = api.onboard_member("Tendai", "Ndlovu", "263772222222", default_denom="ZWG")
    assert second.dashboard.member.member_handle == "tendai_ndlovu_2"
    assert second.dashboard.accounts[0].default_denom == "ZWG"
    # The new member can log in and be found and paid.
    assert api.login("263771111111").dashboard.member.member_id == first.dashboard.member.member_id
    ref = api.get_account_by_handle("tendai_ndlovu", token=first.token)
    api.create_credex("acc-0001", ref.account_id, "USD", 2, token=token_of(api, ALICE))
    assert [o.counterparty_handle for o in account(api, "263771111111").pending_in] == ["alice"]


@pytest.mark.parametrize(
    ("first", "last", "phone", "denom", "status"),
    [
        ("Alice", "Moyo", ALICE, "USD", 409),
        (" ", "X", "2637733", "USD", 400),
        ("A", "B", "1", "EUR", 400),
    ],
)
def test_onboard_member_refuses_bad_requests(
    api: FakeCredexApi, first: str, last: str, phone: str, denom: str, status: int
) -> None:
    with pytest.raises(ApiError) as caught:
        api.onboard_member(first, last, phone, default_denom=denom)
    assert (caught.value.status, caught.value.call) == (status, "onboardMember")


def test_create_recurring_upgrades_to_tier_3_once(api: FakeCredexApi) -> None:
    token = token_of(api, ALICE)
    assert api.create_recurring("acc-0001", token=token).recurring_id == "rec-0001"
    member = api.get_member_dashboard_by_phone(ALICE, token=token).member
    assert (member.member_tier, member.remaining_available_usd) == (3, 1000.0)
    assert api.calls[-2] == (
        "createRecurring",
        {
            "sourceAccountID": "acc-0001",
            "templateType": "MEMBERTIER_SUBSCRIPTION",
            "memberTier": 3,
            "payFrequency": 28,
            "amount": 1.0,
            "denomination": "USD",
        },
    )
    with pytest.raises(ApiError) as caught:
        api.create_recurring("acc-0001", token=token)
    assert caught.value.status == 409


def test_ledger_is_paged_newest_first(api: FakeCredexApi) -> None:
    token = token_of(api, ALICE)
    page1 = api.get_ledger("acc-0001", 0, 1, token=token)
    page2 = api.get_ledger("acc-0001", 1, 1, token=token)
    assert [(e.credex_id, e.formatted_amount, e.counterparty) for e in page1.entries] == [
        ("cx-0005", "-3.00 USD", "Dan Ncube Personal")
    ]
    assert page1.has_more
    assert [(e.credex_id, e.formatted_amount) for e in page2.entries] == [("cx-0004", "+20.00 USD")]
    assert not page2.has_more
    assert api.get_ledger("acc-0001", 5, 3, token=token).entries == ()
    with pytest.raises(ApiError) as caught:
        api.get_ledger("acc-0001", -1, 3, token=token)
    assert caught.value.status == 400
    with pytest.raises(ApiError) as caught:
        api.get_ledger("acc-0002", 0, 3, token=token)  # Bob's account
    assert caught.value.status == 403


# --- injected failures ------------------------------------------------------------------------


def test_fail_next_raises_once_before_doing_anything(api: FakeCredexApi) -> None:
    token = token_of(api, ALICE)
    api.fail_next("createCredex", ApiError(503, "createCredex", "service unavailable"))
    with pytest.raises(ApiError, match="service unavailable") as caught:
        api.create_credex("acc-0001", "acc-0002", "USD", 5, token=token)
    assert caught.value.status == 503
    assert pending(api, BOB) == ([], [])
    assert api.create_credex("acc-0001", "acc-0002", "USD", 5, token=token).credex_id == "cx-0006"
    assert api.count("createCredex") == 2


def test_fail_next_can_make_login_unauthorized_or_not_found(api: FakeCredexApi) -> None:
    api.fail_next("login", MemberNotFound())
    with pytest.raises(MemberNotFound):
        api.login(ALICE)
    assert api.login(ALICE).dashboard.member.member_handle == "alice"


def test_failure_injection_refuses_unknown_call_names(api: FakeCredexApi) -> None:
    with pytest.raises(ValueError, match="create_credex"):
        api.fail_next("create_credex", ApiError(500, "x", "y"))
    with pytest.raises(ValueError, match="expected one of"):
        api.raw_response_override("dashboard", {})


def test_raw_response_override_missing_field_is_an_api_response_error(api: FakeCredexApi) -> None:
    token = token_of(api, ALICE)
    good = msgspec.to_builtins(api.get_member_dashboard_by_phone(ALICE, token=token))
    del good["member"]["memberID"]
    api.raw_response_override("getMemberDashboardByPhone", good)
    with pytest.raises(ApiResponseError) as caught:
        api.get_member_dashboard_by_phone(ALICE, token=token)
    assert (caught.value.status, caught.value.call) == (502, "getMemberDashboardByPhone")
    assert str(caught.value).endswith("missing required field `memberID` - at `$.member`")
    # Once only: the next response is the real one again.
    assert api.get_member_dashboard_by_phone(ALICE, token=token).member.member_id == "mem-0001"


def test_raw_response_override_wrong_type_names_the_path(api: FakeCredexApi) -> None:
    token = token_of(api, ALICE)
    raw = msgspec.to_builtins(api.get_member_dashboard_by_phone(ALICE, token=token))
    raw["accounts"][0]["pendingInData"] = {"credexID": "cx-0001"}
    api.raw_response_override("getMemberDashboardByPhone", raw)
    with pytest.raises(
        ApiResponseError, match=r"got `object` - at `\$\.accounts\[0\]\.pendingInData`"
    ):
        api.get_member_dashboard_by_phone(ALICE, token=token)


def test_raw_response_override_keeps_the_side_effect(api: FakeCredexApi) -> None:
    token = token_of(api, ALICE)
    api.raw_response_override("createCredex", {"id": "cx-0006"})
    with pytest.raises(ApiResponseError, match="credexID"):
        api.create_credex("acc-0001", "acc-0002", "USD", 5, token=token)
    assert pending(api, BOB) == (["cx-0006"], [])  # the server did it; only the answer was odd


def test_login_shape_error_does_not_leak_the_token(api: FakeCredexApi) -> None:
    real = api.login(ALICE)
    api.raw_response_override("login", {"token": real.token, "dashboard": []})
    with pytest.raises(ApiResponseError) as caught:
        api.login(ALICE)
    assert "at `$.dashboard`" in str(caught.value)
    assert real.token not in str(caught.value) and real.token not in repr(caught.value)


def test_decode_response_is_strict_and_ignores_unknown_keys() -> None:
    raw = {
        "memberID": "m1",
        "memberTier": 2,
        "firstname": "A",
        "lastname": "B",
        "memberHandle": "ab",
        "defaultDenom": "USD",
        "remainingAvailableUSD": 10,
        "addedLater": True,
    }
    assert decode_response("x", raw, Member).remaining_available_usd == 10.0
    with pytest.raises(ApiResponseError, match=r"Expected `int`, got `str` - at `\$\.memberTier`"):
        decode_response("getMemberDashboardByPhone", raw | {"memberTier": "2"}, Member)
    with pytest.raises(ApiResponseError, match=r"got `array` - at `\$`$"):
        decode_response("login", [], LoginResult)


# --- recording, secrecy, threads --------------------------------------------------------------


def test_calls_are_recorded_without_tokens(api: FakeCredexApi) -> None:
    token = token_of(api, ALICE)
    api.create_credex("acc-0001", "acc-0002", "CAD", 2.5, token=token)
    api.accept_credex("cx-0006", token=token_of(api, BOB))
    assert [name for name, _ in api.calls] == ["login", "createCredex", "login", "acceptCredex"]
    assert api.calls[1] == (
        "createCredex",
        {
            "issuerAccountID": "acc-0001",
            "receiverAccountID": "acc-0002",
            "Denomination": "CAD",
            "InitialAmount": 2.5,
            "credexType": "PURCHASE",
            "OFFERSorREQUESTS": "OFFERS",
            "securedCredex": True,
        },
    )
    assert (api.count("login"), api.count("acceptCredex"), api.count("getLedger")) == (2, 1, 0)
    assert token not in repr(api.calls)


def test_results_and_errors_never_show_the_token_or_the_secret(api: FakeCredexApi) -> None:
    result = api.login(ALICE)
    shown = [repr(result), str(result), repr(result.__rich_repr__())]
    assert all(result.token not in text for text in shown)
    assert "token=<redacted>" in repr(result)
    assert "alice" in repr(result)  # the rest is still shown
    errors: list[ApiError] = []
    for bad in (result.token + "x", _tampered(result.token)):
        with pytest.raises(Unauthorized) as caught:
            api.get_ledger("acc-0001", 0, 1, token=bad)
        errors.append(caught.value)
    secret = api.verification_key.decode()
    for error in errors:
        for text in (str(error), repr(error), repr(error.__cause__), repr(error.__context__)):
            assert result.token not in text and secret not in text


def test_concurrent_offers_get_distinct_ids_and_all_land(api: FakeCredexApi) -> None:
    token = token_of(api, ALICE)
    ids: list[str] = []
    lock = threading.Lock()

    def offer() -> None:
        for _ in range(20):
            created = api.create_credex("acc-0001", "acc-0002", "USD", 1, token=token)
            with lock:
                ids.append(created.credex_id)

    threads = [threading.Thread(target=offer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 160
    assert len(account(api, BOB).pending_in) == 160
    assert api.count("createCredex") == 160


def test_dashboard_struct_is_frozen(api: FakeCredexApi) -> None:
    dashboard: Dashboard = api.login(ALICE).dashboard
    with pytest.raises(AttributeError):
        dashboard.member = dashboard.member  # type: ignore[misc]
