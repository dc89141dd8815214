"""The WhatsApp simulator (``fsm serve --simulator``): its API on a real server, and the page in
a real headless Chromium driven by Selenium."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
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

    def events(self, user: str, count: int) -> list[dict[str, Any]]:
        """The first ``count`` events of ``user``'s stream (the log replays on connect)."""
        found: list[dict[str, Any]] = []
        with self.http.stream("GET", "/api/events", params={"user": user}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    found.append(msgspec.json.decode(line[6:]))
                    if len(found) == count:
                        break
        return found


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
    events = sim.events(ALICE, 4)
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
    events = sim.events(ALICE, 6)
    assert [e["kind"] for e in events].count("bot") == 1  # and nothing sent twice
    assert events[4]["kind"] == "redelivered"


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
