"""``POST /events``: input from outside the conversation (a payment, another user's action),
applied with :meth:`fsm.AsyncEngine.notify` and its replies sent to the user like a message's.

The body is JSON, ``{"user": "263770000001", "event": "offer_received", "data": {...},
"event_id": "offer-7"}`` (``data`` and ``event_id`` optional), signed as Meta signs its
webhooks: ``X-Fsm-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`` with the secret
``FSM_EVENTS_SECRET``. In order:

- no secret configured: the route is not served (404);
- the body is read up to ``max_body`` bytes (413 past it);
- the signature is checked on those raw bytes: 401 missing, 403 wrong (nothing parsed, nothing
  applied);
- the body is parsed: 400 if it is not a JSON object with a non-blank ``user`` and ``event``
  (str), ``data`` an object and ``event_id`` a non-blank str when given, and no other field;
- the event is applied: 422 for an event the flow does not declare or a user key no
  conversation can have; 503 when the store is unavailable or busy (post it again: with the
  same ``event_id`` it is applied once); 500 when the flow's handler failed;
- 200 once it is applied (or acknowledged) and its replies are sent; 202 if they are held
  for the messaging limit (``"held": true``: a ticker sends them when a slot frees, nothing
  to do); 503 if some stay pending otherwise (post it again with the same ``event_id``: they
  are sent then, the event is not applied twice). The answer is JSON: ``{"applied": bool,
  "duplicate": bool, "ignored": "why not"}``, and ``"held"`` on a 202.

Give every event an ``event_id``: it is what makes a retry harmless.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from adapters.whatsapp.body import TooLarge, read_body
from adapters.whatsapp.bot import TRANSIENT, WhatsAppBot
from adapters.whatsapp.signature import signature_problem
from fsm.errors import FsmError
from fsm.redaction import user_tail
from fsm.result import Result

log = logging.getLogger("adapters.whatsapp")

#: The header that signs a POST /events body.
HEADER = "X-Fsm-Signature-256"
#: The largest body taken (bytes): an event's data is small.
MAX_EVENT_BODY = 64 * 1024


class EventPost(msgspec.Struct, forbid_unknown_fields=True):
    """A ``POST /events`` body."""

    user: str
    event: str
    data: dict[str, Any] | None = None
    event_id: str | None = None


_decoder = msgspec.json.Decoder(EventPost)


class BadEvent(ValueError):
    """A body that is no event (answer 400); the message says why, never a value."""


def parse_event(body: bytes) -> EventPost:
    """The event ``body`` holds, checked; :class:`BadEvent` otherwise."""
    try:
        post = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadEvent(f"not an event: {str(exc)[:200]}") from None
    except msgspec.DecodeError:
        raise BadEvent("not an event: the body is not JSON (UTF-8)") from None
    except RecursionError:
        raise BadEvent("not an event: nested too deeply") from None
    if not post.user.strip():
        raise BadEvent("not an event: 'user' is blank")
    if not post.event.strip():
        raise BadEvent("not an event: 'event' is blank")
    if post.event_id is not None and not post.event_id.strip():
        raise BadEvent("not an event: 'event_id' is blank (leave it out, or give an id)")
    return post


def _answer(status: int, outcome: dict[str, Any]) -> Response:
    return JSONResponse(outcome, status_code=status)


class EventsEndpoint:
    """The ``POST /events`` handler of ``bot``, checking signatures with ``secret``."""

    def __init__(self, bot: WhatsAppBot, secret: str, *, max_body: int = MAX_EVENT_BODY) -> None:
        if not secret:
            raise ValueError("POST /events needs a secret (FSM_EVENTS_SECRET)")
        self.bot = bot
        self.metrics = bot.metrics
        self._secret = secret
        self.max_body = max_body

    def __repr__(self) -> str:
        return f"EventsEndpoint(max_body={self.max_body}, secret=<redacted>)"

    async def handle(self, request: Request) -> Response:
        """Answer one ``POST /events`` (the module's doc)."""
        try:
            body = await read_body(request, self.max_body)
        except TooLarge:
            return self._refused("too_large", 413, f"body larger than {self.max_body} bytes")
        except ClientDisconnect:
            return self._refused("bad_request", 400, "client went away")
        problem = signature_problem(request.headers.get(HEADER), body, self._secret)
        if problem is not None:
            status = 401 if problem == "missing" else 403
            return self._refused("bad_signature", status, f"signature {problem}")
        try:
            post = parse_event(body)
        except BadEvent as exc:
            log.warning("POST /events refused (400): %s", exc)
            return self._refused("bad_request", 400, str(exc))
        return await self._apply(post)

    def _refused(self, outcome: str, status: int, error: str) -> Response:
        self.metrics.events.labels(outcome).inc()
        return _answer(status, {"applied": False, "error": error})

    async def _apply(self, post: EventPost) -> Response:
        who = user_tail(post.user)
        try:
            result, status = await self.bot.notify(
                post.user, post.event, data=post.data, event_id=post.event_id
            )
        except TRANSIENT as exc:
            log.warning("event for %s not applied yet (%s): answering 503", who, exc)
            return self._refused("unavailable", 503, f"retry later ({type(exc).__name__})")
        except (ValueError, TypeError) as exc:  # an undeclared event, a key no store keeps
            log.warning("event for %s refused (422): %s", who, type(exc).__name__)
            return self._refused("refused", 422, str(exc))
        except FsmError as exc:
            return self._failed(post, exc)
        except Exception:  # a bug: the trace goes to the log only; the caller may retry
            log.exception("event for %s not handled", who)
            return self._refused("unavailable", 503, "retry later")
        return self._applied(result, status)

    def _failed(self, post: EventPost, exc: FsmError) -> Response:
        """The flow's handler failed: 503 when its action failed on I/O after the save (the
        same event again finishes it), else 500 (retrying cannot help before a fix)."""
        cause = type(exc.__cause__ or exc).__name__
        log.error(
            "event %r for %s failed: %s: %s",
            post.event,
            user_tail(post.user),
            type(exc).__name__,
            cause,
        )
        if exc.transient:
            return self._refused("unavailable", 503, f"the event's action failed ({cause})")
        return self._refused("failed", 500, f"the flow's handler failed ({type(exc).__name__})")

    def _applied(self, result: Result, status: int) -> Response:
        applied = not result.duplicate and not result.ignored
        outcome = "duplicate" if result.duplicate else "ignored" if result.ignored else "applied"
        held = status == HTTPStatus.ACCEPTED
        counted = outcome if status == HTTPStatus.OK else "held" if held else "unavailable"
        self.metrics.events.labels(counted).inc()
        answer: dict[str, Any] = {
            "applied": applied,
            "duplicate": result.duplicate,
            "ignored": result.ignored,
        }
        if held:
            answer["held"] = True  # sent by a ticker when the messaging limit frees a slot
        elif status != HTTPStatus.OK:
            answer["error"] = "replies pending: post the event again (same event_id)"
        return _answer(status, answer)
