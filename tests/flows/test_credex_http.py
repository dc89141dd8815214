"""The Credex HTTP clients against the fake Credex API served on a loopback port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from adapters import AsyncMemoryStore
from flows.credex.api import (
    AccountNotFound,
    ApiError,
    ApiResponseError,
    MemberNotFound,
    Unauthorized,
)
from flows.credex.base import UNCLEAR, UNREACHABLE
from flows.credex.fake import FakeCredexApi
from flows.credex.fake_server import DEV_CLIENT_KEY, FakeCredexServer, Fault, serving
from flows.credex.http import AsyncCredexHttpApi, CredexHttpApi, Timeouts
from fsm import AsyncEngine, Context, Flow, Outcome, Stage, step
from tests.flows.conftest import ALICE, BOB, HttpBot

EVE = "263771111111"


@pytest.fixture
def server() -> Iterator[FakeCredexServer]:
    with serving(FakeCredexApi()) as running:
        yield running


def client_for(server: FakeCredexServer, **options: Any) -> CredexHttpApi:
    return CredexHttpApi(server.url, DEV_CLIENT_KEY, **options)


def every_call(api: Any) -> None:
    """Each of the ten calls once, in order (``api`` is the sync client)."""
    token = api.login(ALICE).token
    api.onboard_member("Eve", "Banda", EVE, idempotency_key="k-onboard")
    api.get_member_dashboard_by_phone(ALICE, token=token)
    assert api.get_account_by_handle(" Bob ", token=token).account_id == "acc-0002"
    api.create_credex("acc-0001", "acc-0002", "USD", 5.0, token=token, idempotency_key="k-offer")
    api.accept_credex("cx-0001", token=token, idempotency_key="k-accept")
    api.decline_credex("cx-0002", token=token, idempotency_key="k-decline")
    api.cancel_credex("cx-0003", token=token, idempotency_key="k-cancel")
    api.create_recurring("acc-0001", token=token, idempotency_key="k-tier")
    assert api.get_ledger("acc-0001", 0, 5, token=token).entries


async def every_call_async(api: AsyncCredexHttpApi) -> None:
    token = (await api.login(ALICE)).token
    await api.onboard_member("Eve", "Banda", EVE, idempotency_key="k-onboard")
    await api.get_member_dashboard_by_phone(ALICE, token=token)
    assert (await api.get_account_by_handle(" Bob ", token=token)).account_id == "acc-0002"
    await api.create_credex(
        "acc-0001", "acc-0002", "USD", 5.0, token=token, idempotency_key="k-offer"
    )
    await api.accept_credex("cx-0001", token=token, idempotency_key="k-accept")
    await api.decline_credex("cx-0002", token=token, idempotency_key="k-decline")
    await api.cancel_credex("cx-0003", token=token, idempotency_key="k-cancel")
    await api.create_recurring("acc-0001", token=token, idempotency_key="k-tier")
    assert (await api.get_ledger("acc-0001", 0, 5, token=token)).entries


KIND = {"credexType": "PURCHASE", "OFFERSorREQUESTS": "OFFERS", "securedCredex": True}
TIER = {
    "templateType": "MEMBERTIER_SUBSCRIPTION",
    "memberTier": 3,
    "payFrequency": 28,
    "amount": 1.0,
    "denomination": "USD",
}
#: (call, body, carries a bearer token, idempotency key) of every_call, as the server saw them.
EXPECTED = [
    ("login", {"phone": ALICE}, None, None),
    (
        "onboardMember",
        {"firstname": "Eve", "lastname": "Banda", "phone": EVE, "defaultDenom": "USD"},
        None,
        "k-onboard",
    ),
    ("getMemberDashboardByPhone", {"phone": ALICE}, True, None),
    ("getAccountByHandle", {"accountHandle": "bob"}, True, None),
    (
        "createCredex",
        {
            "issuerAccountID": "acc-0001",
            "receiverAccountID": "acc-0002",
            "Denomination": "USD",
            "InitialAmount": 5.0,
            **KIND,
        },
        True,
        "k-offer",
    ),
    ("acceptCredex", {"credexID": "cx-0001"}, True, "k-accept"),
    ("declineCredex", {"credexID": "cx-0002"}, True, "k-decline"),
    ("cancelCredex", {"credexID": "cx-0003"}, True, "k-cancel"),
    ("createRecurring", {"sourceAccountID": "acc-0001", **TIER}, True, "k-tier"),
    ("getLedger", {"accountID": "acc-0001", "startRow": 0, "numRows": 5}, True, None),
]


def seen(server: FakeCredexServer) -> list[tuple[str, Any, bool | None, str | None]]:
    for request in server.requests:
        assert request["client_key_ok"], request
        assert request["content_type"] == "application/json"
    return [(r["call"], r["body"], r["bearer"], r["idempotency_key"]) for r in server.requests]


def test_every_call_sends_its_path_headers_and_body(server: FakeCredexServer) -> None:
    with client_for(server) as api:
        every_call(api)
    assert seen(server) == EXPECTED
    # The fake verified every bearer token for real, and applied every change once.
    assert server.api.count("createCredex") == 1 and not server.api.replays


def test_the_async_client_sends_the_same_requests(server: FakeCredexServer) -> None:
    async def run() -> None:
        async with AsyncCredexHttpApi(server.url, DEV_CLIENT_KEY) as api:
            await every_call_async(api)

    asyncio.run(run())
    assert seen(server) == EXPECTED


def test_errors_map_to_the_ports_exceptions(server: FakeCredexServer) -> None:
    with client_for(server) as api:
        with pytest.raises(MemberNotFound):
            api.login("263779999999")
        token = api.login(ALICE).token
        with pytest.raises(AccountNotFound):
            api.get_account_by_handle("nobody", token=token)
        with pytest.raises(Unauthorized):
            api.get_member_dashboard_by_phone(ALICE, token="not-a-jwt")
        server.api.expire_tokens()
        with pytest.raises(Unauthorized, match="token expired"):
            api.get_member_dashboard_by_phone(ALICE, token=token)
        token = api.login(ALICE).token
        with pytest.raises(ApiError) as refused:
            api.accept_credex("cx-0003", token=token)  # Alice's own outgoing offer
        assert refused.value.status == 403 and "not yours" in refused.value.message


def test_a_wrong_client_key_is_refused(server: FakeCredexServer) -> None:
    with CredexHttpApi(server.url, "wrong-key") as api, pytest.raises(ApiError) as refused:
        api.login(ALICE)
    assert refused.value.status == 403 and server.api.count("login") == 0


def test_no_secret_in_a_repr_or_an_error(server: FakeCredexServer) -> None:
    with client_for(server) as api:
        token = api.login(ALICE).token
        assert DEV_CLIENT_KEY not in repr(api)
        server.faults.shape("getMemberDashboardByPhone")
        with pytest.raises(ApiResponseError) as garbled:
            api.get_member_dashboard_by_phone(ALICE, token=token)
    assert token not in str(garbled.value) and "eyJ" not in repr(garbled.value)


def test_an_echoed_token_or_client_key_is_redacted(server: FakeCredexServer) -> None:
    with client_for(server) as api:
        token = api.login(ALICE).token
        call = "getMemberDashboardByPhone"
        server.api.fail_next(call, ApiError(400, call, f"bad token {token} ({token[:20]}x)"))
        with pytest.raises(ApiError) as jwt_echo:
            api.get_member_dashboard_by_phone(ALICE, token=token)
        server.api.fail_next(call, ApiError(400, call, f"client key {DEV_CLIENT_KEY} refused"))
        with pytest.raises(ApiError) as key_echo:
            api.get_member_dashboard_by_phone(ALICE, token=token)
    assert jwt_echo.value.message.startswith("bad token <redacted>")
    assert key_echo.value.message == "client key <redacted> refused"
    for caught in (jwt_echo, key_echo):
        assert token not in str(caught.value) and DEV_CLIENT_KEY not in str(caught.value)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_total_timeout_bounds_every_attempt(server: FakeCredexServer, kind: str) -> None:
    """Retries stop at ``total``: each attempt here takes 0.6 s, so only two start in 1 s,
    and an answer slower than what is left is cut off (504)."""
    server.faults.add(Fault("delay", "login", count=10, seconds=0.6))
    server.faults.add(Fault("status", "login", count=10, status=503))
    timeouts = Timeouts(connect=1.0, read=5.0, total=1.0)
    with pytest.raises(ApiError) as failed:
        if kind == "sync":
            with client_for(server, retries=5, timeouts=timeouts) as api:
                api.login(ALICE)
        else:

            async def run() -> None:
                async with AsyncCredexHttpApi(
                    server.url, DEV_CLIENT_KEY, retries=5, timeouts=timeouts
                ) as api:
                    await api.login(ALICE)

            asyncio.run(run())
    assert failed.value.status in (503, 504)
    assert len(server.seen("login")) == 2  # not the 6 that retries=5 would allow


def test_faults_of_one_kind_fire_in_order(server: FakeCredexServer) -> None:
    server.faults.status(503, "login")
    server.faults.status(502, "login")
    server.faults.shape("login")
    statuses = []
    with client_for(server, retries=0) as api:
        for _ in range(3):
            try:
                api.login(ALICE)
            except ApiError as exc:
                statuses.append(exc.status)
        assert api.login(ALICE).dashboard.member.firstname == "Alice"
    assert statuses == [503, 502, 502]  # the shape fault waited for a 200 (then: 502 garbled)


def test_a_call_that_changes_nothing_is_retried(server: FakeCredexServer) -> None:
    server.faults.status(503, "login")
    server.faults.drop("getMemberDashboardByPhone")
    with client_for(server, retries=2) as api:
        token = api.login(ALICE).token
        assert api.get_member_dashboard_by_phone(ALICE, token=token).member.firstname == "Alice"
    assert [r["call"] for r in server.requests] == ["login"] * 2 + ["getMemberDashboardByPhone"] * 2


def test_retries_stop_at_the_limit(server: FakeCredexServer) -> None:
    server.faults.status(503, "login", count=5)
    with client_for(server, retries=2) as api, pytest.raises(ApiError) as failed:
        api.login(ALICE)
    assert failed.value.status == 503 and len(server.seen("login")) == 3


def test_a_call_that_changes_something_is_sent_once(server: FakeCredexServer) -> None:
    with client_for(server, retries=3) as api:
        token = api.login(ALICE).token
        server.faults.status(503, "createCredex")
        with pytest.raises(ApiError) as failed:
            api.create_credex("acc-0001", "acc-0002", "USD", 1.0, token=token, idempotency_key="k")
        server.faults.drop("acceptCredex")
        with pytest.raises(ApiError) as dropped:
            api.accept_credex("cx-0001", token=token, idempotency_key="k2")
    assert failed.value.status == 503 and dropped.value.status == 503
    assert len(server.seen("createCredex")) == 1 and len(server.seen("acceptCredex")) == 1


def test_a_timeout_is_a_504_within_the_read_timeout(server: FakeCredexServer) -> None:
    server.faults.delay(2.0, "createCredex")
    with client_for(server, timeouts=Timeouts(connect=1.0, read=0.3)) as api:
        token = api.login(ALICE).token
        started = time.monotonic()
        with pytest.raises(ApiError) as failed:
            api.create_credex("acc-0001", "acc-0002", "USD", 1.0, token=token, idempotency_key="k")
        waited = time.monotonic() - started
    assert failed.value.status == 504 and failed.value.message == "timed out"
    assert waited < 1.5


def test_an_unreachable_api_is_a_503() -> None:
    with serving() as gone:
        url = gone.url
    with CredexHttpApi(url, DEV_CLIENT_KEY, retries=1) as api, pytest.raises(ApiError) as failed:
        api.login(ALICE)
    assert failed.value.status == 503 and failed.value.message == "not reachable"


def test_faults_can_be_set_over_http(server: FakeCredexServer) -> None:
    import httpx

    fault = {"kind": "status", "call": "login", "status": 502, "count": 1}
    assert httpx.post(f"{server.url}/_faults", json=fault).status_code == 200
    bad = httpx.post(f"{server.url}/_faults", json={"kind": "explode"})
    assert bad.status_code == 400 and "unknown fault kind" in bad.text
    with client_for(server, retries=0) as api, pytest.raises(ApiError) as failed:
        api.login(ALICE)
    assert failed.value.status == 502
    with pytest.raises(ValueError, match="unknown Credex call"):
        Fault("status", "transfer")


# --- the reference bot over HTTP --------------------------------------------------------------


def to_confirm(bot: HttpBot) -> None:
    for text in ("hi", "1", "25", "bob"):
        bot.engine.handle(ALICE, text)
    assert bot.engine.peek(ALICE).step == "confirm"  # type: ignore[union-attr]


def test_an_expired_token_signs_the_member_in_again(http_bot: HttpBot) -> None:
    bot = http_bot
    to_confirm(bot)
    bot.api.expire_tokens()
    asked = bot.engine.handle(ALICE, "1")
    assert "sign in again" in asked.texts[0] and asked.snapshot.stage == "auth"
    done = bot.engine.handle(ALICE, "ok")
    assert any("Offer of 25.00 USD sent to @bob" in t for t in done.texts)
    assert bot.api.count("login") == 2 and bot.api.count("createCredex") == 2
    assert len(bot.server.seen("createCredex")) == 2  # the 401, then the offer


def test_a_503_after_the_credex_was_made_creates_one_credex(http_bot: HttpBot) -> None:
    bot = http_bot
    to_confirm(bot)
    bot.server.faults.status(503, "createCredex", applied=True)  # made, then the gateway fails
    failed = bot.engine.handle(ALICE, "1")
    assert UNREACHABLE.split(".")[0] in failed.texts[0]
    assert failed.snapshot.step == "confirm"
    done = bot.engine.handle(ALICE, "1")
    assert any("Offer of 25.00 USD sent to @bob" in t for t in done.texts)
    first, second = bot.server.seen("createCredex")
    assert first["idempotency_key"] == second["idempotency_key"] is not None
    assert len(bot.api.replays) == 1  # the second attempt was answered from the first
    pending_to_bob = [
        o for o in bot.api.login(BOB).dashboard.accounts[0].pending_in if o.amount == 25.0
    ]
    assert len(pending_to_bob) == 1


def test_a_timeout_keeps_the_offer_and_says_so(http_bot: HttpBot) -> None:
    bot = http_bot
    to_confirm(bot)
    bot.server.faults.delay(3.0, "createCredex", applied=True)  # read timeout is 2 s
    failed = bot.engine.handle(ALICE, "1")
    assert UNREACHABLE.split(".")[0] in failed.texts[0] and failed.snapshot.step == "confirm"
    assert failed.snapshot.data["amount"]["value"] == 25.0


def test_a_changed_response_shape_is_a_clear_reply_and_no_change(http_bot: HttpBot) -> None:
    bot = http_bot
    bot.engine.handle(ALICE, "hi")
    bot.engine.handle(ALICE, "1")
    before = bot.engine.peek(ALICE)
    assert before is not None and before.step == "amount"
    bot.engine.handle(ALICE, "25")
    bot.server.faults.shape("getAccountByHandle")
    answer = bot.engine.handle(ALICE, "bob")
    assert answer.texts[0].startswith(UNCLEAR.split(",")[0])
    after = bot.engine.peek(ALICE)
    assert after is not None
    assert (after.stage, after.step) == ("credex", "recipient")  # still asking for the handle
    assert "recipient" not in after.data and after.data["amount"]["value"] == 25.0


class Greeter(Flow):
    """A flow whose handler is ``async def``: it awaits the async client on the loop."""

    name = "greeter"

    takes_first_message = True
    stages = (Stage("start", ("hello",)),)

    def __init__(self, api: AsyncCredexHttpApi) -> None:
        self.api = api

    @step("start", "hello")
    async def hello(self, ctx: Context) -> Outcome:
        try:
            result = await self.api.login(ctx.user_key)
        except MemberNotFound:
            return ctx.stay("I do not know this number.")
        except ApiError:
            return ctx.stay("Credex is not answering.")
        return ctx.stay(f"Hello {result.dashboard.member.firstname}.")


def test_an_async_flow_awaits_the_async_client_on_asyncengine(server: FakeCredexServer) -> None:
    async def run() -> list[list[str]]:
        async with AsyncCredexHttpApi(server.url, DEV_CLIENT_KEY, retries=0) as api:
            engine = AsyncEngine(Greeter(api), AsyncMemoryStore())
            said = [(await engine.handle(ALICE, "hi")).texts]
            said.append((await engine.handle("263779999999", "hi")).texts)
            server.faults.status(503, "login")
            said.append((await engine.handle(ALICE, "hi again")).texts)
            return said

    assert asyncio.run(run()) == [
        ["Hello Alice."],
        ["I do not know this number."],
        ["Credex is not answering."],
    ]
    assert len(server.seen("login")) == 3
