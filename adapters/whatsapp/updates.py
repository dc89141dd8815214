"""Webhook updates as Meta sends them, parsed into what a bot acts on.

A body is ``{"object": "whatsapp_business_account", "entry": [{"changes": [{"field":
"messages", "value": {...}}]}]}``; each ``value`` holds ``metadata.phone_number_id``,
``contacts[]``, ``messages[]`` and ``statuses[]``. Every entry, change and message is read,
not only the first. Parsing is lenient where Meta adds fields and strict where it matters:
a message that lacks ``id`` or ``from`` is counted as malformed and skipped, never applied.
A message that is not text (an image, a location, a reaction, contact cards) is read into an
:data:`fsm.attachments.Attachment` (:func:`parse_attachment`); one whose content is broken (a
media without its ``id``, a latitude that is not a number within ±90) is kept, unreadable, for
the bot's hook to answer, like a kind no flow can read.
A body that is not an update at all (not JSON or not UTF-8, truncated, not an object, a wrong
type in the envelope, a number out of range, nested deeper than :data:`MAX_NESTING`) is a
:class:`BadUpdate`, whatever the decoder raised: answered 400, never 500.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from fsm.attachments import (
    ATTACHMENT_KINDS,
    MEDIA_KINDS,
    Attachment,
    Contact,
    Contacts,
    InboundMedia,
    Location,
    MediaKind,
    Reaction,
)
from fsm.errors import InvalidUserKey
from fsm.inputs import check_key

OBJECT = "whatsapp_business_account"
#: The event a ``failed`` delivery status of one of our messages is applied to the flow as,
#: when the flow declares a handler for it (``@on_event("whatsapp.failed")``): its
#: ``ctx.event.data`` is ``{"code": <Meta's error code, 0 if none>, "message_id": <wamid>}``.
FAILED_EVENT = "whatsapp.failed"
#: Meta's error codes a failed status is counted by (any other is counted as ``other``).
FAILURE_CODES = frozenset(
    {
        130472,  # the user's number is part of an experiment
        131000,  # something went wrong
        131026,  # undeliverable: no WhatsApp on the number, old app, terms not accepted
        131031,  # the business account is locked
        131042,  # a payment problem of the business account
        131047,  # re-engagement: more than 24 hours since the user last wrote
        131048,  # spam rate limit: too many of the number's messages blocked or reported
        131049,  # not delivered, to keep the ecosystem healthy (marketing limits)
        131050,  # the user stopped marketing messages
        131051,  # a message type WhatsApp does not support
        131052,  # the media could not be downloaded
        131053,  # the media could not be uploaded
        132000,  # a template's parameter count does not match
        132001,  # no such template (name or language)
        132007,  # a template's content breaks a format policy
        132012,  # a template parameter in the wrong format
        132015,  # the template is paused (low quality)
        132016,  # the template is disabled
    }
)
#: The deepest a change's ``value`` may nest (objects and arrays); Meta's go about 5 deep.
MAX_NESTING = 32


class BadUpdate(Exception):
    """The body is not an update at all (not JSON, not an object, wrong shape): 400."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One user message. ``text`` is what reaches the flow: the typed text, the id of the
    tapped option (then ``pressed`` is that id too), or a media's caption. ``kind`` is Meta's
    ``type`` (``"text:unreadable"``, ``"image:unreadable"``...: that type, its content
    broken). ``attachment`` is what a message that is not text carries (:mod:`fsm.attachments`);
    None for text, a tap, or a kind no flow reads. Neither ``text`` nor ``raw`` is in the
    ``repr``: they are the user's words."""

    user: str  # the sender's WhatsApp id (``from``): the conversation key
    message_id: str  # the wamid: the dedupe key
    kind: str
    text: str = field(default="", repr=False)
    pressed: str | None = None
    timestamp: int = 0
    phone_number_id: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    attachment: Attachment | None = None

    @property
    def readable(self) -> bool:
        """Whether the flow can take it: text, a tapped option, or a parsed attachment."""
        return self.kind in READABLE or self.attachment is not None


READABLE = frozenset({"text", "interactive", "button"})
#: The message types read into an attachment (Meta's type names are the kinds' own).
ATTACHED: frozenset[str] = frozenset(ATTACHMENT_KINDS)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """What became of a message we sent: sent, delivered, read or failed (with codes)."""

    message_id: str
    status: str
    recipient: str = ""
    error_codes: tuple[int, ...] = ()

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def code(self) -> int:
        """Meta's (first) error code; 0 when the status gives none."""
        return self.error_codes[0] if self.error_codes else 0

    @property
    def code_label(self) -> str:
        """The code as a bounded metric label: a known code, ``other``, or ``none``."""
        if not self.error_codes:
            return "none"
        return str(self.code) if self.code in FAILURE_CODES else "other"


@dataclass(slots=True)
class Update:
    """Everything one webhook body carries for our number."""

    messages: list[Incoming] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    #: Changes skipped: another field than ``messages``, or another phone number id.
    ignored: int = 0
    #: Messages or statuses too broken to act on (no id, no sender): counted, skipped.
    malformed: int = 0


# -- the envelope: typed where a wrong type means "not an update" ---------------------------
class _Change(msgspec.Struct):
    field: str = ""
    value: dict[str, Any] = {}


class _Entry(msgspec.Struct):
    id: str = ""
    changes: list[_Change] = []


class _Envelope(msgspec.Struct):
    object: str = ""
    entry: list[_Entry] = []


_decoder = msgspec.json.Decoder(_Envelope)


def parse_update(body: bytes, *, phone_number_id: str, max_messages: int = 1000) -> Update:
    """The messages and statuses in ``body`` addressed to ``phone_number_id``.

    Raises :class:`BadUpdate` if the body is not JSON, not an update envelope, or holds more
    than ``max_messages`` messages. A body for another ``object`` yields an empty update
    with ``ignored`` set (acknowledged: re-sending it would not make it ours)."""
    try:
        body.decode("utf-8")  # all of it: the decoder does not look inside fields it skips
    except UnicodeDecodeError:
        raise BadUpdate("not a webhook update: not UTF-8") from None
    try:
        envelope = _decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included: a wrong envelope
        raise BadUpdate(f"not a webhook update: {_short(exc)}") from None
    except RecursionError:  # nested deeper than the decoder can go
        raise BadUpdate("not a webhook update: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:  # any other refusal of the bytes
        raise BadUpdate(f"not a webhook update: {type(exc).__name__}") from None
    update = Update()
    if envelope.object != OBJECT:
        update.ignored = 1
        return update
    for entry in envelope.entry:
        for change in entry.changes:
            if _nesting(change.value) > MAX_NESTING:
                raise BadUpdate(f"not a webhook update: nested deeper than {MAX_NESTING} levels")
            _read_change(update, change, phone_number_id)
            if len(update.messages) > max_messages:
                raise BadUpdate(f"more than {max_messages} messages in one body")
    return update


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]


def _nesting(value: Any) -> int:
    """How deep ``value`` nests objects and arrays (a scalar is 0), without recursing."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            break  # too deep already: no need to walk the rest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _read_change(update: Update, change: _Change, phone_number_id: str) -> None:
    value = change.value
    metadata = value.get("metadata")
    number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if change.field != "messages" or number != phone_number_id:
        update.ignored += 1
        return
    for raw in _list(value.get("messages")):
        message = parse_message(raw, number)
        if message is None:
            update.malformed += 1
        else:
            update.messages.append(message)
    for raw in _list(value.get("statuses")):
        status = _parse_status(raw)
        if status is None:
            update.malformed += 1
        else:
            update.statuses.append(status)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _usable_key(sender: str) -> bool:
    """Whether ``sender`` can key a conversation, by the engine's own rule (so a message the
    engine would refuse is counted as malformed here, not answered 503 at every re-delivery)."""
    try:
        check_key(sender)
    except InvalidUserKey:
        return False
    return True


def parse_message(raw: Any, phone_number_id: str = "") -> Incoming | None:
    """One entry of ``messages[]``; None if it has no usable ``id``, ``from`` or ``type`` (a
    ``from`` no conversation can be keyed by, such as a blank one, is not usable)."""
    if not isinstance(raw, dict):
        return None
    wamid, sender, kind = _str(raw.get("id")), _str(raw.get("from")), _str(raw.get("type"))
    if wamid is None or sender is None or kind is None or not _usable_key(sender):
        return None
    attachment = parse_attachment(kind, raw.get(kind))
    if attachment is not None:
        text, pressed = _caption(attachment), None
    elif kind in ATTACHED:  # an image, a place... too broken to read
        text, pressed = None, None
    else:
        text, pressed = _content(kind, raw)
    stamp = raw.get("timestamp")
    timestamp = (
        int(stamp)
        if isinstance(stamp, str) and stamp.isascii() and stamp.isdigit() and len(stamp) < 20
        else 0
    )
    return Incoming(
        user=sender,
        message_id=wamid,
        kind=kind if text is not None else f"{kind}:unreadable",
        text=text or "",
        pressed=pressed,
        timestamp=timestamp,
        phone_number_id=phone_number_id,
        raw=raw,
        attachment=attachment,
    )


def _content(kind: str, raw: dict[str, Any]) -> tuple[str | None, str | None]:
    """(text for the flow, the pressed option's id) of a message; (None, None) for a kind the
    flow cannot read, or a readable kind whose content is missing."""
    body = raw.get(kind)
    if not isinstance(body, dict):
        return (None, None) if kind in READABLE else ("", None)
    if kind == "text":
        text = body.get("body")
        return (text, None) if isinstance(text, str) else (None, None)
    if kind == "interactive":
        which = body.get("type")
        reply = body.get(which) if isinstance(which, str) else None  # button_/list_reply
        chosen = _str(reply.get("id")) if isinstance(reply, dict) else None
        return (chosen, chosen) if chosen is not None else (None, None)
    if kind == "button":  # a template's quick-reply button: its payload is the id
        chosen = _str(body.get("payload")) or _str(body.get("text"))
        return (chosen, chosen) if chosen is not None else (None, None)
    return ("", None)  # a kind no flow reads (an order, a system message): the hook answers


def _caption(attachment: Attachment) -> str:
    return attachment.caption if isinstance(attachment, InboundMedia) else ""


# -- attachments: each read whole, or not at all ---------------------------------------------
def parse_attachment(kind: str, content: Any) -> Attachment | None:
    """The attachment a message of type ``kind`` carries in ``content`` (its ``kind`` field:
    ``message["image"]``, ``message["contacts"]``...), or None if ``kind`` is not one or its
    content is broken: a media without an ``id``; a place whose latitude or longitude is not
    a number within ±90 and ±180; a reaction without the ``message_id`` it reacts to;
    contact cards that are not a non-empty list, or a card without a name."""
    if kind in MEDIA_KINDS:
        return _media(kind, content)
    if kind == "location":
        return _location(content)
    if kind == "reaction":
        return _reaction(content)
    if kind == "contacts":
        return _contacts(content)
    return None


def _text_field(content: dict[str, Any], name: str) -> str:
    """An optional text field: "" when absent or not text (Meta sends text, or nothing)."""
    value = content.get(name)
    return value if isinstance(value, str) else ""


def _media(kind: MediaKind, content: Any) -> InboundMedia | None:
    """``{"id", "mime_type", "sha256", "caption"?}``, a document's ``filename``, an audio's
    ``voice`` (a voice note); a sticker's ``animated`` is not kept."""
    if not isinstance(content, dict) or _str(content.get("id")) is None:
        return None
    return InboundMedia(
        kind,
        content["id"],
        mime_type=_text_field(content, "mime_type"),
        sha256=_text_field(content, "sha256"),
        caption=_text_field(content, "caption"),
        filename=_text_field(content, "filename") if kind == "document" else "",
        voice=kind == "audio" and content.get("voice") is True,
    )


def _coordinate(value: Any, most: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # a bool is an int to Python, not a number to JSON
    number = float(value)
    return number if math.isfinite(number) and -most <= number <= most else None


def _location(content: Any) -> Location | None:
    """``{"latitude", "longitude", "name"?, "address"?, "url"?}`` (the ``url`` is not kept)."""
    if not isinstance(content, dict):
        return None
    latitude = _coordinate(content.get("latitude"), 90.0)
    longitude = _coordinate(content.get("longitude"), 180.0)
    if latitude is None or longitude is None:
        return None
    name, address = _text_field(content, "name"), _text_field(content, "address")
    return Location(latitude, longitude, name, address)


def _reaction(content: Any) -> Reaction | None:
    """``{"message_id", "emoji"}``; no ``emoji`` (or "") when the user removed theirs."""
    if not isinstance(content, dict) or _str(content.get("message_id")) is None:
        return None
    emoji = content.get("emoji", "")
    if not isinstance(emoji, str):
        return None
    return Reaction(content["message_id"], emoji)


def _contacts(content: Any) -> Contacts | None:
    """``[{"name": {"formatted_name", ...}, "phones": [{"phone", "wa_id"?, "type"?}], ...}]``:
    each card's formatted name (else its first and last names) and the numbers of its
    phones (a phone's ``phone``, else its ``wa_id``)."""
    if not isinstance(content, list) or not content:
        return None
    cards = [_contact(card) for card in content]
    if any(card is None for card in cards):
        return None  # a card we cannot name: the message is not read in part
    return Contacts(tuple(card for card in cards if card is not None))


def _contact(card: Any) -> Contact | None:
    if not isinstance(card, dict) or not isinstance(card.get("name"), dict):
        return None
    names = card["name"]
    full = " ".join(
        p for p in (_text_field(names, "first_name"), _text_field(names, "last_name")) if p
    )
    name = _str(names.get("formatted_name")) or full
    if not name.strip():
        return None
    phones = tuple(
        number
        for phone in _list(card.get("phones"))
        if isinstance(phone, dict)
        and (number := _str(phone.get("phone")) or _str(phone.get("wa_id"))) is not None
    )
    return Contact(name, phones)


def _parse_status(raw: Any) -> StatusUpdate | None:
    if not isinstance(raw, dict):
        return None
    wamid, status = _str(raw.get("id")), _str(raw.get("status"))
    if wamid is None or status is None:
        return None
    codes = tuple(
        e["code"]
        for e in _list(raw.get("errors"))
        if isinstance(e, dict) and isinstance(e.get("code"), int)
    )
    return StatusUpdate(wamid, status, _str(raw.get("recipient_id")) or "", codes)
