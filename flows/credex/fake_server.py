"""The in-memory fake Credex API served over HTTP on loopback, with fault injection.

It speaks the wire protocol :mod:`flows.credex.http` speaks: ``POST /{call}`` with a JSON body,
``x-client-api-key``, ``Authorization: Bearer <jwt>`` and ``Idempotency-Key``; answers are the
API's camelCase JSON, errors ``{"message": ...}`` with the API's status. Behind it is a
:class:`~flows.credex.fake.FakeCredexApi`, so its test controls (``fail_next``, ``expire_tokens``,
``count``, the transcript directives) work on the served API too. With an RSA-signing fake,
``GET /.well-known/jwks.json`` serves its public key.

Faults (:class:`Faults`, or ``POST /_faults`` with the same fields as JSON) apply to the next
``count`` calls of one endpoint (or of every endpoint, ``call`` omitted):

- ``delay``: wait ``seconds`` before running the call (with ``applied``: after it, so a client
  that gives up first does not know the call was made);
- ``status``: answer that status (``{"message": "injected"}``); with ``applied`` the call is
  made first, as when a gateway times out after the API did the work;
- ``drop``: close the connection without an answer (``applied`` as above);
- ``shape``: answer the call's JSON with its keys renamed (a changed response shape).

Events: like the real service it tells the receiver's bot about an offer made to them. Given the
bot's events URL and secret (``CREDEX_EVENTS_URL`` and ``FSM_EVENTS_SECRET``, or
``events_url=`` and ``events_secret=``), each :class:`~flows.credex.fake.Notification` is POSTed
there (``fsm serve``'s ``POST /events``) by an :class:`EventSender`: signed
``X-Fsm-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``, from a background thread,
tried again a few times on a 5xx or a connection error (the event id makes that harmless).

Run it: ``python -m flows.credex.fake_server --port 8600`` (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from flows.credex.api import CALLS, ApiError, ApiResponseError
from flows.credex.fake import FakeCredexApi, Notification

__all__ = [
    "DEV_CLIENT_KEY",
    "EventSender",
    "FakeCredexServer",
    "Fault",
    "Faults",
    "rsa_key",
    "serving",
    "signature",
]

log = logging.getLogger("flows.credex.fake_server")

#: The client key the fake accepts unless told otherwise (for the demo stack and tests).
DEV_CLIENT_KEY = "credex-dev-client-key"
_MAX_BODY = 64 * 1024
_KINDS = ("delay", "status", "drop", "shape")
_NOT_JSON = object()  # a body that did not decode


@dataclass(slots=True)
class Fault:
    """One injected fault, for the next ``count`` calls of ``call`` (None: any call)."""

    kind: str  # "delay", "status", "drop" or "shape"
    call: str | None = None
    count: int = 1
    status: int = 503
    seconds: float = 0.0
    applied: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {_KINDS}")
        if self.call is not None and self.call not in CALLS:
            raise ValueError(f"unknown Credex call {self.call!r}")
        if self.count < 1:
            raise ValueError("count must be >= 1")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status (100-599)")
        if not 0 <= self.seconds <= 60:
            raise ValueError("seconds must be between 0 and 60")


class Faults:
    """The queue of faults still to fire; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._queued.append(dataclasses.replace(fault))  # a copy: its count is ours

    def delay(
        self, seconds: float, call: str | None = None, count: int = 1, *, applied: bool = False
    ) -> None:
        self.add(Fault("delay", call, count, seconds=seconds, applied=applied))

    def status(
        self, status: int, call: str | None = None, count: int = 1, *, applied: bool = False
    ) -> None:
        self.add(Fault("status", call, count, status=status, applied=applied))

    def drop(self, call: str | None = None, count: int = 1, *, applied: bool = False) -> None:
        self.add(Fault("drop", call, count, applied=applied))

    def shape(self, call: str | None = None, count: int = 1) -> None:
        self.add(Fault("shape", call, count))

    def clear(self) -> None:
        with self._lock:
            self._queued.clear()

    def take(self, call: str, kinds: tuple[str, ...]) -> Fault | None:
        """The oldest queued fault of one of ``kinds`` for ``call``, used once more (faults
        of one kind fire in the order they were added, one per call)."""
        with self._lock:
            for fault in self._queued:
                if fault.kind in kinds and fault.call in (None, call):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._queued.remove(fault)
                    return fault
        return None


#: The header that signs a POST /events body (the bot checks it with FSM_EVENTS_SECRET).
SIGNATURE_HEADER = "X-Fsm-Signature-256"


def signature(body: bytes, secret: str) -> str:
    """The ``X-Fsm-Signature-256`` value for ``body``: ``sha256=`` and the hex HMAC-SHA256 of
    the raw bytes under ``secret``.

    >>> signature(b"{}", "s3cret")
    'sha256=adbde1ce40c89c14215687d5d762a47df6dfaefcfad61e2e86718ffc8498571b'
    """
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class EventSender:
    """POSTs notifications to a bot's ``POST /events``, signed with ``secret``, one after
    another from a background thread (a call to :meth:`send` never waits for the network).

    Each is tried up to ``attempts`` times: again after a 5xx or a connection error (waiting
    ``backoff`` seconds, doubled each time), not after another 4xx (the bot refused it: trying
    again cannot help). ``delivered`` and ``failed`` list the event ids, for tests and the
    log; at most ``capacity`` wait to be sent (more are dropped, logged). Nothing logged shows
    the secret, the user key or the event's data."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        attempts: int = 4,
        backoff: float = 0.2,
        timeout: float = 5.0,
        capacity: int = 1000,
    ) -> None:
        if not secret:
            raise ValueError("an events secret is required (FSM_EVENTS_SECRET)")
        if attempts < 1 or backoff < 0 or timeout <= 0:
            raise ValueError("attempts must be >= 1, backoff >= 0 and timeout > 0")
        self.url = url
        self._secret = secret
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.delivered: list[str] = []
        self.failed: list[str] = []
        self._queue: queue.Queue[Notification | None] = queue.Queue(capacity)
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0  # queued or being sent
        self._thread = threading.Thread(target=self._run, name="credex-events", daemon=True)

    def __repr__(self) -> str:
        return f"EventSender(url={_shown(self.url)!r}, secret=<redacted>)"

    def start(self) -> EventSender:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop once what is being sent is done (what still waits is not sent)."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # full: it sees _stopping after its send
            self._queue.put_nowait(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def send(self, notification: Notification) -> None:
        """Queue ``notification`` to be posted (the fake API's notifier)."""
        with self._idle:
            self._busy += 1
        try:
            self._queue.put_nowait(notification)
        except queue.Full:
            self._done()
            log.warning("events queue full: event %s not sent", notification.event_id)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until everything queued was delivered or given up; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _done(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def _run(self) -> None:
        while not self._stopping.is_set():
            notification = self._queue.get()
            if notification is None:
                return
            try:
                self._deliver(notification)
            finally:
                self._done()

    def _deliver(self, notification: Notification) -> None:
        body = msgspec.json.encode(
            {
                "user": notification.user,
                "event": notification.event,
                "data": notification.data,
                "event_id": notification.event_id,
            }
        )
        status: int | str = "not tried"
        for attempt in range(self.attempts):
            if attempt and self._stopping.wait(self.backoff * 2 ** (attempt - 1)):
                break  # stopping: no more waiting
            status = self._post(body)
            if isinstance(status, int) and 200 <= status < 300:
                self.delivered.append(notification.event_id)
                return
            if isinstance(status, int) and status < 500:
                break  # refused: trying again cannot help
        self.failed.append(notification.event_id)
        log.warning("event %s not delivered (%s)", notification.event_id, status)

    def _post(self, body: bytes) -> int | str:
        """POST ``body`` once: the status, or the class of the connection error."""
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "content-type": "application/json",
                SIGNATURE_HEADER: signature(body, self._secret),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out
            return type(getattr(exc, "reason", exc)).__name__


def _shown(url: str) -> str:
    """``url`` as it may be printed: without credentials, query or fragment."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _Drop(Exception):
    """Close the connection without answering."""


def _arg(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ApiError(400, "request", f"{name} is missing or not of the expected type")
    return value


Route = Callable[[FakeCredexApi, dict[str, Any], str, str | None], Any]

_ROUTES: dict[str, Route] = {
    "login": lambda api, b, t, k: api.login(_arg(b, "phone", str)),
    "onboardMember": lambda api, b, t, k: api.onboard_member(
        _arg(b, "firstname", str),
        _arg(b, "lastname", str),
        _arg(b, "phone", str),
        b.get("defaultDenom", "USD"),
        idempotency_key=k,
    ),
    "getMemberDashboardByPhone": lambda api, b, t, k: api.get_member_dashboard_by_phone(
        _arg(b, "phone", str), token=t
    ),
    "getAccountByHandle": lambda api, b, t, k: api.get_account_by_handle(
        _arg(b, "accountHandle", str), token=t
    ),
    "createCredex": lambda api, b, t, k: api.create_credex(
        _arg(b, "issuerAccountID", str),
        _arg(b, "receiverAccountID", str),
        _arg(b, "Denomination", str),
        float(_arg(b, "InitialAmount", (int, float))),
        token=t,
        idempotency_key=k,
    ),
    "acceptCredex": lambda api, b, t, k: api.accept_credex(
        _arg(b, "credexID", str), token=t, idempotency_key=k
    ),
    "declineCredex": lambda api, b, t, k: api.decline_credex(
        _arg(b, "credexID", str), token=t, idempotency_key=k
    ),
    "cancelCredex": lambda api, b, t, k: api.cancel_credex(
        _arg(b, "credexID", str), token=t, idempotency_key=k
    ),
    "createRecurring": lambda api, b, t, k: api.create_recurring(
        _arg(b, "sourceAccountID", str), token=t, idempotency_key=k
    ),
    "getLedger": lambda api, b, t, k: api.get_ledger(
        _arg(b, "accountID", str), _arg(b, "startRow", int), _arg(b, "numRows", int), token=t
    ),
}
assert set(_ROUTES) == set(CALLS)


def _reshaped(raw: Any) -> Any:
    """``raw`` with every object key renamed: the same data in a shape no client expects."""
    if isinstance(raw, dict):
        return {f"{k}_v2": _reshaped(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_reshaped(v) for v in raw]
    return raw


class FakeCredexServer:
    """:class:`FakeCredexApi` on a loopback HTTP port; ``requests`` records what arrived
    (path, headers without secrets' values, body) for tests."""

    def __init__(
        self,
        api: FakeCredexApi | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_api_key: str = DEV_CLIENT_KEY,
        events_url: str | None = None,
        events_secret: str | None = None,
    ) -> None:
        self.api = api if api is not None else FakeCredexApi()
        #: Posts the fake's notifications to the bot (with ``events_url``), else None.
        self.events: EventSender | None = None
        if events_url:
            if self.api.notifier is not None:
                raise ValueError("the fake API already sends its notifications elsewhere")
            self.events = EventSender(events_url, events_secret or "")
            self.api.notifier = self.events.send
        self.faults = Faults()
        self.client_api_key = client_api_key
        self.requests: list[dict[str, Any]] = []
        self.jwks_requests: list[float] = []  # when the JWKS was fetched
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}"

    def start(self) -> FakeCredexServer:
        if self.events is not None:
            self.events.start()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        if self.events is not None:
            self.events.stop()

    def serve_forever(self) -> None:
        if self.events is not None:
            self.events.start()
        try:
            self._httpd.serve_forever()
        finally:
            if self.events is not None:
                self.events.stop()

    def seen(self, call: str) -> list[dict[str, Any]]:
        """The recorded requests of ``call``, oldest first."""
        with self._lock:
            return [r for r in self.requests if r["call"] == call]

    # --- one request -------------------------------------------------------------------------

    def answer(self, call: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        """(status, JSON body) for one request; raises :class:`_Drop` to drop the connection."""
        if call not in _ROUTES:
            return 404, {"message": f"no such call {call!r}"}
        try:  # decoded once: the record and the call both read it
            body: Any = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = _NOT_JSON
        client_ok = self._client_ok(headers)
        self._record(call, headers, None if body is _NOT_JSON else body, client_ok)
        if not client_ok:
            return 403, {"message": "client api key refused"}
        delay = self.faults.take(call, ("delay",))
        failure = self.faults.take(call, ("status", "drop"))
        if delay is not None and not delay.applied:
            time.sleep(delay.seconds)
        if failure is not None and not failure.applied:
            return self._fail(failure)
        status, body = self._run(call, headers, body)
        if delay is not None and delay.applied:
            time.sleep(delay.seconds)
        if failure is not None:
            return self._fail(failure)
        if status == 200 and self.faults.take(call, ("shape",)) is not None:
            body = _reshaped(body)
        return status, body

    def _record(self, call: str, headers: dict[str, str], body: Any, client_ok: bool) -> None:
        auth = headers.get("authorization")
        entry = {
            "call": call,
            "body": body,
            "bearer": None if auth is None else auth.startswith("Bearer ") and len(auth) > 7,
            "idempotency_key": headers.get("idempotency-key"),
            "client_key_ok": client_ok,
            "content_type": headers.get("content-type"),
        }
        with self._lock:
            self.requests.append(entry)

    def _client_ok(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-client-api-key", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self.client_api_key.encode())

    @staticmethod
    def _fail(fault: Fault) -> tuple[int, Any]:
        if fault.kind == "drop":
            raise _Drop
        return fault.status, {"message": "injected failure"}

    def _run(self, call: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if body is _NOT_JSON:
            return 400, {"message": "the body is not JSON"}
        if not isinstance(body, dict):
            return 400, {"message": "the body must be a JSON object"}
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        try:
            result = _ROUTES[call](self.api, body, token, headers.get("idempotency-key"))
        except ApiResponseError:  # the fake was told to garble this answer
            return 200, {"unexpected": "shape"}
        except ApiError as exc:
            return exc.status, {"message": exc.message}
        except Exception:  # a bug of the fake answers 500, as a real server would
            log.exception("fake Credex API: %s failed", call)
            return 500, {"message": "internal error"}
        return 200, msgspec.to_builtins(result)

    def _control(self, path: str, raw: bytes) -> tuple[int, Any]:
        if path == "/_faults":
            try:
                self.faults.add(msgspec.json.decode(raw, type=Fault))
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                return 400, {"message": str(exc)}
            return 200, {"ok": True}
        if path == "/_reset":
            self.faults.clear()
            return 200, {"ok": True}
        return 404, {"message": "unknown control"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms stall

            def do_GET(self) -> None:
                if self.path == "/.well-known/jwks.json":
                    server.jwks_requests.append(time.monotonic())
                    self._send(200, server.api.jwks())
                elif self.path == "/healthz":
                    self._send(200, {"ok": True})
                else:
                    self._send(404, {"message": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length > _MAX_BODY:
                    self._send(413, {"message": "body too large"})
                    self.close_connection = True
                    return
                raw = self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                if path.startswith("/_"):
                    self._send(*server._control(path, raw))
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    status, body = server.answer(path.lstrip("/"), headers, raw)
                except _Drop:
                    self.close_connection = True
                    self.connection.shutdown(2)  # no answer at all: the client sees a reset
                    return
                self._send(status, body)

            def _send(self, status: int, body: Any) -> None:
                data = msgspec.json.encode(body)
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up waiting (a timeout)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests and the demo stack read what they need from .requests

        return Handler


def rsa_key() -> RSAPrivateKey:
    """A fresh 2048-bit RSA key for an RS256-signing fake."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@contextmanager
def serving(api: FakeCredexApi | None = None, **options: Any) -> Iterator[FakeCredexServer]:
    """A started :class:`FakeCredexServer`, stopped on exit."""
    server = FakeCredexServer(api, **options).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8600)
    parser.add_argument("--client-key", default=DEV_CLIENT_KEY, help="the x-client-api-key")
    parser.add_argument(
        "--rsa",
        action="store_true",
        help="sign tokens RS256 with a fresh key, served at /.well-known/jwks.json",
    )
    parser.add_argument(
        "--events-url",
        default=os.environ.get("CREDEX_EVENTS_URL", ""),
        help="the bot's POST /events URL, e.g. http://127.0.0.1:8000/events (default: "
        "$CREDEX_EVENTS_URL; unset: no events are sent); signed with $FSM_EVENTS_SECRET",
    )
    args = parser.parse_args(argv)
    secret = os.environ.get("FSM_EVENTS_SECRET", "").strip()
    if args.events_url and not secret:
        parser.error("sending events needs FSM_EVENTS_SECRET (the secret the bot checks)")
    api = FakeCredexApi(private_key=rsa_key() if args.rsa else None)
    server = FakeCredexServer(
        api,
        host=args.host,
        port=args.port,
        client_api_key=args.client_key,
        events_url=args.events_url or None,
        events_secret=secret,
    )
    print(f"fake Credex API on {server.url}", flush=True)
    if server.events is not None:
        print(f"events to {_shown(args.events_url)}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
