"""The file a media reply sends (an image, a document, audio, a video, a sticker), and WhatsApp's
limits on it.

A step makes one with :func:`fsm.image`, :func:`fsm.document`... from a link (the channel
fetches it), a media id (a file uploaded before) or bytes. Bytes are uploaded by the engine's
media channel (:mod:`fsm.media`) before the save that keeps the reply, and the stored reply
keeps the media id, not the bytes: :meth:`OutboundMedia.uploaded`. Without a channel (tests,
the terminal chat) the bytes stay in the reply.

WhatsApp's limits (Cloud API "supported media types"): images JPEG or PNG up to 5 MB; audio
AAC, AMR, MP3, MP4 audio or OGG (Opus) up to 16 MB; video MP4 or 3GPP up to 16 MB; documents
(plain text, PDF, Word, Excel, PowerPoint) up to 100 MB; stickers WebP up to 100 KB (500 KB
animated); a caption up to 1,024 characters, on images, videos and documents only.
:func:`media_problems` names what a reply breaks; ``fsm.reply.check_whatsapp`` reports it.
"""

from __future__ import annotations

import hashlib
import mimetypes
from typing import Literal

import msgspec

from fsm.attachments import MEDIA_KINDS, InboundMedia, MediaKind

KB, MB = 1024, 1024 * 1024

#: The mime types WhatsApp takes per kind, and the largest file of each.
WHATSAPP_MEDIA: dict[str, tuple[frozenset[str], int]] = {
    "image": (frozenset({"image/jpeg", "image/png"}), 5 * MB),
    "audio": (
        frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}),
        16 * MB,
    ),
    "video": (frozenset({"video/mp4", "video/3gpp", "video/3gp"}), 16 * MB),
    "document": (
        frozenset(
            {
                "text/plain",
                "application/pdf",
                "application/msword",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.ms-excel",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.ms-powerpoint",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            }
        ),
        100 * MB,
    ),
    "sticker": (frozenset({"image/webp"}), 500 * KB),
}
#: A static sticker's largest size (an animated one may reach the 500 KB above).
WHATSAPP_STATIC_STICKER = 100 * KB
WHATSAPP_CAPTION = 1024
#: The kinds that may carry a caption.
CAPTIONED: frozenset[str] = frozenset({"image", "video", "document"})

#: Leading bytes of the formats :func:`sniffed` recognises when no mime type is given.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"%PDF-", "application/pdf"),
)


class OutboundMedia(msgspec.Struct, frozen=True, omit_defaults=True):
    """The file of a media reply: one of ``link`` (an http(s) URL the channel fetches),
    ``id`` (the channel's media id), ``data`` (bytes, until uploaded) or ``forward`` (the id
    of a file the user sent: the engine fetches its bytes and uploads them before the save);
    its ``mime_type``, a document's ``filename``, and the bytes' ``size`` and ``sha256``
    (kept after upload, for the chat's rendering and for reusing an upload)."""

    kind: MediaKind
    link: str = ""
    id: str = ""
    data: bytes = b""
    mime_type: str = ""
    filename: str = ""
    size: int = 0
    sha256: str = ""
    forward: str = ""

    def __repr__(self) -> str:  # a link may carry a signature, bytes are content: not shown
        source = (
            "link" if self.link else "id" if self.id else "forward" if self.forward else "bytes"
        )
        return f"OutboundMedia({self.kind!r}, {source}, mime_type={self.mime_type!r})"

    def uploaded(self, media_id: str) -> OutboundMedia:
        """The same file by its media id, its bytes dropped (what the outbox keeps)."""
        return msgspec.structs.replace(self, id=media_id, data=b"", forward="")

    def fetched(self, data: bytes) -> OutboundMedia:
        """A forwarded file with the bytes fetched for it (uploaded next)."""
        digest = hashlib.sha256(data).hexdigest()
        return msgspec.structs.replace(self, data=data, size=len(data), sha256=digest)

    def forwarded(self) -> InboundMedia:
        """The file the user sent that this one forwards (to fetch it)."""
        return InboundMedia(self.kind, self.forward, self.mime_type, self.sha256)

    def describe(self) -> str:
        """How the terminal chat shows it: ``image``, ``statement.csv, 12 KB``..."""
        parts = [self.filename] if self.filename else []
        if self.size:
            parts.append(human_size(self.size))
        elif self.link:
            parts.append("by link")
        return f"{self.kind}: {', '.join(parts)}" if parts else self.kind


Source = Literal["link", "id", "data"]


def make_media(
    kind: MediaKind,
    source: str | bytes | InboundMedia | None = None,
    *,
    media_id: str = "",
    mime_type: str = "",
    filename: str = "",
) -> OutboundMedia:
    """An :class:`OutboundMedia` from exactly one of a link, bytes or a file the user sent
    (``source``) or a ``media_id``, checked (``ValueError``, ``TypeError``)."""
    if kind not in MEDIA_KINDS:
        raise ValueError(f"a media kind is one of {', '.join(MEDIA_KINDS)}, got {kind!r}")
    given = [source is not None, bool(media_id)]
    if sum(given) != 1:
        raise ValueError(f"a {kind} is made from one of: a link, bytes, or media_id=")
    if media_id:
        return OutboundMedia(kind, id=str(media_id), mime_type=mime_type, filename=filename)
    if isinstance(source, InboundMedia):
        mime = mime_type or source.mime_type
        named = filename or source.filename
        return OutboundMedia(kind, forward=source.id, mime_type=mime, filename=named)
    if isinstance(source, str):
        if not source.startswith(("https://", "http://")):
            raise ValueError(f"a {kind}'s link is an http(s) URL (bytes: pass bytes)")
        return OutboundMedia(kind, link=source, mime_type=mime_type, filename=filename)
    if not isinstance(source, bytes | bytearray | memoryview):
        raise TypeError(f"a {kind} is made from a link (str) or bytes, got {type(source).__name__}")
    data = bytes(source)
    if not data:
        raise ValueError(f"a {kind} from bytes needs some bytes")
    mime = mime_type or guessed(filename, data)
    digest = hashlib.sha256(data).hexdigest()
    return OutboundMedia(
        kind, data=data, mime_type=mime, filename=filename, size=len(data), sha256=digest
    )


def guessed(filename: str, data: bytes) -> str:
    """A mime type for ``data``: from the file name's extension, else its leading bytes,
    else ``application/octet-stream``."""
    by_name = mimetypes.guess_type(filename)[0] if filename else None
    return by_name or sniffed(data) or "application/octet-stream"


def sniffed(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)


def human_size(size: int) -> str:
    """``12 KB``, ``5.0 MB``: how the chat shows a file's size."""
    if size < KB:
        return f"{size} B"
    if size < MB:
        return f"{round(size / KB)} KB"
    return f"{size / MB:.1f} MB"


def media_problems(media: OutboundMedia, caption: str) -> list[str]:
    """Every WhatsApp limit a media reply breaks (its type, size, caption)."""
    problems: list[str] = []
    allowed, most = WHATSAPP_MEDIA[media.kind]
    if media.mime_type and media.mime_type not in allowed:
        problems.append(
            f"WhatsApp takes no {media.kind} of type {media.mime_type} "
            f"(it takes {', '.join(sorted(allowed))})"
        )
    if media.data and not media.mime_type:
        problems.append(f"a {media.kind} from bytes needs a mime type")
    if media.size > most:
        problems.append(
            f"the {media.kind} is {human_size(media.size)} (WhatsApp takes at most "
            f"{human_size(most)})"
        )
    if caption and media.kind not in CAPTIONED:
        problems.append(f"a {media.kind} cannot carry a caption")
    if len(caption) > WHATSAPP_CAPTION:
        problems.append(f"the caption is {len(caption)} characters (at most {WHATSAPP_CAPTION})")
    return problems
