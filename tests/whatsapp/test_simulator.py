"""The WhatsApp simulator (``fsm serve --simulator``): its API on a real server, and the page in
a real headless Chromium driven by Selenium."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest

from adapters import AsyncMemoryStore
from adapters.whatsapp.server import build_simulator_app
from adapters.whatsapp.simulator import Contact
from adapters.whatsapp.simulator.hub import Hub
from flows.credex import build_async_engine
from tests.redis_servers import free_port

from .conftest import serving

ALICE = "263770000001"


class Sim:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def say(self, user: str, **what: Any) -> httpx.Response:
        return self.http.post("/api/say", json={"user": user, **what})

    def session(self, user: str) -> dict[str, Any]:
        return self.http.get("/api/session", params={"user": user}).json()  # type: ignore[no-any-return]

    def events(
        self, user: str, until: Callable[[list[dict[str, Any]]], bool]
    ) -> list[dict[str, Any]]:
        """``user``'s events (the log replays on connect) until ``until`` holds for them; a
        stream quiet for 5 s fails the test instead of hanging it."""
        found: list[dict[str, Any]] = []
        with self.http.stream("GET", "/api/events", params={"user": user}, timeout=5) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    found.append(msgspec.json.decode(line[6:]))
                    if until(found):
                        return found
        raise AssertionError(f"the stream ended first: {found}")


def deliveries(count: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: sum(e["kind"] == "delivery" for e in events) >= count


@pytest.fixture
def sim() -> Iterator[Sim]:
    port = free_port()
    app = build_simulator_app(
        lambda store: build_async_engine(store),
        AsyncMemoryStore(),
        host="127.0.0.1",
        port=port,
        contacts=[Contact(ALICE, "Alice Moyo")],
    )
    with serving(app, port) as url:
        client = Sim(url)
        yield client
        client.http.close()


def test_a_message_goes_through_the_webhook_and_the_replies_come_back_as_events(sim: Sim) -> None:
    said = sim.say(ALICE, text="hi")
    assert said.status_code == 200 and said.json()["status"] == 200
    wamid = said.json()["id"]
    events = sim.events(ALICE, deliveries(1))
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "user" and events[0]["text"] == "hi" and events[0]["id"] == wamid
    bot = next(e for e in events if e["kind"] == "bot")
    assert bot["payload"]["interactive"]["type"] == "list"  # the menu, as the Graph API got it
    assert {"kind": "delivery", "id": wamid, "status": 200}.items() <= events[-1].items()
    session = sim.session(ALICE)["session"]
    assert (session["stage"], session["step"]) == ("menu", "dashboard")
    assert "token" not in session["auth"] and session["auth"]["subject"] == "mem-0001"
    assert "eyJ" not in sim.http.get("/api/session", params={"user": ALICE}).text


def test_a_tap_is_a_button_or_list_reply(sim: Sim) -> None:
    sim.say(ALICE, text="hi")
    tapped = sim.say(ALICE, reply={"kind": "list_reply", "id": "offer", "title": "Offer credex"})
    assert tapped.json()["status"] == 200
    assert sim.session(ALICE)["session"]["step"] == "amount"


def test_a_redelivery_is_applied_once(sim: Sim) -> None:
    assert sim.http.post("/api/redeliver", json={"user": ALICE}).status_code == 409
    first = sim.say(ALICE, text="hi").json()
    version = sim.session(ALICE)["session"]["version"]
    again = sim.http.post("/api/redeliver", json={"user": ALICE}).json()
    assert again == {"id": first["id"], "status": 200}
    assert sim.session(ALICE)["session"]["version"] == version  # nothing applied twice
    events = sim.events(ALICE, deliveries(2))  # everything up to the re-delivery's answer
    assert [e["kind"] for e in events].count("bot") == 1  # and nothing sent twice
    assert [e["kind"] for e in events].count("redelivered") == 1


def test_the_state_panel_hides_the_flows_sensitive_keys() -> None:
    """A flow's personal data (``sensitive``) is in the chat the user typed, never in the
    panel: the session's data shows those keys' values as <redacted>, at any depth."""
    from fsm import AsyncEngine
    from tests.fsm.sensitive_flow import ADDRESS, DRUG, Pharmacy

    port = free_port()
    app = build_simulator_app(
        lambda store: AsyncEngine(Pharmacy(), store),
        AsyncMemoryStore(),
        host="127.0.0.1",
        port=port,
        contacts=[Contact(ALICE, "Alice Moyo")],
    )
    with serving(app, port) as url:
        sim = Sim(url)
        try:
            for text in (DRUG, ADDRESS):
                assert sim.say(ALICE, text=text).json()["status"] == 200
            answer = sim.http.get("/api/session", params={"user": ALICE})
            data = answer.json()["session"]["data"]
        finally:
            sim.http.close()
    assert ADDRESS not in answer.text and DRUG not in answer.text
    assert data == {
        "drug": "<redacted>",
        "address": "<redacted>",
        "delivery": {"address": "<redacted>", "floor": 3},
        "note": "ring twice",
    }


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"user": "alice", "text": "hi"}, "phone number"),
        ({"user": ALICE}, "text must be"),
        ({"user": ALICE, "text": "x" * 4097}, "longer than"),
        ({"user": ALICE, "reply": {"kind": "poll", "id": "x"}}, "reply.kind"),
    ],
)
def test_bad_input_is_a_400_that_says_why(sim: Sim, body: dict[str, Any], problem: str) -> None:
    answer = sim.http.post("/api/say", json=body)
    assert answer.status_code == 400 and problem in answer.json()["error"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"content-type": "text/plain"}, 415),  # a form another site could post
        ({"content-type": "application/json", "origin": "https://evil.example"}, 403),
        ({"content-type": "application/json", "host": "rebind.evil.example"}, 403),
    ],
)
def test_other_sites_cannot_post_or_read(sim: Sim, headers: dict[str, str], status: int) -> None:
    raw = msgspec.json.encode({"user": ALICE, "text": "hi"})
    answer = sim.http.post("/api/say", content=raw, headers=headers)
    assert answer.status_code == status
    assert sim.session(ALICE)["session"] is None  # nothing was applied
    if "host" in headers:
        read = sim.http.get("/api/session", params={"user": ALICE}, headers=headers)
        assert read.status_code == 403


def test_the_page_allows_only_its_own_assets(sim: Sim) -> None:
    policy = sim.http.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in policy


def test_the_fake_graph_api_wants_the_bots_token(sim: Sim) -> None:
    refused = sim.http.post(
        "/graph/100000000000001/messages",
        json={"to": ALICE, "type": "text", "text": {"body": "spoofed"}},
        headers={"authorization": "Bearer guess"},
    )
    assert refused.status_code == 401 and refused.json()["error"]["code"] == 190


def test_the_page_and_its_assets_are_served_locally(sim: Sim) -> None:
    page = sim.http.get("/")
    assert page.status_code == 200 and "simulator.js" in page.text
    for asset in ("/static/simulator.js", "/static/simulator.css"):
        assert sim.http.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    assert "http" not in sim.http.get("/static/simulator.css").text


def test_a_slow_page_is_dropped_not_waited_for() -> None:
    async def run() -> None:
        hub = Hub(queue_size=2)
        stream = hub.stream(ALICE)
        assert await anext(stream) == b"retry: 1000\n\n"
        for n in range(3):
            hub.publish(ALICE, {"kind": "bot", "n": n})  # the third finds the queue full
        frames = [await anext(stream), await anext(stream)]
        assert all(b'"kind":"bot"' in f for f in frames)
        assert len(hub.log(ALICE)) == 3  # the log keeps everything for the next connect
        with pytest.raises(StopAsyncIteration):  # the stream ends: the page reconnects
            await anext(stream)

    asyncio.run(run())


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--port", "0"], "the simulator needs a fixed port"),
        (["--contact", "alice"], "NUMBER[=NAME], digits only"),
    ],
)
def test_bad_simulator_options_are_usage_errors(args: list[str], problem: str) -> None:
    from click.testing import CliRunner

    from fsm.cli import main

    done = CliRunner().invoke(main, ["serve", "--simulator", *args])
    assert done.exit_code == 2 and problem in done.output


def test_shutting_down_closes_the_flows_api_client(graph: Any) -> None:
    """The server's lifespan ends with the flow's close(): the Credex HTTP client's pool."""
    from adapters.whatsapp import GraphClient, WebhookConfig, WhatsAppBot, create_app
    from flows.credex.fake_server import DEV_CLIENT_KEY
    from flows.credex.fake_server import serving as credex_serving
    from flows.credex.http import CredexHttpApi

    with credex_serving() as credex:
        api = CredexHttpApi(credex.url, DEV_CLIENT_KEY)
        engine = build_async_engine(AsyncMemoryStore(), api, jwt_key=credex.api.verification_key)
        client = GraphClient(
            access_token=graph.token, phone_number_id=graph.phone_number_id, api_url=graph.url
        )
        bot = WhatsAppBot(engine, client, mark_as_read=False)
        app = create_app(bot, WebhookConfig("s", "v", graph.phone_number_id))
        with serving(app):
            assert api.login(ALICE).token  # open while serving
        with pytest.raises(RuntimeError, match="closed"):
            api.login(ALICE)
