"""The simulator and WhatsApp's 24-hour window: the panel's window state (``GET /api/session``),
the control that moves the user's last message back (``POST /api/move-back``: a compare-and-set
write with a history entry), the fake Graph API refusing free-form sends to a window it closed
(131047), and a template's quick-reply tap posted as WhatsApp posts it (type ``button``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette

from adapters import AsyncMemoryStore, MemoryStore
from adapters.whatsapp.server import build_simulator_app
from adapters.whatsapp.simulator import Contact, Simulator
from adapters.whatsapp.simulator.app import MOVED, SOURCE
from adapters.whatsapp.testing import serving
from adapters.whatsapp.window import WINDOW
from flows.credex import FakeCredexApi, build_async_engine
from fsm import FakeClock
from fsm.records import HistoryEntry, SaveResult
from fsm.snapshot import Snapshot, decode_snapshot, encode_snapshot
from tests.redis_servers import free_port

from .test_simulator import Sim

ALICE, BOB = "263770000001", "263770000002"
HOURS = 3600.0


class Served:
    def __init__(self, sim: Sim, clock: FakeClock, store: MemoryStore) -> None:
        self.sim, self.clock, self.store = sim, clock, store

    def stored(self, user: str) -> Snapshot:
        record = self.store.load(user).record
        assert record is not None
        return decode_snapshot(record.payload, user_key=user)

    def move_back(self, user: str, **form: Any) -> Any:
        return self.sim.http.post("/api/move-back", json={"user": user, **form})


class RacedStore(AsyncMemoryStore):
    """A store where another save (as the bot's deferred confirmation of a sent reply) lands
    between the simulator's read and its write, once: the write must lose its compare-and-set,
    read again and keep what the other save wrote. (While the bot still holds the user's send
    lease, both are refused as LOCKED: the simulator waits, and the race comes later.)"""

    raced = False

    async def save(self, user_key: str, payload: bytes, **kwargs: Any) -> SaveResult:
        history: HistoryEntry | None = kwargs.get("history")
        if history is not None and history.event == MOVED and not self.raced:
            record = self.sync.load(user_key).record
            assert record is not None
            current = decode_snapshot(record.payload, user_key=user_key)
            other = msgspec.structs.replace(
                current, version=record.version + 1, data={**current.data, "other": "kept"}
            )
            entry = HistoryEntry(
                version=other.version,
                from_stage=current.stage,
                to_stage=current.stage,
                event="other",
                update_from="test",
                at=0.0,
            )
            self.raced = self.sync.save(
                user_key,
                encode_snapshot(other, user_key=user_key),
                version=other.version,
                expected_version=record.version,
                ttl=600,
                history=entry,
            ).saved
        return await super().save(user_key, payload, **kwargs)


@pytest.fixture
def served() -> Iterator[Served]:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    port = free_port()
    app = build_simulator_app(
        lambda async_store: build_async_engine(
            async_store, FakeCredexApi(clock=clock), clock=clock
        ),
        RacedStore(store),
        host="127.0.0.1",
        port=port,
        contacts=[Contact(ALICE, "Alice Moyo"), Contact(BOB, "Bob Dube")],
    )
    with serving(app, port) as url:
        sim = Sim(url)
        yield Served(sim, clock, store)
        sim.http.close()


def test_the_panel_shows_the_window_unknown_then_open_with_the_time_left(served: Served) -> None:
    sim = served.sim
    assert sim.session(BOB)["window"] == {
        "state": "unknown",
        "last_inbound": 0.0,
        "refusing": False,
    }
    assert sim.say(BOB, text="hi").json()["status"] == 200
    window = sim.session(BOB)["window"]
    assert window["state"] == "open" and window["left"] == pytest.approx(WINDOW)
    assert window["last_inbound"] == served.stored(BOB).last_inbound > 0
    served.clock.advance(20 * 60)  # the engine's clock, not the page's, decides
    assert sim.session(BOB)["window"]["left"] == pytest.approx(WINDOW - 20 * 60)


def test_moving_the_last_message_back_is_a_compare_and_set_write_with_a_history_entry(
    served: Served,
) -> None:
    sim = served.sim
    assert sim.say(BOB, text="hi").json()["status"] == 200
    before = served.stored(BOB)

    moved = served.move_back(BOB)

    assert moved.status_code == 200, moved.text
    after = served.stored(BOB)
    newest, other = served.store.history(BOB)[:2]
    # A write lost its compare-and-set to another save; the next was made on top of that
    # save: the other save's data is kept, one version above it.
    assert (other.event, other.version) == ("other", after.version - 1)
    assert moved.json()["version"] == after.version == newest.version
    assert after.data == {**before.data, "other": "kept"}
    assert after.last_inbound == before.last_inbound - 25 * HOURS
    assert (after.stage, after.step, after.auth) == (before.stage, before.step, before.auth)
    assert after.last_updated == before.last_updated  # its expiry is not moved
    assert after.update_from == SOURCE
    assert (newest.event, newest.update_from) == (MOVED, SOURCE)
    assert (newest.from_stage, newest.from_step) == (newest.to_stage, newest.to_step)
    assert (newest.to_stage, newest.to_step) == (after.stage, after.step)

    window = moved.json()["window"]
    assert window["state"] == "closed" and window["refusing"] is True
    assert window["closed_at"] == pytest.approx(after.last_inbound + WINDOW)
    assert window["closed_for"] == pytest.approx(1 * HOURS)
    shown = sim.session(BOB)
    assert shown["window"] == window and shown["session"]["version"] == after.version
    assert shown["history"][0]["event"] == MOVED
    events = sim.events(BOB, lambda found: any(e["kind"] == "moved" for e in found))
    assert events[-1]["hours"] == 25 and events[-1]["version"] == after.version

    served.move_back(BOB, hours=2)  # again: another 2 hours back
    assert served.stored(BOB).last_inbound == before.last_inbound - 27 * HOURS
    assert sim.say(BOB, text="hi").json()["status"] == 200  # the user writes: open again
    assert sim.session(BOB)["window"]["state"] == "open"
    assert sim.session(BOB)["window"]["refusing"] is False


@pytest.mark.parametrize(
    ("form", "status", "problem"),
    [
        ({"user": "263779990009"}, 409, "no session"),
        ({"user": "alice"}, 400, "phone number"),
        ({"user": ALICE, "hours": 0}, 400, "hours"),
        ({"user": ALICE, "hours": "25"}, 400, "hours"),
        ({"user": ALICE, "hours": True}, 400, "hours"),
    ],
)
def test_a_move_that_cannot_be_made_says_why(
    served: Served, form: dict[str, Any], status: int, problem: str
) -> None:
    served.sim.say(ALICE, text="hi")
    answer = served.sim.http.post("/api/move-back", json=form)
    assert answer.status_code == status and problem in answer.json()["error"]


def test_the_move_is_refused_to_another_site(served: Served) -> None:
    raw = msgspec.json.encode({"user": ALICE})
    answer = served.sim.http.post("/api/move-back", content=raw)  # not JSON: a form post
    assert answer.status_code == 415


def test_an_offer_to_a_closed_window_is_the_template_and_its_tap_a_button_reply(
    served: Served,
) -> None:
    """Bob's last message moved back 25 hours; Alice's offer reaches him as the template, with
    Accept and Decline as quick replies; his tap posts the payload as WhatsApp does."""
    sim = served.sim
    assert sim.say(BOB, text="hi").json()["status"] == 200
    assert served.move_back(BOB).status_code == 200
    for text in ("hi", "1", "25", "bob", "1"):
        assert sim.say(ALICE, text=text).json()["status"] == 200

    def template_sent(found: list[dict[str, Any]]) -> bool:
        return any(e["kind"] == "bot" and e["payload"]["type"] == "template" for e in found)

    events = sim.events(BOB, template_sent)
    notice = events[-1]
    sent = notice["payload"]["template"]
    assert (sent["name"], sent["language"]) == ("credex_offer_received", {"code": "en"})
    body = next(c for c in sent["components"] if c["type"] == "body")
    assert [p["text"] for p in body["parameters"]] == ["Alice", "alice", "25.00 USD"]
    quick = [c for c in sent["components"] if c["type"] == "button"]
    accept = quick[0]["parameters"][0]["payload"]
    assert accept.startswith("fsm.ev.offer_accept:")
    assert not [e for e in events if e["kind"] == "refused"]  # the bot knew: no free-form try

    tapped = sim.say(
        BOB, reply={"kind": "button", "payload": accept, "text": "Accept", "context": notice["id"]}
    )
    assert tapped.status_code == 200 and tapped.json()["status"] == 200

    def accepted(found: list[dict[str, Any]]) -> bool:
        return any(
            e["kind"] == "bot" and "Accepted: 25.00 USD from @alice" in _text(e) for e in found
        )

    events = sim.events(BOB, accepted)
    tap = next(e for e in events if e["kind"] == "user" and e["id"] == tapped.json()["id"])
    assert (tap["text"], tap["pressed"]) == ("Accept", accept)
    assert sim.session(BOB)["window"]["state"] == "open"  # he wrote: the window is open


def _text(event: dict[str, Any]) -> str:
    payload = event["payload"]
    if payload["type"] == "text":
        return str(payload["text"]["body"])
    return str(payload.get("interactive", {}).get("body", {}).get("text", ""))


@pytest.fixture
def graph() -> Iterator[tuple[Simulator, httpx.Client]]:
    engine = build_async_engine(AsyncMemoryStore())
    simulator = Simulator(
        engine,
        webhook_url="http://127.0.0.1:9/webhook",
        app_secret="app-secret",
        access_token="graph-token",
        phone_number_id="100000000000001",
        contacts=[Contact(BOB, "Bob Dube")],
        hosts=None,
    )
    token = {"authorization": "Bearer graph-token"}
    with (
        serving(Starlette(routes=simulator.routes())) as url,
        httpx.Client(base_url=url, headers=token) as client,
    ):
        yield simulator, client


def test_the_fake_graph_api_refuses_free_form_sends_to_a_window_it_closed(
    graph: tuple[Simulator, httpx.Client],
) -> None:
    simulator, client = graph
    url = "/graph/100000000000001/messages"
    text = {"messaging_product": "whatsapp", "to": BOB, "type": "text", "text": {"body": "hi"}}
    template = {
        "messaging_product": "whatsapp",
        "to": BOB,
        "type": "template",
        "template": {"name": "credex_offer_received", "language": {"code": "en"}},
    }
    assert client.post(url, json=text).status_code == 200
    simulator.closed.add(BOB)
    refused = client.post(url, json=text)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == 131047
    assert client.post(url, json=template).status_code == 200  # a template still goes
    nameless = {**template, "template": {"language": {"code": "en"}}}
    assert client.post(url, json=nameless).json()["error"]["code"] == 100
    kinds = [e["kind"] for e in simulator.hub.log(BOB)]
    assert kinds == ["bot", "refused", "bot"]
    assert simulator.hub.log(BOB)[1]["code"] == 131047
