"""The reference bot outside WhatsApp's 24-hour window, served for real on loopback with a fake
clock and the fake Graph API: Bob last wrote 25 hours ago when Alice offers him 25.00 USD; the
notice goes out as the ``credex_offer_received`` template (Meta refuses the free-form one with
131047), with Accept and Decline as its quick-reply buttons."""

from __future__ import annotations

from adapters import AsyncMemoryStore, MemoryStore
from flows.credex import FakeCredexApi, build_async_engine
from fsm import FakeClock

from . import payloads as p
from .fake_graph import FakeGraph
from .proactive import served, until

ALICE, BOB = "263770000001", "263770000002"


def test_an_offer_to_a_member_who_last_wrote_25_hours_ago_goes_out_as_its_template(
    graph: FakeGraph,
) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    engine = build_async_engine(AsyncMemoryStore(store), FakeCredexApi(clock=clock), clock=clock)
    with served(graph, store=store, clock=clock, engine=engine, timer_tick=0.05) as bot:

        def say(user: str, text: str) -> None:
            assert bot.message(p.body([p.text(user, text)])).status_code == 200

        say(BOB, "hi")
        clock.advance(25 * 3600)  # Bob's session, and his 24-hour window, are long over
        graph.close_window(BOB)
        for text in ("hi", "1", "25", "bob", "1"):
            say(ALICE, text)
        (sent,) = until(lambda: graph.templates(BOB), "the offer's template")
        assert sent["name"] == "credex_offer_received"
        assert sent["language"] == {"code": "en"}
        body = next(c for c in sent["components"] if c["type"] == "body")
        assert [prm["text"] for prm in body["parameters"]] == ["Alice", "alice", "25.00 USD"]
        payloads = [
            c["parameters"][0]["payload"] for c in sent["components"] if c["type"] == "button"
        ]
        assert payloads == ["fsm.ev.offer_accept:cx-0006", "fsm.ev.offer_decline:cx-0006"]
        refused = [r for r in graph.sends(accepted=False) if r.body.get("to") == BOB]
        assert [r.answered for r in refused][-2:] == [400, 200]  # 131047, then the template
