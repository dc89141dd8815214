"""What a user sends besides text: media (an image, a document, audio, a video, a sticker), a
location, a reaction to one of the bot's messages, or contact cards.

The transport parses its channel's message into one :data:`Attachment` and hands it to the
engine with the message (``engine.handle(user, caption, attachment=...)``); the step sees it
as ``ctx.media``, ``ctx.location``, ``ctx.reaction`` or ``ctx.contacts`` (``ctx.kind`` names
which). Only ids and metadata travel: never the file's bytes. A step that wants them asks for
them when it needs them (``ctx.download()``), since a channel's download URLs expire.

A step declares the kinds it takes besides text (``@step(..., accepts={"image"})``); another
kind gets that step's prompt again, and a step that declares none answers the flow's
``unsupported_reply`` (a reaction there is taken silently: it asks nothing).

These are plain msgspec Structs: a step may keep one in the conversation's data
(``set={"photo": ctx.media}``); it reads back as a mapping, which :func:`media_from` turns into
an :class:`InboundMedia` again. Their ``repr`` shows no content: a caption, a file name, a
place or a contact card is the user's, not a log's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import msgspec

#: The kinds of media a user can send (WhatsApp's message types of the same names).
MediaKind = Literal["image", "document", "audio", "video", "sticker"]
MEDIA_KINDS: tuple[MediaKind, ...] = get_args(MediaKind)

#: Every kind of attachment, as ``ctx.kind`` and ``accepts`` name them.
AttachmentKind = Literal[
    "image", "document", "audio", "video", "sticker", "location", "reaction", "contacts"
]
ATTACHMENT_KINDS: tuple[AttachmentKind, ...] = get_args(AttachmentKind)


class InboundMedia(msgspec.Struct, frozen=True, omit_defaults=True, tag="media"):
    """A file the user sent: its ``kind``, the channel's media ``id`` (what a download asks
    for), its ``mime_type``, the channel's ``sha256`` of the bytes (hex; checked on
    download), the ``caption`` the user wrote with it and a document's ``filename``."""

    kind: MediaKind
    id: str
    mime_type: str = ""
    sha256: str = ""
    caption: str = ""
    filename: str = ""
    voice: bool = False  # an audio recorded as a voice note

    def __repr__(self) -> str:
        return f"InboundMedia({self.kind!r}, mime_type={self.mime_type!r})"


class Location(msgspec.Struct, frozen=True, omit_defaults=True, tag="location"):
    """A place: where the user is (or a place they picked), or one the bot sends."""

    latitude: float
    longitude: float
    name: str = ""
    address: str = ""

    def __post_init__(self) -> None:
        if not -90.0 <= self.latitude <= 90.0 or not -180.0 <= self.longitude <= 180.0:
            raise ValueError("a location's latitude is within ±90 and its longitude ±180")

    def __repr__(self) -> str:
        return "Location(<redacted>)"


class Reaction(msgspec.Struct, frozen=True, omit_defaults=True, tag="reaction"):
    """An emoji reaction to the message ``message_id`` (the channel's id of a message the
    bot sent, or, sent by the bot, of one the user sent); ``emoji`` "" removes it."""

    message_id: str
    emoji: str = ""

    def __repr__(self) -> str:
        return f"Reaction(emoji={self.emoji!r})"


class Contact(msgspec.Struct, frozen=True, omit_defaults=True):
    """One shared contact card: a name and phone numbers."""

    name: str
    phones: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Contact(<redacted>, {len(self.phones)} phones)"


class Contacts(msgspec.Struct, frozen=True, tag="contacts"):
    """Contact cards the user shared."""

    contacts: tuple[Contact, ...]

    def __repr__(self) -> str:
        return f"Contacts({len(self.contacts)})"


Attachment = InboundMedia | Location | Reaction | Contacts
#: The attachment types, for ``isinstance``.
ATTACHMENT_TYPES = (InboundMedia, Location, Reaction, Contacts)


def attachment_kind(attachment: Attachment | None) -> str:
    """``"text"`` for none, else the attachment's kind (a media's own: ``"image"``...)."""
    if attachment is None:
        return "text"
    if isinstance(attachment, InboundMedia):
        return attachment.kind
    return type(attachment).__struct_config__.tag  # type: ignore[return-value]


def check_accepts(accepts: object, where: str) -> frozenset[str]:
    """A step's ``accepts``, checked: a set of :data:`ATTACHMENT_KINDS` (``ValueError``
    naming ``where`` otherwise)."""
    if isinstance(accepts, str) or not hasattr(accepts, "__iter__"):
        raise ValueError(f"{where}: accepts is a set of kinds, like {{'image'}}, got {accepts!r}")
    kinds = frozenset(accepts)
    unknown = sorted(str(k) for k in kinds - set(ATTACHMENT_KINDS))
    if unknown:
        raise ValueError(
            f"{where}: accepts {', '.join(unknown)}: not a kind "
            f"(the kinds: {', '.join(ATTACHMENT_KINDS)})"
        )
    return kinds


def media_from(data: InboundMedia | Mapping[str, Any]) -> InboundMedia:
    """An :class:`InboundMedia` a step kept in the conversation's data (stored, it reads
    back as a mapping), or the one given."""
    if isinstance(data, InboundMedia):
        return data
    return msgspec.convert(dict(data), InboundMedia)
