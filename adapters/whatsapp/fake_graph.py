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

And it keeps media as Meta does: ``POST <base>/<phone number id>/media`` uploads a file
(multipart: ``messaging_product``, ``type``, ``file``) and answers its media id;
``GET <base>/<media id>`` answers the file's download URL, mime type, sha256 (hex) and size
(a string, as Meta sends it); the URL (``<host>/media-bytes/<media id>?sig=...``) answers the
bytes to a request with the bearer token, for :attr:`FakeGraph.media_url_ttl` seconds (Meta's:
about five minutes). A test puts a user's file in with :meth:`FakeGraph.add_media`, reads the
uploads in :attr:`FakeGraph.uploads`, and makes the fake lie or expire
(:meth:`FakeGraph.misannounce`, :meth:`FakeGraph.corrupt_media`,
:meth:`FakeGraph.expire_media_urls`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "API_VERSION",
    "Answer",
    "FakeGraph",
    "MediaFile",
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
_UPLOAD = re.compile(r"^/v[0-9]+(?:\.[0-9]+)?/(?P<number>[^/?]+)/media$")
_MEDIA_INFO = re.compile(r"^/v[0-9]+(?:\.[0-9]+)?/(?P<media>[^/?]+)$")
_MEDIA_BYTES = re.compile(r"^/media-bytes/(?P<media>[^/?]+)$")
#: The first media id the fake gives (Meta's are long numbers too).
MEDIA_IDS = 900_000_000_000_001
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
class MediaFile:
    """A file the fake holds: uploaded, or added by a test (:meth:`FakeGraph.add_media`). Its
    ``sha256`` is the hex digest of its bytes, ``size`` their length."""

    id: str
    mime_type: str
    filename: str
    size: int
    sha256: str
    data: bytes = field(repr=False)
    #: What the download URL serves instead of ``data`` (:meth:`FakeGraph.corrupt_media`).
    served: bytes | None = field(default=None, repr=False)
    #: What ``GET <base>/<media id>`` tells instead of the truth (:meth:`FakeGraph.misannounce`).
    announced: dict[str, Any] = field(default_factory=dict, repr=False)


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
    #: The files it holds, by media id: uploaded ones and those a test added.
    media: dict[str, MediaFile] = field(default_factory=dict)
    #: The files uploaded (``POST <base>/<phone number id>/media``), in arrival order.
    uploads: list[MediaFile] = field(default_factory=list)
    #: The media requests received (uploads, URL lookups, downloads; not in ``requests``).
    media_reads: list[Request] = field(default_factory=list)
    #: Scripted answers for the next media requests (:meth:`plan_media`).
    media_script: list[Answer] = field(default_factory=list)
    #: How long a download URL answers, in seconds (Meta's: about five minutes).
    media_url_ttl: float = 300.0
    #: Serve downloads chunked, without a Content-Length (as a media host may).
    media_chunked: bool = False
    #: The download URLs issued: their ``sig`` -> (media id, expiry on ``time.monotonic()``).
    media_urls: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)
    media_ids: Iterator[int] = field(default_factory=lambda: itertools.count(MEDIA_IDS))

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

    def add_media(self, data: bytes, mime_type: str, filename: str = "") -> str:
        """Hold a file, as if a user had sent it; its media id (what a webhook would carry)."""
        return self._store(data, mime_type, filename).id

    def _store(self, data: bytes, mime_type: str, filename: str) -> MediaFile:
        digest = hashlib.sha256(data).hexdigest()
        with self.lock:
            media_id = str(next(self.media_ids))
            stored = MediaFile(media_id, mime_type, filename, len(data), digest, data)
            self.media[media_id] = stored
        return stored

    def misannounce(
        self,
        media_id: str,
        *,
        file_size: int | str | None = None,
        sha256: str | None = None,
        mime_type: str | None = None,
    ) -> None:
        """Tell these (false) values of a file from now on, not the truth; it still serves
        its own bytes."""
        lies = {"file_size": file_size, "sha256": sha256, "mime_type": mime_type}
        with self.lock:
            self.media[media_id].announced.update({k: v for k, v in lies.items() if v is not None})

    def corrupt_media(self, media_id: str) -> None:
        """Serve other bytes for a file (its last byte changed, of the same size) from now
        on; its announced sha256 stays the true one's."""
        with self.lock:
            stored = self.media[media_id]
            data = bytearray(stored.data or b"\x00")
            data[-1] ^= 0xFF
            stored.served = bytes(data)

    def expire_media_urls(self) -> None:
        """Every download URL issued so far answers 404 from now on (later ones work)."""
        with self.lock:
            self.media_urls = {
                sig: (media_id, 0.0) for sig, (media_id, _) in self.media_urls.items()
            }

    def plan_media(self, *answers: Answer) -> None:
        """Answer the next media requests (uploads, URL lookups, downloads; one each, in
        order) so; then normally."""
        with self.lock:
            self.media_script.extend(answers)

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
        if _UPLOAD.match(urlsplit(self.path).path):
            return self._upload(graph, raw)
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
        """A media's download URL or bytes, or the account's message templates."""
        path = urlsplit(self.path).path
        if _MEDIA_BYTES.match(path) or _MEDIA_INFO.match(path):
            return self._media_get(self.server.graph, path)
        return self._templates()

    def _templates(self) -> None:
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

    def _media_request(self, graph: FakeGraph) -> Request | None:
        """Record a media request, play the next scripted media answer and check the token;
        the request if it goes on (None: answered, or dropped)."""
        request = Request(self.path, self.headers.get("Authorization", ""), {}, time.time())
        with graph.lock:
            graph.media_reads.append(request)
            answer = graph.media_script.pop(0) if graph.media_script else Answer()
        if not self._admitted(graph, request, answer):
            return None
        if answer.status != 200:
            self._reply(request, answer.status, _error(answer.code, "scripted error"))
            return None
        return request

    def _upload(self, graph: FakeGraph, raw: bytes) -> None:
        """``POST <base>/<phone number id>/media``: keep the file, answer its media id."""
        request = self._media_request(graph)
        if request is None:
            return None
        path = _UPLOAD.match(urlsplit(self.path).path)
        if path is None or (
            graph.phone_number_id is not None and path["number"] != graph.phone_number_id
        ):
            return self._refuse(request, 400, 100, "Unknown path", "unknown path")
        fields, file = _multipart(self.headers.get("Content-Type", ""), raw) or ({}, None)
        if fields.get("messaging_product") != "whatsapp" or file is None:
            why = "an upload needs messaging_product=whatsapp and a file"
            return self._refuse(request, 400, 100, "Invalid parameter", why)
        filename, part_type, data = file
        mime_type = fields.get("type") or part_type
        request.body = {"type": mime_type, "filename": filename, "size": len(data)}
        stored = graph._store(data, mime_type, filename)
        with graph.lock:
            graph.uploads.append(stored)
        return self._reply(request, 200, {"id": stored.id})

    def _media_get(self, graph: FakeGraph, path: str) -> None:
        """``GET <base>/<media id>`` (the download URL) or ``GET /media-bytes/<media id>``."""
        request = self._media_request(graph)
        if request is None:
            return None
        download = _MEDIA_BYTES.match(path)
        media_id = (download or _MEDIA_INFO.match(path) or {"media": ""})["media"]
        with graph.lock:
            stored = graph.media.get(media_id)
        if download is not None:
            sig = parse_qs(urlsplit(self.path).query).get("sig", [""])[0]
            return self._media_bytes(graph, request, stored, sig)
        if stored is None:
            return self._refuse(request, 400, 100, "Unsupported get request", "unknown media")
        return self._reply(request, 200, _media_info(graph, stored))

    def _media_bytes(
        self, graph: FakeGraph, request: Request, stored: MediaFile | None, sig: str
    ) -> None:
        """The bytes at a download URL, while it is valid (404 once it expired)."""
        with graph.lock:
            issued = graph.media_urls.get(sig)
        if (
            stored is None
            or issued is None
            or issued[0] != stored.id
            or time.monotonic() >= issued[1]
        ):
            return self._refuse(request, 404, 100, "URL signature expired", "media url expired")
        data = stored.data if stored.served is None else stored.served
        request.answered = 200
        try:
            self.send_response(200)
            self.send_header("Content-Type", stored.mime_type)
            # One download per connection: a client that stops reading at its cap hangs up.
            self.send_header("Connection", "close")
            if graph.media_chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if graph.media_chunked:
                for at in range(0, len(data), 64 * 1024):
                    chunk = data[at : at + 64 * 1024]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.wfile.write(data)
        except OSError:  # the client stopped reading (a download over its cap)
            request.answered = 0

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


def _media_info(graph: FakeGraph, stored: MediaFile) -> dict[str, Any]:
    """Meta's answer to ``GET <base>/<media id>``, with a new download URL for the file."""
    sig = secrets.token_urlsafe(16)
    parts = urlsplit(graph.url)
    with graph.lock:
        graph.media_urls[sig] = (stored.id, time.monotonic() + graph.media_url_ttl)
        announced = dict(stored.announced)
    info = {
        "messaging_product": "whatsapp",
        "url": f"{parts.scheme}://{parts.netloc}/media-bytes/{stored.id}?sig={sig}",
        "mime_type": stored.mime_type,
        "sha256": stored.sha256,
        "file_size": str(stored.size),
        "id": stored.id,
    }
    return info | announced


def _multipart(
    content_type: str, raw: bytes
) -> tuple[dict[str, str], tuple[str, str, bytes] | None] | None:
    """A multipart/form-data body's text fields, and its ``file`` part (file name, content
    type, bytes) if it has one; None when it is not multipart/form-data."""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        return None
    fields: dict[str, str] = {}
    file: tuple[str, str, bytes] | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if name == "file":
            file = (part.get_filename() or "", part.get_content_type(), payload)
        else:
            fields[name] = payload.decode("utf-8", "replace")
    return fields, file


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
