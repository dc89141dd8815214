"""A fake Graph API: a real HTTP server on loopback that records every request and answers
as Meta does, or as a test scripts it (error shapes and codes, delays, dropped connections).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "EAAG-test-access-token-0123456789"
PHONE_NUMBER_ID = "106540352242922"


@dataclass(frozen=True)
class Answer:
    """What the next send gets: a status and Meta's error code, a delay, or a drop."""

    status: int = 200
    code: int = 0
    delay: float = 0.0
    drop: bool = False


def error(status: int, code: int, message: str = "error") -> Answer:
    return Answer(status=status, code=code)


@dataclass
class Request:
    path: str
    authorization: str
    body: dict[str, Any]
    at: float
    answered: int = 0  # the status sent back (0: dropped or never answered)
    message_id: str = ""


@dataclass
class FakeGraph:
    token: str = TOKEN
    phone_number_id: str = PHONE_NUMBER_ID
    requests: list[Request] = field(default_factory=list)
    script: list[Answer] = field(default_factory=list)
    #: Delay every accepted send by this much (latency of a real API).
    latency: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    url: str = ""
    #: Keep every request (tests read them); a benchmark's long run keeps none.
    keep: bool = True

    # -- what tests read ----------------------------------------------------------------
    def sends(self, *, accepted: bool = True) -> list[Request]:
        """Message sends (not mark-as-read), in arrival order; only accepted ones by default."""
        with self.lock:
            found = [r for r in self.requests if r.body.get("status") != "read"]
        return [r for r in found if r.answered == 200] if accepted else found

    def reads(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.body.get("status") == "read"]

    def texts(self, to: str | None = None) -> list[str]:
        """The bodies of accepted sends (interactive ones by their body text)."""
        out = []
        for r in self.sends():
            if to is not None and r.body.get("to") != to:
                continue
            out.append(body_text(r.body))
        return out

    def wait_sends(self, count: int, timeout: float = 10.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.sends()
            if len(found) >= count:
                return found
            time.sleep(0.01)
        raise AssertionError(f"expected {count} sends, got {len(self.sends())}")

    def plan(self, *answers: Answer) -> None:
        with self.lock:
            self.script.extend(answers)

    def _next(self, body: dict[str, Any]) -> Answer:
        with self.lock:
            if body.get("status") == "read" or not self.script:
                return Answer(delay=self.latency)
            return self.script.pop(0)


def body_text(payload: dict[str, Any]) -> str:
    if payload.get("type") == "text":
        return str(payload["text"]["body"])
    return str(payload["interactive"]["body"]["text"])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        graph = self.server.graph
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        request = Request(
            self.path, self.headers.get("Authorization", ""), json.loads(raw), time.time()
        )
        if graph.keep:
            with graph.lock:
                graph.requests.append(request)
        answer = graph._next(request.body)
        if answer.delay:
            time.sleep(answer.delay)
        if answer.drop:
            self.close_connection = True
            self.connection.close()
            return
        if request.authorization != f"Bearer {graph.token}":
            return self._reply(request, 401, _error(190, "Invalid OAuth access token"))
        if self.path != f"/v99.0/{graph.phone_number_id}/messages":
            return self._reply(request, 400, _error(100, "Unknown path"))
        if answer.status != 200:
            return self._reply(request, answer.status, _error(answer.code, "scripted error"))
        if request.body.get("status") == "read":
            return self._reply(request, 200, {"success": True})
        request.message_id = f"wamid.out.{next(graph.ids)}"
        to = request.body.get("to", "")
        return self._reply(
            request,
            200,
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": request.message_id}],
            },
        )

    def _reply(self, request: Request, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        # Recorded before the answer goes out: the client (and a test reading sends() right
        # after it) may see the answer before this thread runs again.
        request.answered = status
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            request.answered = 0  # the client went away: it never got the answer
            raise


def _error(code: int, message: str) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": "AbCdEf",
        }
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    graph: FakeGraph


@contextmanager
def fake_graph() -> Iterator[FakeGraph]:
    """A FakeGraph serving on a free loopback port; ``graph.url`` is the API base URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    graph = FakeGraph()
    server.graph = graph
    graph.url = f"http://127.0.0.1:{server.server_address[1]}/v99.0"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield graph
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def main() -> None:
    """``python -m tests.whatsapp.fake_graph PORT``: serve a FakeGraph until killed (the
    benchmark runs it in a process of its own, so it does not share the load's CPU)."""
    import sys

    server = _Server(("127.0.0.1", int(sys.argv[1])), _Handler)
    server.graph = FakeGraph(keep=False)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
