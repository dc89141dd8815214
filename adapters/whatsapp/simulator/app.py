"""The simulator's routes: the chat page, the fake Graph API it receives the bot's sends on, and
the small JSON API the page talks to.

- ``GET /``: the page (``static/``, no external asset: it works offline);
- ``POST /api/say``: a user's text, tap, file or place, posted to the bot's real ``/webhook``
  as Meta posts it (signed, a fresh wamid); the answer's status is returned and shown;
- ``POST /api/upload``: a file the user attaches (JSON, its bytes in base64), kept as media the
  bot can fetch by its id (:mod:`.media`); ``/api/say`` then sends it as an image, a document...;
- ``GET /api/media/{media_id}``: a file's bytes, for the page to show (an image) or download;
- ``POST /api/redeliver``: the user's last body again, byte for byte (the bot dedupes it);
- ``GET /api/events?user=``: the chat as server-sent events (:mod:`.hub`);
- ``GET /api/session?user=``: the session as ``fsm inspect`` shows it (the token, secret-looking
  data and the flow's sensitive keys hidden), and the user's 24-hour window;
- ``POST /api/move-back``: the user's last message moved back in time (25 hours unless told),
  so the window closes: written by compare-and-set, with a history entry;
- ``POST /graph/{phone_number_id}/messages``: the fake Graph API the bot sends to; every send
  becomes an event of the recipient's chat, a read receipt turns the ticks blue. A free-form
  send to a user whose window the page closed is refused with 131047, as Meta refuses it; a
  file by an id it does not hold, a place out of range or a caption on audio with 100.
- ``POST /graph/{phone_number_id}/media``, ``GET /graph/{media_id}`` and the download URL that
  answers (``GET /media-bytes/{media_id}``, signed, with the bot's bearer token): media as
  Meta keeps it, for the bot's uploads and for the user's files it fetches (:mod:`.media`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from adapters.whatsapp.signature import signature
from adapters.whatsapp.simulator import meta
from adapters.whatsapp.simulator.hub import Hub
from adapters.whatsapp.simulator.media import MAX_FILE, Files, multipart, shown
from adapters.whatsapp.window import WINDOW, window_closed
from fsm.async_engine import AsyncEngine
from fsm.attachments import MEDIA_KINDS
from fsm.errors import FsmError
from fsm.media_replies import CAPTIONED, WHATSAPP_CAPTION
from fsm.ops.sessions import SessionReport
from fsm.records import HistoryEntry, LockInfo, SessionView
from fsm.snapshot import Snapshot, decode_snapshot, encode_snapshot
from fsm.store import AsyncSessionStore, AsyncStore, lock_backoff

__all__ = ["PHONE", "Contact", "Simulator"]

STATIC = Path(__file__).parent / "static"
#: A phone number as WhatsApp gives it: international, digits only, no leading 0.
PHONE = re.compile(r"^[1-9][0-9]{5,14}$")
#: The Host names a page on loopback is reached by.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
#: The page loads only what this server serves.
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"
_MAX_TEXT = 4096
#: The largest JSON body of the page's (a text of 4,096 characters, escaped, fits).
_MAX_FORM = 256 * 1024
#: The largest file the page attaches, and its upload's JSON body (base64: 4 bytes for 3).
MAX_ATTACH = 32 * 1024 * 1024
_MAX_UPLOAD = MAX_ATTACH // 3 * 4 + 64 * 1024
#: A place's name or address, at most (characters).
_MAX_PLACE_TEXT = 1000
_REPLY_KINDS = ("button_reply", "list_reply", "button")
#: A quick-reply button's payload: 1 to 256 characters (Meta's limit).
_MAX_PAYLOAD = 256
#: Meta's code for a free-form message outside the user's 24-hour window.
OUTSIDE_WINDOW = 131047
#: How far back the page's control moves the user's last message, in hours.
MOVE_BACK_HOURS = 25.0
#: What a session the simulator wrote says wrote it (``update_from``), and its history event.
SOURCE = "fsm serve --simulator"
MOVED = "simulator: last message moved back"
#: How long a move waits for a session that keeps changing (a worker holds its lease).
_MOVE_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Contact:
    """A phone number the page offers, with the name WhatsApp would show for it."""

    number: str
    name: str
    note: str = ""


Handler = Callable[[Request], Awaitable[Response]]


class _BadInput(Exception):
    pass


class _TooLarge(_BadInput):
    """A body over its route's limit: 413."""


class _Refused(Exception):
    """A move-back that cannot be made (no session, no message of the user's): 409."""


class Simulator:
    """The simulator for one bot: ``webhook_url`` is where the bot's webhook listens, and the
    secrets are the ones that bot was configured with (generated by ``fsm serve --simulator``)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        webhook_url: str,
        app_secret: str,
        access_token: str,
        phone_number_id: str,
        contacts: list[Contact],
        title: str = "",
        hosts: frozenset[str] | None = LOOPBACK,
        window: float = WINDOW,
    ) -> None:
        if not contacts:
            raise ValueError("the simulator needs at least one contact")
        self.engine = engine
        self.hub = Hub()
        self.webhook_url = webhook_url
        self.phone_number_id = phone_number_id
        self.contacts = contacts
        self.title = title or engine.spec.name
        self._app_secret = app_secret
        self._access_token = access_token
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))
        #: The files: the user's attachments and the bot's uploads, by media id.
        self.files = Files()
        self._last: dict[str, bytes] = {}  # user -> the last body posted for them
        self._senders: OrderedDict[str, str] = OrderedDict()  # wamid -> user, for read receipts
        self._hosts = hosts  # the Host names the page may be reached by (None: any)
        self.window = window  # WhatsApp's 24 hours, as the bot judges them (seconds)
        #: Users whose window the page closed: the fake Graph API refuses free-form sends to
        #: them (131047) until they write again.
        self.closed: set[str] = set()

    def __repr__(self) -> str:
        return f"Simulator(webhook_url={self.webhook_url!r}, contacts={len(self.contacts)})"

    def routes(self) -> list[BaseRoute]:
        """The page's routes, each behind :meth:`_guarded`, and the fake Graph API (which
        checks the bot's bearer token instead)."""
        page = self._guarded
        return [
            Route("/", page(self.page), methods=["GET"]),
            Route("/api/config", page(self.config), methods=["GET"]),
            Route("/api/say", page(self.say), methods=["POST"]),
            Route("/api/redeliver", page(self.redeliver), methods=["POST"]),
            Route("/api/events", page(self.events), methods=["GET"]),
            Route("/api/session", page(self.session), methods=["GET"]),
            Route("/api/move-back", page(self.move_back), methods=["POST"]),
            Route("/api/upload", page(self.upload), methods=["POST"]),
            Route("/api/media/{media_id}", page(self.media), methods=["GET"]),
            Route("/graph/{phone_number_id}/messages", self.graph, methods=["POST"]),
            Route("/graph/{phone_number_id}/media", self.graph_upload, methods=["POST"]),
            Route("/graph/{media_id}", self.graph_media, methods=["GET"]),
            Route("/media-bytes/{media_id}", self.media_bytes, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]

    def _guarded(self, handler: Handler) -> Handler:
        """``handler`` for requests of the page itself only. Another site open in the same
        browser can neither post as a user (a POST must be JSON, from this origin) nor read a
        session through a DNS name pointed at loopback (the Host must be a known name)."""

        async def guarded(request: Request) -> Response:
            host = request.url.hostname or ""
            if self._hosts is not None and host not in self._hosts:
                return JSONResponse({"error": "unknown host"}, status_code=403)
            origin = request.headers.get("origin")
            if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
                return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
            if request.method == "POST" and not request.headers.get("content-type", "").startswith(
                "application/json"
            ):
                return JSONResponse({"error": "send application/json"}, status_code=415)
            return await handler(request)

        return guarded

    async def aclose(self) -> None:
        self.hub.close()
        await self._http.aclose()

    # --- the page and its API ------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        headers = {"cache-control": "no-cache", "content-security-policy": CSP}
        return FileResponse(STATIC / "index.html", headers=headers)

    async def config(self, request: Request) -> Response:
        return JSONResponse(
            {
                "title": self.title,
                "flow": self.engine.spec.name,
                "contacts": [
                    {"number": c.number, "name": c.name, "note": c.note} for c in self.contacts
                ],
            }
        )

    async def say(self, request: Request) -> Response:
        try:
            form = await _json(request)
            user = _user(form.get("user"))
            message, said = self._message(user, form)
        except _BadInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        body = meta.webhook_body(
            [message], phone_number_id=self.phone_number_id, names={user: self._name(user)}
        )
        self._last[user] = body
        self._remember(message["id"], user)
        self.closed.discard(user)  # the user writes: their window opens again
        self.hub.publish(user, {"kind": "user", "id": message["id"], **said})
        status = await self._post(user, message["id"], body)
        return JSONResponse({"id": message["id"], "status": status})

    def _message(self, user: str, form: dict[str, Any]) -> tuple[meta.Message, dict[str, Any]]:
        """The Meta message for the page's input (a file, a place, a tap or a text), and what
        the chat shows for it."""
        if form.get("media") is not None:
            return self._media_message(user, form["media"])
        if form.get("location") is not None:
            return _location(user, form["location"])
        return _message(user, form)

    def _media_message(self, user: str, raw: object) -> tuple[meta.Message, dict[str, Any]]:
        """``{"id", "kind"?, "caption"?}``: a file uploaded with ``/api/upload``, sent as Meta
        announces it (its id, type and sha256; the bot fetches the bytes by the id)."""
        if not isinstance(raw, dict):
            raise _BadInput("media must be an object: {id, kind, caption}")
        media_id = raw.get("id")
        kept = self.files.get(media_id) if isinstance(media_id, str) else None
        if kept is None:
            raise _BadInput("media.id must be the id /api/upload gave")
        kind, caption = raw.get("kind", "document"), raw.get("caption", "")
        if kind not in MEDIA_KINDS:
            raise _BadInput(f"media.kind must be one of {', '.join(MEDIA_KINDS)}")
        if not isinstance(caption, str) or len(caption) > WHATSAPP_CAPTION:
            raise _BadInput(
                f"media.caption must be a text of at most {WHATSAPP_CAPTION} characters"
            )
        if caption and kind not in CAPTIONED:
            raise _BadInput(f"a {kind} carries no caption")
        message = meta.media(
            user,
            kind,
            kept.id,
            mime_type=kept.mime_type,
            sha256=kept.sha256,
            caption=caption,
            filename=kept.filename,
        )
        return message, {"text": caption, "media": {**kept.described(), "kind": kind}}

    async def upload(self, request: Request) -> Response:
        """``{"data": base64, "mime_type", "filename"?}``: a file the user attaches, kept for
        the bot to fetch; its media id, type, size and sha256 (hex)."""
        try:
            form = await _json(request, _MAX_UPLOAD)
            data = _decoded(form.get("data"))
            mime_type, filename = form.get("mime_type"), form.get("filename", "")
            if not isinstance(mime_type, str) or not isinstance(filename, str):
                raise _BadInput("mime_type and filename must be texts")
        except _TooLarge:
            return JSONResponse({"error": f"a file is at most {MAX_ATTACH >> 20} MB"}, 413)
        except _BadInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        name = filename.replace("\\", "/").rsplit("/", 1)[-1][:240]
        kept = self.files.add(data, mime_type, name, origin="user")
        described = {"sha256": kept.sha256, **kept.described()}
        return JSONResponse(described)

    async def media(self, request: Request) -> Response:
        """A file's bytes for the page: an image shown inline, anything else (or with
        ``?download=1``) downloaded under its name."""
        kept = self.files.get(request.path_params["media_id"])
        if kept is None:
            return JSONResponse(
                {"error": "no such file (the simulator keeps files in memory)"}, 404
            )
        download = request.query_params.get("download") == "1"
        return Response(kept.data, headers=shown(kept, download=download))

    async def redeliver(self, request: Request) -> Response:
        try:
            user = _user((await _json(request)).get("user"))
        except _BadInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        body = self._last.get(user)
        if body is None:
            return JSONResponse({"error": "nothing to re-deliver yet"}, status_code=409)
        wamid = msgspec.json.decode(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        self.hub.publish(user, {"kind": "redelivered", "id": wamid})
        status = await self._post(user, wamid, body)
        return JSONResponse({"id": wamid, "status": status})

    async def events(self, request: Request) -> Response:
        try:
            user = _user(request.query_params.get("user"))
        except _BadInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return StreamingResponse(
            self.hub.stream(user),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def session(self, request: Request) -> Response:
        try:
            user = _user(request.query_params.get("user"))
        except _BadInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        store, now = self.engine.store, self.engine.clock.now()
        loaded = await store.load(user)
        if loaded.record is None:
            window = self._window(user, 0.0, now)
            empty: dict[str, Any] = {"session": None, "history": [], "window": window}
            return Response(msgspec.json.encode(empty), media_type="application/json")
        view = SessionView(user, loaded.record, *(await _ttl_and_lock(store, user)))
        history = await store.history(user, limit=12)
        report = SessionReport.of(  # the flow's sensitive keys hidden, as fsm inspect does
            view, self.engine.spec, now=now, history_version=history[0].version if history else None
        )
        stored = report.diagnosis.stored
        window = self._window(user, stored.last_inbound if stored is not None else 0.0, now)
        payload = {"session": report.to_dict(now=now), "history": history, "window": window}
        return Response(msgspec.json.encode(payload), media_type="application/json")

    async def move_back(self, request: Request) -> Response:
        """Move the user's last message ``hours`` (default 25) back: the snapshot's
        ``last_inbound``, written one version up by compare-and-set with a history entry, as
        if the user had last written that long ago. Past 24 hours the window is closed: the
        bot sends a timer's or an event's reply as its template (or not at all), and this fake
        Graph API refuses free-form sends to the user (131047) until they write again."""
        try:
            form = await _json(request)
            user = _user(form.get("user"))
            hours = _hours(form.get("hours", MOVE_BACK_HOURS))
        except _BadInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            moved, now = await self._move_back(user, hours * 3600)
        except _Refused as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except FsmError as exc:  # the store is unavailable: nothing was written
            return JSONResponse({"error": f"the store failed: {type(exc).__name__}"}, 503)
        if window_closed(moved.last_inbound, now, self.window):
            self.closed.add(user)  # Meta's window is closed too: free-form sends are refused
        window = self._window(user, moved.last_inbound, now)
        self.hub.publish(
            user, {"kind": "moved", "hours": hours, "version": moved.version, "window": window}
        )
        return JSONResponse(
            {"version": moved.version, "last_inbound": moved.last_inbound, "window": window}
        )

    async def _move_back(self, user: str, seconds: float) -> tuple[Snapshot, float]:
        """Write ``user``'s snapshot with ``last_inbound`` ``seconds`` earlier, one version
        up, by compare-and-set (a save of the bot's in between: read again and retry; a
        worker holding the user's lease: wait for it, up to a few seconds)."""
        store, engine = self.engine.store, self.engine
        deadline, delays = time.monotonic() + _MOVE_WAIT, lock_backoff(0.005, 0.1)
        while True:
            record = (await store.load(user)).record
            if record is None:
                raise _Refused("this number has no session: send a message first")
            try:
                snapshot = decode_snapshot(record.payload, user_key=user)
            except FsmError:
                raise _Refused("the stored session cannot be read (see fsm inspect)") from None
            if snapshot.last_inbound <= 0:
                raise _Refused(
                    "the session holds no message of the user's (the window is unknown): "
                    "send a message first"
                )
            now, version = engine.clock.now(), record.version + 1
            moved = msgspec.structs.replace(
                snapshot,
                version=version,
                last_inbound=snapshot.last_inbound - seconds,
                update_from=SOURCE,
            )
            ttl = await store.ttl(user) if isinstance(store, AsyncStore) else None
            saved = await store.save(
                user,
                encode_snapshot(moved, user_key=user),
                version=version,
                expected_version=record.version,
                expected_tag=record.tag,
                ttl=ttl if ttl is not None and ttl > 0 else engine.session_ttl,  # as it was
                history=HistoryEntry(
                    version=version,
                    from_stage=snapshot.stage,
                    to_stage=snapshot.stage,
                    event=MOVED,
                    update_from=SOURCE,
                    at=now,
                    from_step=snapshot.step,
                    to_step=snapshot.step,
                ),
            )
            if saved.saved:
                return moved, now
            if time.monotonic() >= deadline:
                raise _Refused(f"the session kept changing ({saved.status.value}): try again")
            await asyncio.sleep(next(delays))

    def _window(self, user: str, last_inbound: float, now: float) -> dict[str, Any]:
        """The user's 24-hour window as the bot judges it (by the engine's clock and the
        snapshot's ``last_inbound``), for the panel: open (seconds ``left``), closed (since
        ``closed_at``, ``closed_for`` seconds), or unknown (no message of the user's)."""
        shown: dict[str, Any] = {"last_inbound": last_inbound, "refusing": user in self.closed}
        if last_inbound <= 0:
            return {"state": "unknown", **shown}
        ends = last_inbound + self.window
        if window_closed(last_inbound, now, self.window):
            return {"state": "closed", "closed_at": ends, "closed_for": now - ends, **shown}
        return {"state": "open", "left": ends - now, **shown}

    # --- the fake Graph API --------------------------------------------------------------------

    def _refused(self, request: Request, *, number: bool = False) -> Response | None:
        """The Graph API's error for a request without the bot's token (or, with ``number``,
        to another phone number id), else None."""
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self._access_token}".encode()):
            return _graph_error(401, 190, "Invalid OAuth access token.")
        if number and request.path_params["phone_number_id"] != self.phone_number_id:
            return _graph_error(400, 100, "Unsupported post request.")
        return None

    async def graph(self, request: Request) -> Response:
        refused = self._refused(request, number=True)
        if refused is not None:
            return refused
        try:
            payload = msgspec.json.decode(await request.body())
        except msgspec.DecodeError:
            return _graph_error(400, 100, "Invalid JSON.")
        if not isinstance(payload, dict):
            return _graph_error(400, 100, "Invalid parameter.")
        if payload.get("status") == "read":
            wamid = str(payload.get("message_id", ""))
            user = self._senders.get(wamid)
            if user is not None:
                self.hub.publish(user, {"kind": "read", "id": wamid})
            return JSONResponse({"success": True})
        to = payload.get("to")
        if not isinstance(to, str) or not PHONE.match(to):
            return _graph_error(400, 100, "Invalid parameter: to.")
        kind = payload.get("type")
        if kind == "template":
            sent = payload.get("template")
            if not isinstance(sent, dict) or not sent.get("name"):
                return _graph_error(400, 100, "Invalid parameter: template.name.")
            if not isinstance(sent.get("language"), dict):
                return _graph_error(400, 100, "Invalid parameter: template.language.")
        problem = _send_problem(payload, self.files)
        if problem is not None:  # as Meta refuses it; the chat says so
            self.hub.publish(to, {"kind": "refused", "code": 100, "type": kind, "error": problem})
            return _graph_error(400, 100, problem)
        if kind != "template" and to in self.closed:  # only a template reaches a closed window
            self.hub.publish(to, {"kind": "refused", "code": OUTSIDE_WINDOW, "type": kind})
            return _graph_error(400, OUTSIDE_WINDOW, "Re-engagement message")
        wamid = meta.new_wamid()
        event: dict[str, Any] = {"kind": "bot", "id": wamid, "payload": payload}
        held = self.files.get(str(_at(payload, str(kind), "id")))
        if kind in MEDIA_KINDS and held is not None:
            event["media"] = held.described()  # where the page shows it, its size
        self.hub.publish(to, event)
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": wamid}],
            }
        )

    async def graph_upload(self, request: Request) -> Response:
        """``POST /{phone_number_id}/media``, multipart as Meta takes it (``messaging_product``
        whatsapp, the file's ``type``, the ``file``): the file kept, its media id answered."""
        refused = self._refused(request, number=True)
        if refused is not None:
            return refused
        try:
            raw = await _read(request, MAX_FILE + 64 * 1024)
        except _TooLarge:
            return _graph_error(400, 100, "Invalid parameter: the file is over 100 MB.")
        parts = multipart(request.headers.get("content-type", ""), raw)
        if parts is None:
            return _graph_error(400, 100, "Invalid parameter: send multipart/form-data.")
        product, typed, file = (parts.get(n) for n in ("messaging_product", "type", "file"))
        if product is None or product.data != b"whatsapp":
            return _graph_error(400, 100, "Invalid parameter: messaging_product.")
        if typed is None or not typed.data:
            return _graph_error(400, 100, "The parameter type is required.")
        if file is None or not file.data:
            return _graph_error(400, 100, "The parameter file is required.")
        mime_type = typed.data.decode("utf-8", "replace")
        try:
            kept = self.files.add(file.data, mime_type, file.filename, origin="bot")
        except ValueError:
            return _graph_error(400, 100, "Invalid parameter: the file is over 100 MB.")
        return JSONResponse({"id": kept.id})

    async def graph_media(self, request: Request) -> Response:
        """``GET /{media_id}``: where the file is (a download URL on this server, valid five
        minutes), its type, sha256 (hex) and size, as Meta answers it."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        media_id = request.path_params["media_id"]
        kept = self.files.get(media_id)
        if kept is None:
            return _graph_error(400, 100, f"Unsupported get request: no media {media_id!r}.")
        base = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(kept.info(self.files.download_url(base, kept.id)))

    async def media_bytes(self, request: Request) -> Response:
        """A download URL: the bytes, to the bot's bearer token, until the URL expires (then
        404, as Meta's media host answers)."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        media_id, query = request.path_params["media_id"], request.query_params
        kept = self.files.get(media_id)
        if kept is None or not self.files.valid(
            media_id, query.get("expires", ""), query.get("sig", "")
        ):
            return _graph_error(404, 100, "URL signature expired.")
        return Response(kept.data, media_type=kept.mime_type)

    # --- internals -----------------------------------------------------------------------------

    async def _post(self, user: str, wamid: str, body: bytes) -> int:
        """Post ``body`` to the webhook as Meta does; the answer's status becomes an event."""
        headers = {
            "content-type": "application/json",
            "x-hub-signature-256": signature(body, self._app_secret),
        }
        try:
            answer = await self._http.post(self.webhook_url, content=body, headers=headers)
            status = answer.status_code
        except httpx.HTTPError:
            status = 0  # the webhook did not answer at all
        self.hub.publish(user, {"kind": "delivery", "id": wamid, "status": status})
        return status

    def _name(self, user: str) -> str:
        return next((c.name for c in self.contacts if c.number == user), "Tester")

    def _remember(self, wamid: str, user: str) -> None:
        self._senders[wamid] = user
        while len(self._senders) > 10_000:
            self._senders.popitem(last=False)


async def _read(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes (:class:`_TooLarge` as soon as more arrive)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge(f"the body is over {limit} bytes")
    return bytes(body)


async def _json(request: Request, limit: int = _MAX_FORM) -> dict[str, Any]:
    try:
        form = msgspec.json.decode(await _read(request, limit))
    except msgspec.DecodeError:
        raise _BadInput("the body must be JSON") from None
    if not isinstance(form, dict):
        raise _BadInput("the body must be a JSON object")
    return form


def _user(raw: object) -> str:
    if not isinstance(raw, str) or not PHONE.match(raw):
        raise _BadInput("user must be a phone number in international form, digits only")
    return raw


def _message(user: str, form: dict[str, Any]) -> tuple[meta.Message, dict[str, str]]:
    """The Meta message for the page's input, and what the chat shows for it."""
    reply = form.get("reply")
    if reply is not None:
        if not isinstance(reply, dict) or reply.get("kind") not in _REPLY_KINDS:
            raise _BadInput(f"reply.kind must be one of {', '.join(_REPLY_KINDS)}")
        if reply["kind"] == "button":
            return _button(user, reply)
        option, title = reply.get("id"), reply.get("title", "")
        if not isinstance(option, str) or not option or not isinstance(title, str):
            raise _BadInput("reply needs an id and a title")
        tapped = meta.tap(reply["kind"], user, option, title)
        return tapped, {"text": title or option, "pressed": option}
    text = form.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _BadInput("text must be a non-empty string")
    if len(text) > _MAX_TEXT:
        raise _BadInput(f"text is longer than WhatsApp's {_MAX_TEXT} characters")
    return meta.text(user, text), {"text": text}


def _button(user: str, reply: dict[str, Any]) -> tuple[meta.Message, dict[str, str]]:
    """A tap on a template's quick-reply button: ``{"kind": "button", "payload", "text"?,
    "context"?}`` (the label, and the wamid of the template message tapped)."""
    payload, text, context = reply.get("payload"), reply.get("text", ""), reply.get("context")
    if not isinstance(payload, str) or not 0 < len(payload) <= _MAX_PAYLOAD:
        raise _BadInput(f"reply.payload must be 1 to {_MAX_PAYLOAD} characters")
    if not isinstance(text, str) or len(text) > _MAX_PAYLOAD:
        raise _BadInput("reply.text must be a string")
    if context is not None and (not isinstance(context, str) or len(context) > _MAX_PAYLOAD):
        raise _BadInput("reply.context must be the wamid of the message tapped")
    tapped = meta.button(user, payload, text, context=context)
    return tapped, {"text": text or payload, "pressed": payload}


def _location(user: str, raw: object) -> tuple[meta.Message, dict[str, Any]]:
    """``{"latitude", "longitude", "name"?, "address"?}``: a place, as Meta sends it."""
    if not isinstance(raw, dict):
        raise _BadInput("location must be an object: {latitude, longitude, name, address}")
    latitude = _coordinate(raw.get("latitude"), 90.0)
    longitude = _coordinate(raw.get("longitude"), 180.0)
    if latitude is None or longitude is None:
        raise _BadInput("location needs a latitude within ±90 and a longitude within ±180")
    name, address = raw.get("name", ""), raw.get("address", "")
    for text in (name, address):
        if not isinstance(text, str) or len(text) > _MAX_PLACE_TEXT:
            raise _BadInput(f"a place's name and address are texts of {_MAX_PLACE_TEXT} at most")
    message = meta.location(user, latitude, longitude, name=name, address=address)
    return message, {"text": "", "location": message["location"]}


def _coordinate(raw: object, most: float) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    value = float(raw)
    return value if -most <= value <= most else None  # NaN and infinities are out of range


def _decoded(raw: object) -> bytes:
    """A file's bytes from the page: base64, not empty."""
    if not isinstance(raw, str) or not raw:
        raise _BadInput("data must be the file's bytes in base64")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise _BadInput("data is not base64") from None
    if not data:
        raise _BadInput("the file is empty")
    return data


def _send_problem(payload: dict[str, Any], files: Files) -> str | None:
    """Why Meta would refuse this send of a file, a place, a location request or a reaction
    (None: it would take it, or it is of another type)."""
    kind = payload.get("type")
    content = payload.get(kind) if isinstance(kind, str) else None
    if kind in MEDIA_KINDS:
        return _media_problem(kind, content, files)
    if kind == "location":
        if not isinstance(content, dict):
            return "Invalid parameter: location."
        if _coordinate(content.get("latitude"), 90.0) is None:
            return "Invalid parameter: location.latitude."
        if _coordinate(content.get("longitude"), 180.0) is None:
            return "Invalid parameter: location.longitude."
    if kind == "interactive" and _at(content, "type") == "location_request_message":
        text = _at(content, "body", "text")
        if not isinstance(text, str) or not text.strip():
            return "Invalid parameter: interactive.body.text."
        if _at(content, "action", "name") != "send_location":
            return "Invalid parameter: interactive.action.name must be send_location."
    if kind == "reaction":
        if not isinstance(content, dict) or not isinstance(content.get("message_id"), str):
            return "Invalid parameter: reaction.message_id."
        if not isinstance(content.get("emoji", ""), str):
            return "Invalid parameter: reaction.emoji."
    return None


def _at(content: object, *keys: str) -> object:
    """``content[key][key]...``, or None where one is missing or not an object."""
    for key in keys:
        if not isinstance(content, dict):
            return None
        content = content.get(key)
    return content


def _media_problem(kind: str, content: object, files: Files) -> str | None:
    if not isinstance(content, dict):
        return f"Invalid parameter: {kind}."
    media_id, link = content.get("id"), content.get("link")
    if (media_id is None) == (link is None):
        return f"Invalid parameter: a {kind} is sent by one of id and link."
    if media_id is not None and (not isinstance(media_id, str) or files.get(media_id) is None):
        return f"Invalid parameter: {kind}.id: no media uploaded with that id."
    if link is not None and (
        not isinstance(link, str) or not link.startswith(("https://", "http://"))
    ):
        return f"Invalid parameter: {kind}.link is not an http(s) URL."
    caption = content.get("caption")
    if caption is not None and kind not in CAPTIONED:
        return f"Invalid parameter: a {kind} takes no caption."
    if caption is not None and (not isinstance(caption, str) or len(caption) > WHATSAPP_CAPTION):
        return f"Invalid parameter: {kind}.caption (at most {WHATSAPP_CAPTION} characters)."
    return None


def _hours(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 24 * 366:
        raise _BadInput("hours must be a number of hours above 0 and at most a year")
    return float(raw)


def _graph_error(status: int, code: int, message: str) -> Response:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    error["error_data"] = {"messaging_product": "whatsapp", "details": message}
    error["fbtrace_id"] = "SIM"
    return JSONResponse({"error": error}, status_code=status)


async def _ttl_and_lock(
    store: AsyncSessionStore, user: str
) -> tuple[float | None, LockInfo | None]:
    """The session's TTL and lock, where the store reads them (the engine's port alone does
    not: then the panel shows neither)."""
    if not isinstance(store, AsyncStore):
        return None, None
    return await store.ttl(user), await store.lock_info(user)
