"""``scripts/dev serve``: one command starts the whole local stack, and stopping it stops every
process it started."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .stack import Stack, alive

ALICE = "263770000001"


def test_the_stack_serves_the_reference_bot_over_http(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        assert len(stack.pids()) >= 3  # the script, the fake Credex API, fsm serve
        said = httpx.post(f"{stack.url}/api/say", json={"user": ALICE, "text": "hi"}, timeout=30)
        assert said.json()["status"] == 200
        session = httpx.get(f"{stack.url}/api/session", params={"user": ALICE}).json()
        assert session["session"]["stage"] == "menu"
        credex = httpx.get(f"http://127.0.0.1:{stack.credex_port}/.well-known/jwks.json").json()
        assert credex["keys"][0]["alg"] == "RS256"  # the bot verified its token with this key
        log = stack.log.read_text()
        assert f"open http://127.0.0.1:{stack.port}/" in log
    finally:
        stack.stop()


@pytest.mark.parametrize("stop", [Stack.interrupt, Stack.terminate], ids=["ctrl-c", "sigterm"])
def test_stopping_the_stack_stops_every_process(
    tmp_path: Path, stop: Callable[[Stack], None]
) -> None:
    stack = Stack(tmp_path)
    started = stack.pids()
    assert len(started) >= 3
    with httpx.stream("GET", f"{stack.url}/api/events", params={"user": ALICE}) as events:
        next(events.iter_lines())  # an open event stream must not keep the server up
        stop(stack)
        code = stack.process.wait(20)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in started if alive(pid)] == []
    assert code == (130 if stop is Stack.interrupt else 143)
    for port in (stack.port, stack.credex_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_an_offer_reaches_its_receiver_in_the_simulator_as_it_is_made(tmp_path: Path) -> None:
    """The fake Credex API POSTs offer_received to the bot's /events (signed with the secret
    the stack made for the run); the bot tells Bob at once, in the simulator's chat."""
    bob = "263770000002"
    stack = Stack(tmp_path)
    try:

        def say(user: str, text: str) -> None:
            said = httpx.post(f"{stack.url}/api/say", json={"user": user, "text": text}, timeout=30)
            assert said.json()["status"] == 200, said.text

        say(bob, "hi")
        for text in ("hi", "1", "25", "bob", "1"):
            say(ALICE, text)
        deadline = time.monotonic() + 20
        seen = ""
        with httpx.stream(
            "GET", f"{stack.url}/api/events", params={"user": bob}, timeout=20
        ) as events:
            for line in events.iter_lines():
                seen += line
                if "offered you 25.00 USD" in line or time.monotonic() > deadline:
                    break
        assert "Alice (@alice) offered you 25.00 USD" in seen
    finally:
        stack.stop()
