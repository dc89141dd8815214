"""A fake Graph API: a real HTTP server on loopback that takes the sends a bot makes, answers
them as Meta does, and records them; or answers as a test scripts it (Meta's error shapes and
codes, delays, dropped connections). With it, ``fsm serve`` runs on your machine, and in your
tests, without Meta.

From a shell, ``fsm fake-graph`` (or ``python -m adapters.whatsapp.fake_graph``) serves one and
prints every send it receives; point ``fsm serve`` at it with ``WHATSAPP_API_URL``::

    fsm fake-graph --port 8700
    WHATSAPP_API_URL=http://127.0.0.1:8700/v27.0 fsm serve      # and the other WHATSAPP_*

In a test, :func:`fake_graph` serves one on a free port for a ``with`` block; ``graph.url`` is
the ``WHATSAPP_API_URL`` to give the bot:

>>> with fake_graph(token="t0ken", phone_number_id="1065") as graph:   # doctest: +SKIP
...     ...                              # run the bot with WHATSAPP_API_URL=graph.url
...     graph.wait_sends(1)
...     assert graph.texts("263770000001") == ["What is your name?"]

It needs no web framework (the standard library's ``http.server``). It accepts
``POST <base>/<phone number id>/messages`` for any version base (``/v27.0``), with the access
token and phone number id it was given (any, when given none), and answers a send with a fresh
message id (``wamid.out.N``), a read receipt with ``{"success": true}``. A test can close a
user's 24-hour window (:meth:`FakeGraph.close_window`): free-form sends to that user are then
refused with 131047, as Meta refuses them, and only template messages are accepted.

It also lists a business account's message templates, as the WhatsApp Business Management API
does (``GET <base>/<account id>/message_templates``, paged with ``limit`` and ``after``
cursors): the ones a test gives it (:meth:`FakeGraph.set_templates`, records made with
:func:`message_template`), what ``fsm whatsapp templates check`` reads.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "API_VERSION",
    "Answer",
    "FakeGraph",
    "Request",
    "body_text",
    "describe",
    "error",
    "fake_graph",
    "main",
    "message_template",
    "run_printing",
    "serve",
]

#: The version part of the URL :func:`fake_graph` gives (any ``/vN.N`` is accepted).
API_VERSION = "v99.0"
#: Meta's code for a free-form message outside the user's 24-hour window.
OUTSIDE_WINDOW = 131047
_PATH = re.compile(r"^/v[0-9]+(?:\.[0-9]+)?/(?P<number>[^/?]+)/messages$")
_TEMPLATES = re.compile(r"^/v[0-9]+(?:\.[0-9]+)?/(?P<account>[^/?]+)/message_templates$")
#: Templates per page when the request gives no ``limit``.
TEMPLATES_LIMIT = 25


@dataclass(frozen=True)
class Answer:
    """What the next send gets: a status and Meta's error code, a delay, or a drop."""

    status: int = 200
    code: int = 0
    delay: float = 0.0
    drop: bool = False


def error(status: int, code: int, message: str = "error") -> Answer:
    """An error answer: HTTP ``status`` with Meta's error ``code`` (131047, 130429, ...)."""
    return Answer(status=status, code=code)


def message_template(
    name: str,
    language: str,
    *,
    status: str = "APPROVED",
    body_params: int = 0,
    header: str | None = None,
    buttons: int = 0,
    category: str = "UTILITY",
) -> dict[str, Any]:
    """A template record as the Graph API lists it: a BODY with ``body_params`` variables
    (``{{1}}``...), a HEADER (``header``: ``"text"`` with a variable, ``"fixed"`` text, or
    ``"image"``, ``"document"``, ``"video"``), and ``buttons`` QUICK_REPLY buttons."""
    variables = " ".join(f"{{{{{n}}}}}" for n in range(1, body_params + 1))
    components: list[dict[str, Any]] = []
    if header in ("text", "fixed"):
        text = "Hello {{1}}" if header == "text" else "Hello"
        components.append({"type": "HEADER", "format": "TEXT", "text": text})
    elif header is not None:
        components.append({"type": "HEADER", "format": header.upper()})
    components.append({"type": "BODY", "text": f"Your update: {variables}".strip() + "."})
    if buttons:
        quick = [{"type": "QUICK_REPLY", "text": f"Option {n}"} for n in range(1, buttons + 1)]
        components.append({"type": "BUTTONS", "buttons": quick})
    return {
        "name": name,
        "language": language,
        "status": status,
        "category": category,
        "components": components,
    }


@dataclass
class Request:
    """One request the fake received: its path, Authorization header, JSON body, arrival time
    (``time.time()``) and what it answered."""

    path: str
    authorization: str = field(repr=False)  # the bearer token: never in a test's output
    body: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0
    answered: int = 0  # the status sent back (0: dropped or never answered)
    message_id: str = ""
    #: Why it was refused, when it was ("bad access token", "unknown path", ...).
    refused: str = ""


@dataclass
class FakeGraph:
    """The fake's state: what it checks, what it answers, and what it received.

    ``token`` and ``phone_number_id`` are what a send must carry (None: any). Tests read
    :meth:`sends`, :meth:`texts`, :meth:`reads`, wait with :meth:`wait_sends`, and script the
    next answers with :meth:`plan`. ``echo`` is called with each request once it is answered
    (``fsm fake-graph`` prints it with :func:`describe`)."""

    token: str | None = None
    phone_number_id: str | None = None
    requests: list[Request] = field(default_factory=list)
    script: list[Answer] = field(default_factory=list)
    #: Delay every accepted send by this much (latency of a real API).
    latency: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    url: str = ""
    #: Keep every request (tests read them); a benchmark's long run keeps none.
    keep: bool = True
    echo: Callable[[Request], None] | None = None
    #: Users whose 24-hour window is closed: free-form sends to them get 131047.
    closed: set[str] = field(default_factory=set)
    #: The business account's message templates, in Meta's shape (:func:`message_template`),
    #: listed by ``GET <base>/<account id>/message_templates``.
    message_templates: list[dict[str, Any]] = field(default_factory=list)
    #: The business account id that listing must name (None: any).
    account_id: str | None = None
    #: At most this many templates per page, whatever ``limit`` the request asks for.
    templates_page: int = 100
    #: The template-list requests received (not in ``requests``: they send nothing).
    template_reads: list[Request] = field(default_factory=list)
    #: Scripted answers for the next template-list requests (:meth:`plan_templates`).
    templates_script: list[Answer] = field(default_factory=list)

    # -- what tests read ----------------------------------------------------------------
    def sends(self, *, accepted: bool = True) -> list[Request]:
        """Message sends (not mark-as-read), in arrival order; only accepted ones by default."""
        with self.lock:
            found = [r for r in self.requests if r.body.get("status") != "read"]
        return [r for r in found if r.answered == 200] if accepted else found

    def reads(self) -> list[Request]:
        """Mark-as-read requests, in arrival order."""
        with self.lock:
            return [r for r in self.requests if r.body.get("status") == "read"]

    def texts(self, to: str | None = None) -> list[str]:
        """The bodies of accepted sends (interactive ones by their body text), to one user or
        to all."""
        out = []
        for r in self.sends():
            if to is not None and r.body.get("to") != to:
                continue
            out.append(body_text(r.body))
        return out

    def wait_sends(self, count: int, timeout: float = 10.0) -> list[Request]:
        """Wait until at least ``count`` sends were accepted; AssertionError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.sends()
            if len(found) >= count:
                return found
            time.sleep(0.01)
        raise AssertionError(f"expected {count} sends, got {len(self.sends())}")

    def templates(self, to: str | None = None) -> list[dict[str, Any]]:
        """The ``template`` objects of accepted template sends, to one user or to all."""
        return [
            r.body["template"]
            for r in self.sends()
            if r.body.get("type") == "template" and (to is None or r.body.get("to") == to)
        ]

    def close_window(self, *users: str) -> None:
        """Close these users' 24-hour windows: free-form sends to them are refused with
        131047 from now on; template messages are still accepted."""
        with self.lock:
            self.closed.update(users)

    def set_templates(self, *templates: dict[str, Any]) -> None:
        """The account's message templates from now on (records of :func:`message_template`,
        or any dicts in Meta's shape)."""
        with self.lock:
            self.message_templates = [dict(t) for t in templates]

    def plan_templates(self, *answers: Answer) -> None:
        """Answer the next template-list requests (one each, in order) so; then normally."""
        with self.lock:
            self.templates_script.extend(answers)

    def plan(self, *answers: Answer) -> None:
        """Answer the next sends (one each, in order) so; then normally again."""
        with self.lock:
            self.script.extend(answers)

    def _next(self, body: dict[str, Any]) -> Answer:
        with self.lock:
            if body.get("status") == "read" or not self.script:
                return Answer(delay=self.latency)
            return self.script.pop(0)


def body_text(payload: dict[str, Any]) -> str:
    """The text of a send: a text message's body, an interactive message's body text, or
    ``[template NAME LANGUAGE]`` for a template message."""
    if payload.get("type") == "text":
        return str(payload.get("text", {}).get("body", ""))
    if payload.get("type") == "template":
        sent = payload.get("template", {})
        return f"[template {sent.get('name', '?')} {sent.get('language', {}).get('code', '?')}]"
    return str(payload.get("interactive", {}).get("body", {}).get("text", ""))


def describe(request: Request) -> str:
    """A request as ``fsm fake-graph`` prints it: the recipient and the text, each option of a
    button or list message (``id: title``), a read receipt, or why it was refused."""
    body = request.body
    if request.refused:
        return f"refused ({request.answered}): {request.refused} [{request.path}]"
    if body.get("status") == "read":
        return f"read {body.get('message_id', '')}"
    if not request.answered:
        return f"dropped: a send to {body.get('to', '?')}"
    kind = str(body.get("type", "?"))
    interactive = body.get("interactive", {}) if kind == "interactive" else {}
    if interactive:
        kind = str(interactive.get("type", kind))
    text = body_text(body)
    lines = [f"to {body.get('to', '?')} ({kind}): " + "\n    ".join(text.splitlines() or [""])]
    action = interactive.get("action", {})
    for button in action.get("buttons", ()):
        reply = button.get("reply", {})
        lines.append(f"    [{reply.get('id', '')}] {reply.get('title', '')}")
    for section in action.get("sections", ()):
        for row in section.get("rows", ()):
            lines.append(f"    [{row.get('id', '')}] {row.get('title', '')}")
    if request.answered != 200:
        lines[0] = f"answered {request.answered}: " + lines[0]
    return "\n".join(lines)


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
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        request = Request(
            self.path,
            self.headers.get("Authorization", ""),
            body if isinstance(body, dict) else {},
            time.time(),
        )
        if graph.keep:
            with graph.lock:
                graph.requests.append(request)
        try:
            self._answer(graph, request, valid=isinstance(body, dict))
        finally:
            if graph.echo is not None:
                graph.echo(request)

    def do_GET(self) -> None:
        """``GET <base>/<account id>/message_templates``: the account's templates, paged."""
        graph = self.server.graph
        request = Request(self.path, self.headers.get("Authorization", ""), {}, time.time())
        with graph.lock:
            graph.template_reads.append(request)
            answer = graph.templates_script.pop(0) if graph.templates_script else Answer()
        if not self._admitted(graph, request, answer):
            return
        parts = urlsplit(self.path)
        path = _TEMPLATES.match(parts.path)
        if path is None or (graph.account_id is not None and path["account"] != graph.account_id):
            return self._refuse(request, 400, 100, "Unsupported get request", "unknown path")
        if answer.status != 200:
            return self._reply(request, answer.status, _error(answer.code, "scripted error"))
        page = _templates_page(graph, path["account"], parse_qs(parts.query))
        if page is None:
            return self._refuse(request, 400, 100, "Invalid parameter", "a bad cursor")
        return self._reply(request, 200, page)

    def _answer(self, graph: FakeGraph, request: Request, *, valid: bool) -> None:
        answer = graph._next(request.body)
        if not self._admitted(graph, request, answer):
            return
        path = _PATH.match(self.path)
        if path is None or (
            graph.phone_number_id is not None and path["number"] != graph.phone_number_id
        ):
            return self._refuse(request, 400, 100, "Unknown path", "unknown path")
        if not valid:
            return self._refuse(request, 400, 100, "Invalid JSON", "the body is not JSON")
        if answer.status != 200:
            return self._reply(request, answer.status, _error(answer.code, "scripted error"))
        if request.body.get("status") == "read":
            return self._reply(request, 200, {"success": True})
        refused = _refused(graph, request.body)
        if refused:
            return self._refuse(request, 400, *refused)
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

    def _admitted(self, graph: FakeGraph, request: Request, answer: Answer) -> bool:
        """Play ``answer``'s delay or dropped connection, then check the bearer token (a 401
        answered when it is wrong); True if the request goes on."""
        if answer.delay:
            time.sleep(answer.delay)
        if answer.drop:
            self.close_connection = True
            self.connection.close()
            return False
        given = request.authorization
        if not given.startswith("Bearer ") or (
            graph.token is not None and given != f"Bearer {graph.token}"
        ):
            self._refuse(request, 401, 190, "Invalid OAuth access token", "bad token")
            return False
        return True

    def _refuse(self, request: Request, status: int, code: int, message: str, why: str) -> None:
        request.refused = why
        self._reply(request, status, _error(code, message))

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


def _templates_page(
    graph: FakeGraph, account: str, query: dict[str, list[str]]
) -> dict[str, Any] | None:
    """One page of the account's templates, as Meta pages them: ``data``, and ``paging`` with
    ``cursors`` and, while more follow, ``next``; None for a cursor it never gave."""
    try:
        limit = int(query.get("limit", [str(TEMPLATES_LIMIT)])[0])
        start = int(base64.urlsafe_b64decode(query["after"][0]).decode()) if "after" in query else 0
    except (ValueError, UnicodeDecodeError):
        return None
    size = max(1, min(limit, graph.templates_page))
    fields = set(",".join(query.get("fields", [])).split(",")) - {""}
    with graph.lock:
        listed = graph.message_templates[start : start + size]
        more = start + size < len(graph.message_templates)
    data = [
        {"id": str(1000 + start + n)} | {k: v for k, v in t.items() if not fields or k in fields}
        for n, t in enumerate(listed)
    ]
    page: dict[str, Any] = {"data": data}
    if data:
        cursors = {"before": _cursor(start), "after": _cursor(start + len(data))}
        page["paging"] = {"cursors": cursors}
        if more:
            after = cursors["after"]
            page["paging"]["next"] = (
                f"{graph.url}/{account}/message_templates?limit={size}&after={after}"
            )
    return page


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def _refused(graph: FakeGraph, body: dict[str, Any]) -> tuple[int, str, str] | None:
    """Meta's code, message and why, for a send the script lets through that Meta would
    refuse: a template without a name or language, a free-form message to a closed window."""
    if body.get("type") == "template":
        sent = body.get("template")
        if not isinstance(sent, dict) or not sent.get("name"):
            return 100, "Invalid parameter", "a template needs a name and a language"
        if not isinstance(sent.get("language"), dict):
            return 100, "Invalid parameter", "a template needs a name and a language"
        return None
    with graph.lock:
        closed = body.get("to") in graph.closed
    if closed:
        return OUTSIDE_WINDOW, "Re-engagement message", "outside the 24-hour window"
    return None


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


def serve(graph: FakeGraph, *, host: str = "127.0.0.1", port: int = 0) -> _Server:
    """A server for ``graph`` bound to ``host``:``port`` (0: a free port), not yet serving
    (call its ``serve_forever``); sets ``graph.url``."""
    server = _Server((host, port), _Handler)
    server.graph = graph
    address = server.server_address
    bound_host, bound_port = str(address[0]), int(address[1])
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    graph.url = f"http://{shown}:{bound_port}/{API_VERSION}"
    return server


@contextmanager
def fake_graph(
    *,
    token: str | None = None,
    phone_number_id: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    echo: Callable[[Request], None] | None = None,
) -> Iterator[FakeGraph]:
    """A :class:`FakeGraph` serving in a thread (on a free loopback port by default) for the
    ``with`` block; ``graph.url`` is the API base URL (``WHATSAPP_API_URL``)."""
    graph = FakeGraph(token=token, phone_number_id=phone_number_id, echo=echo)
    server = serve(graph, host=host, port=port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield graph
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m adapters.whatsapp.fake_graph [--port 8700] [--quiet]``: serve until
    interrupted, printing every request (``fsm fake-graph`` is the same)."""
    parser = argparse.ArgumentParser(
        prog="python -m adapters.whatsapp.fake_graph",
        description="A fake Graph API: prints every send a bot makes to it.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--quiet", action="store_true", help="print nothing but the ready line")
    args = parser.parse_args(argv)
    run_printing(host=args.host, port=args.port, quiet=args.quiet)


def run_printing(
    *,
    host: str = "127.0.0.1",
    port: int = 8700,
    quiet: bool = False,
    token: str | None = None,
    phone_number_id: str | None = None,
) -> None:
    """Serve a fake Graph API until interrupted, printing a ready line with its URL, then
    every request it receives (unless ``quiet``). Nothing is kept in memory."""
    lock = threading.Lock()

    def echo(request: Request) -> None:
        with lock:
            print(describe(request), flush=True)

    graph = FakeGraph(
        token=token, phone_number_id=phone_number_id, keep=False, echo=None if quiet else echo
    )
    server = serve(graph, host=host, port=port)
    print(f"fake Graph API on {graph.url}: set WHATSAPP_API_URL={graph.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":  # pragma: no cover
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        sys.exit(130)
