"""The fake Credex HTTP server tells the receiver's bot about an offer over ``POST /events``:
signed with the events secret, from a background thread, tried again after a 5xx or a lost
connection, not after a refusal. The bot's side here is a small real HTTP server of the test's
own, on loopback, that checks the signature itself (and with the bot's own checker)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from adapters.whatsapp.events import HEADER, parse_event
from adapters.whatsapp.signature import signature_problem
from flows.credex import fake_server
from flows.credex.fake import FakeCredexApi, Notification
from flows.credex.fake_server import EventSender, FakeCredexServer
from flows.credex.http import CredexHttpApi, Timeouts
from tests.flows.conftest import ALICE, BOB

SECRET = "events-secret-for-tests"


@dataclass
class Receiver:
    """A bot's ``POST /events`` stand-in: answers the statuses in ``answers`` in turn (then
    200) and records every request, its signature checked."""

    answers: list[int] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def record(self, path: str, headers: dict[str, str], body: bytes) -> int:
        header = headers.get(HEADER.lower(), "")
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        with self.lock:
            self.seen.append(
                {
                    "path": path,
                    "json": json.loads(body),
                    "signed": hmac.compare_digest(header, expected),
                    # what fsm serve's POST /events checks: the signature, then the body
                    "bot_accepts": signature_problem(header, body, SECRET) is None,
                    "bot_parses": parse_event(body).event_id,
                    "content_type": headers.get("content-type"),
                }
            )
            return self.answers.pop(0) if self.answers else 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = got.record(self.path, headers, body)
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    got.url = f"http://127.0.0.1:{httpd.server_address[1]}/events"
    try:
        yield got
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def offer_over_http(server: FakeCredexServer) -> None:
    """Alice offers Bob 25.00 USD through the fake's HTTP API."""
    client = CredexHttpApi(server.url, fake_server.DEV_CLIENT_KEY, timeouts=Timeouts(read=2.0))
    try:
        token = client.login(ALICE).token
        client.create_credex("acc-0001", "acc-0002", "USD", 25.0, token=token)
    finally:
        client.close()


def test_an_offer_is_posted_signed_to_the_bots_events_and_retried_after_a_5xx(
    receiver: Receiver,
) -> None:
    receiver.answers = [503]
    with fake_server.serving(events_url=receiver.url, events_secret=SECRET) as served:
        offer_over_http(served)
        assert served.events is not None and served.events.wait_idle(10)
        assert served.events.delivered == ["cx-0006"] and served.events.failed == []
    assert len(receiver.seen) == 2  # refused once (503), then taken
    first, second = receiver.seen
    assert first == second  # the same event, the same bytes: its id makes the retry harmless
    assert first["path"] == "/events" and first["content_type"] == "application/json"
    assert first["signed"] and first["bot_accepts"] and first["bot_parses"] == "cx-0006"
    assert first["json"] == {
        "user": BOB,
        "event": "offer_received",
        "data": {
            "credexID": "cx-0006",
            "senderName": "Alice",
            "senderHandle": "alice",
            "amount": 25.0,
            "denomination": "USD",
        },
        "event_id": "cx-0006",
    }


def notification(event_id: str = "cx-0006") -> Notification:
    return Notification(BOB, "offer_received", {"credexID": event_id}, event_id)


def test_a_refused_event_is_not_posted_again(receiver: Receiver) -> None:
    receiver.answers = [403]
    sender = EventSender(receiver.url, SECRET, backoff=0.01).start()
    try:
        sender.send(notification())
        assert sender.wait_idle(10)
    finally:
        sender.stop()
    assert len(receiver.seen) == 1
    assert sender.failed == ["cx-0006"] and sender.delivered == []


def test_a_failing_bot_is_tried_a_bounded_number_of_times(receiver: Receiver) -> None:
    receiver.answers = [500] * 10
    sender = EventSender(receiver.url, SECRET, attempts=3, backoff=0.01).start()
    try:
        sender.send(notification("cx-1"))
        sender.send(notification("cx-2"))
        assert sender.wait_idle(10)
    finally:
        sender.stop()
    assert [r["json"]["event_id"] for r in receiver.seen] == ["cx-1"] * 3 + ["cx-2"] * 3
    assert sender.failed == ["cx-1", "cx-2"]


def test_an_unreachable_bot_is_given_up_on() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = EventSender(f"http://127.0.0.1:{port}/events", SECRET, attempts=2, backoff=0.01)
    sender.start()
    try:
        sender.send(notification())
        assert sender.wait_idle(10)
    finally:
        sender.stop()
    assert sender.failed == ["cx-0006"]


def test_the_secret_is_required_and_never_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="FSM_EVENTS_SECRET"):
        EventSender("http://127.0.0.1:9/events", "")
    sender = EventSender("http://user:pw@127.0.0.1:9/events?k=v", SECRET)
    assert SECRET not in repr(sender) and "pw" not in repr(sender)
    with pytest.raises(ValueError, match="already sends"):
        FakeCredexServer(
            FakeCredexApi(notifier=print), events_url="http://127.0.0.1:9/e", events_secret=SECRET
        )
    monkeypatch.delenv("FSM_EVENTS_SECRET", raising=False)
    with pytest.raises(SystemExit):
        fake_server.main(["--port", "0", "--events-url", "http://127.0.0.1:9/events"])
    assert "needs FSM_EVENTS_SECRET" in capsys.readouterr().err
