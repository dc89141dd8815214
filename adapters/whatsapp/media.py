"""WhatsApp's media store for the engine (:class:`fsm.media.MediaChannel`) over the Graph API.

**Download.** A user's file arrives as a media id in the webhook (with its mime type and the
sha256 of its bytes). Its bytes are fetched only when a step asks for them: the Graph API
tells the file's download URL (``GET /{media_id}``: URL, mime type, sha256, size), and that
URL is valid about five minutes, so it is asked for afresh on every download and never kept.
Before a byte is fetched, the mime type (announced in the webhook, then by the Graph API) must
be one WhatsApp takes (``allowed``) and the announced size at most ``max_bytes``; the bytes
are then read with that cap (the fetch stops as soon as more arrive: the announced size may
lie), and their SHA-256 must match every digest announced (hex or base64: Meta uses both).
A failure is a :class:`~fsm.media.MediaError` whose ``reason`` says which check failed, or
``expired`` (the URL expired before it was read: asking again gets a new one) or
``unavailable`` (the Graph API refused or could not be reached). No error names the URL (it
carries a signature) or the token.

**Upload.** A reply made from bytes is uploaded (``POST /{phone_number_id}/media``) and sent by
its media id. :class:`GraphMedia` remembers its uploads by the bytes' sha256 and mime type
(the last ``uploads_kept``, for ``reuse_for`` seconds: Meta keeps an upload 30 days), so a
save retried after a conflict, or the same file sent to many users, uploads once per process.
A failed upload is a :class:`~fsm.media.MediaError` ``unavailable`` (its cause the Graph API's
:class:`~adapters.whatsapp.graph.GraphError`); the engine then fails the save.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections import OrderedDict

from adapters.whatsapp.graph import (
    GraphClient,
    GraphError,
    MediaExpired,
    MediaInfo,
    MediaTooLarge,
)
from fsm.attachments import InboundMedia
from fsm.media import MediaError
from fsm.media_replies import WHATSAPP_MEDIA, OutboundMedia

#: Every mime type WhatsApp takes, of any kind (:data:`fsm.media_replies.WHATSAPP_MEDIA`).
WHATSAPP_MIME_TYPES: frozenset[str] = frozenset().union(
    *(allowed for allowed, _ in WHATSAPP_MEDIA.values())
)
#: How long an upload's media id is reused, in seconds (Meta keeps an upload 30 days).
REUSE_FOR = 24 * 3600.0


class GraphMedia:
    """Downloads and uploads WhatsApp media through ``client`` (see the module's doc)."""

    def __init__(
        self,
        client: GraphClient,
        *,
        max_bytes: int = 16 * 1024 * 1024,
        allowed: frozenset[str] | None = None,
        uploads_kept: int = 1000,
        reuse_for: float = REUSE_FOR,
    ) -> None:
        if max_bytes <= 0 or uploads_kept < 0:
            raise ValueError("max_bytes is positive and uploads_kept not negative")
        self.client = client
        self.max_bytes = max_bytes
        self.allowed = WHATSAPP_MIME_TYPES if allowed is None else frozenset(allowed)
        self.uploads_kept = uploads_kept
        self.reuse_for = reuse_for
        #: (sha256, mime type) -> (media id, when uploaded: time.monotonic()), oldest first.
        self._uploads: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._uploading: dict[tuple[str, str], asyncio.Lock] = {}

    def __repr__(self) -> str:
        return (
            f"GraphMedia(phone_number_id={self.client.phone_number_id!r}, "
            f"max_bytes={self.max_bytes}, uploads={len(self._uploads)})"
        )

    # -- download -------------------------------------------------------------------------
    async def download(self, media: InboundMedia) -> bytes:
        """The bytes of ``media``, checked: mime type, size, sha256 (:class:`MediaError`)."""
        self._check_mime(media.mime_type)
        try:
            info = await self.client.media_info(media.id)
        except GraphError as exc:
            raise MediaError("unavailable", exc.label) from exc
        if info.file_size > self.max_bytes:
            raise MediaError("too_large", f"{info.file_size} bytes, at most {self.max_bytes}")
        self._check_mime(info.mime_type)
        data = await self._fetch(info)
        for announced in (media.sha256, info.sha256):
            if announced and not same_digest(data, announced):
                raise MediaError("sha256", "the bytes do not match the announced sha256")
        return data

    def _check_mime(self, mime_type: str) -> None:
        """A :class:`MediaError` ``mime`` for an announced type not allowed (none: no check)."""
        if mime_type and base_mime(mime_type) not in self.allowed:
            raise MediaError("mime", f"{base_mime(mime_type)} is not taken")

    async def _fetch(self, info: MediaInfo) -> bytes:
        try:
            return await self.client.fetch_media(info.url, self.max_bytes)
        except MediaTooLarge:
            raise MediaError("too_large", f"more than {self.max_bytes} bytes") from None
        except MediaExpired:
            raise MediaError("expired", "the download url expired") from None
        except GraphError as exc:
            raise MediaError("unavailable", exc.label) from exc

    # -- upload ---------------------------------------------------------------------------
    async def upload(self, media: OutboundMedia) -> str:
        """Upload ``media``'s bytes (``ValueError`` without any); its media id, the one of an
        earlier upload of the same bytes when this process still remembers it."""
        if not media.data:
            raise ValueError("only a media made from bytes is uploaded")
        digest = media.sha256 or hashlib.sha256(media.data).hexdigest()
        key = (digest, media.mime_type)
        known = self._known(key)
        if known is not None:
            return known
        lock = self._uploading.setdefault(key, asyncio.Lock())
        try:
            async with lock:  # the same bytes at once: one upload, the others wait for it
                known = self._known(key)
                if known is None:
                    known = await self._send(media)
                    self._remember(key, known)
                return known
        finally:
            if not lock.locked() and self._uploading.get(key) is lock:
                del self._uploading[key]

    async def _send(self, media: OutboundMedia) -> str:
        try:
            return await self.client.upload_media(media.data, media.mime_type, media.filename)
        except GraphError as exc:
            raise MediaError("unavailable", f"upload failed: {exc.label}") from exc

    def _known(self, key: tuple[str, str]) -> str | None:
        """The media id of an upload of ``key`` still reusable, or None."""
        found = self._uploads.get(key)
        if found is None:
            return None
        media_id, at = found
        if time.monotonic() - at > self.reuse_for:
            del self._uploads[key]
            return None
        self._uploads.move_to_end(key)
        return media_id

    def _remember(self, key: tuple[str, str], media_id: str) -> None:
        self._uploads[key] = (media_id, time.monotonic())
        self._uploads.move_to_end(key)
        while len(self._uploads) > self.uploads_kept:
            self._uploads.popitem(last=False)


def base_mime(mime_type: str) -> str:
    """A mime type without its parameters, lower case: ``audio/ogg; codecs=opus`` is
    ``audio/ogg``."""
    return mime_type.split(";", 1)[0].strip().lower()


def same_digest(data: bytes, announced: str) -> bool:
    """Whether ``announced`` (the SHA-256 digest, hex or base64, standard or URL-safe) is
    ``data``'s; one that is neither does not match."""
    digest = hashlib.sha256(data).digest()
    text = announced.strip()
    if len(text) == 64:
        try:
            return hmac.compare_digest(bytes.fromhex(text), digest)
        except ValueError:
            return False
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=False)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(decoded, digest)
