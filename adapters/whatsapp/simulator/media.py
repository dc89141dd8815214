"""The simulator's files, kept in memory by media id as Meta keeps media: the ones the page's
user attaches and the ones the bot uploads.

- The bot uploads a file as it uploads to Meta (``POST /graph/{phone_number_id}/media``,
  multipart: :func:`multipart` reads it) and sends it by the id it gets.
- The bot fetches a user's file as from Meta: ``GET /graph/{media_id}`` tells a download URL
  on this server (:meth:`Files.download_url`: signed, valid :data:`URL_LIFETIME` seconds, as
  Meta's are about five minutes), the mime type, the sha256 (hex) and the size (a string, as
  Meta sends it); the URL answers the bytes to the bot's bearer token.
- The page shows a file by ``GET /api/media/{media_id}`` (:func:`shown`).

Files are kept up to :data:`KEPT_BYTES` in all, the oldest dropped first. A file's ``repr``
shows neither its bytes nor its name: they are the user's.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

__all__ = ["URL_LIFETIME", "Files", "MediaFile", "Part", "multipart"]

#: The largest file kept (WhatsApp's largest: a 100 MB document).
MAX_FILE = 100 * 1024 * 1024
#: How many bytes of files are kept in all; past that the oldest files are dropped.
KEPT_BYTES = 512 * 1024 * 1024
#: How long a download URL answers, in seconds (Meta's: about five minutes).
URL_LIFETIME = 300
#: A mime type as a ``content-type`` may carry it (anything else is served as bytes).
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
#: What the page may show inline (an <img>, a player); anything else is a download.
_INLINE = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})

Origin = Literal["user", "bot"]


@dataclass(frozen=True, slots=True)
class MediaFile:
    """One file: its media ``id``, ``mime_type`` (without parameters), ``filename`` (a
    document's), bytes, ``sha256`` (hex) and who sent it (``origin``)."""

    id: str
    mime_type: str
    filename: str = field(repr=False)
    data: bytes = field(repr=False)
    sha256: str = field(repr=False)
    origin: Origin = "user"

    @property
    def size(self) -> int:
        return len(self.data)

    def described(self) -> dict[str, Any]:
        """What the page is told of it (with the chat's events): where it shows it, its type,
        name and size; never the bytes."""
        return {
            "id": self.id,
            "url": f"/api/media/{self.id}",
            "mime_type": self.mime_type,
            "filename": self.filename,
            "size": self.size,
        }

    def info(self, url: str) -> dict[str, Any]:
        """Meta's answer to ``GET /{media_id}``: the download ``url``, type, sha256, size."""
        return {
            "messaging_product": "whatsapp",
            "url": url,
            "mime_type": self.mime_type,
            "sha256": self.sha256,
            "file_size": str(self.size),
            "id": self.id,
        }


class Files:
    """The files by media id, oldest first, and the key their download URLs are signed with."""

    def __init__(self, *, kept_bytes: int = KEPT_BYTES, lifetime: int = URL_LIFETIME) -> None:
        self.kept_bytes = kept_bytes
        self.lifetime = lifetime
        self._files: OrderedDict[str, MediaFile] = OrderedDict()
        self._bytes = 0
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Files({len(self._files)} files, {self._bytes} bytes)"

    def add(self, data: bytes, mime_type: str, filename: str = "", *, origin: Origin) -> MediaFile:
        """Keep ``data`` (at most :data:`MAX_FILE` bytes: ``ValueError``); its file, with a
        fresh media id (a long number, as Meta's; not guessable)."""
        if len(data) > MAX_FILE:
            raise ValueError(f"a file is at most {MAX_FILE // (1024 * 1024)} MB")
        media_id = str(10**15 + secrets.randbelow(9 * 10**15))
        digest = hashlib.sha256(data).hexdigest()
        kept = MediaFile(media_id, base_mime(mime_type), filename, bytes(data), digest, origin)
        with self._lock:
            self._files[media_id] = kept
            self._bytes += kept.size
            while self._bytes > self.kept_bytes and len(self._files) > 1:
                _, dropped = self._files.popitem(last=False)
                self._bytes -= dropped.size
        return kept

    def get(self, media_id: str) -> MediaFile | None:
        return self._files.get(media_id)

    def download_url(self, base: str, media_id: str, now: float | None = None) -> str:
        """A URL on ``base`` (this server, as the bot reached it) that answers the file's
        bytes until it expires, as Meta's download URLs do."""
        expires = int(time.time() if now is None else now) + self.lifetime
        return (
            f"{base}/media-bytes/{media_id}?expires={expires}&sig={self._sign(media_id, expires)}"
        )

    def valid(self, media_id: str, expires: str, sig: str, now: float | None = None) -> bool:
        """Whether a download URL's ``expires`` and ``sig`` are this file's, not yet expired."""
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(sig, self._sign(media_id, int(expires)))

    def _sign(self, media_id: str, expires: int) -> str:
        message = f"{media_id}:{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]


def base_mime(mime_type: str) -> str:
    """A mime type without its parameters, lower case; ``application/octet-stream`` for
    what is not one."""
    base = mime_type.split(";", 1)[0].strip().lower()
    return base if _MIME.fullmatch(base) else "application/octet-stream"


def shown(kept: MediaFile, *, download: bool) -> dict[str, str]:
    """The headers the page gets a file with: its type, never sniffed, in a sandbox (an
    uploaded HTML page runs nothing on the simulator's origin); an image the page may show
    inline, anything else (and anything asked as a ``download``) as an attachment under its
    file name."""
    headers = {
        "content-type": kept.mime_type,
        "x-content-type-options": "nosniff",
        "content-security-policy": "default-src 'none'; sandbox",
        "cache-control": "private, max-age=3600",
    }
    family = kept.mime_type.partition("/")[0]
    if download or not (kept.mime_type in _INLINE or family in ("audio", "video")):
        name = kept.filename or f"{kept.id}"
        headers["content-disposition"] = f"attachment; filename*=UTF-8''{quote(name, safe='')}"
    return headers


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a multipart form: its ``filename`` (a file's), ``content_type`` and bytes."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,200})"|([^;\s"]{1,200}))', re.IGNORECASE)
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)=(?:"((?:[^"\\]|\\.)*)"|([^;]*))')


def multipart(content_type: str, raw: bytes) -> dict[str, Part] | None:
    """The parts of a ``multipart/form-data`` body by name (the bytes exactly as sent), or
    None when it is not one or is broken."""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    delimiter = b"\r\n--" + (found[1] or found[2]).encode("latin-1")
    chunks = (b"\r\n" + raw).split(delimiter)
    parts: dict[str, Part] = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            return parts
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            return None
        headers = _headers(head.decode("utf-8", "replace"))
        disposition = _params(headers.get("content-disposition", ""))
        name = disposition.get("name")
        if name is None:
            return None
        kind = headers.get("content-type", "text/plain")
        parts[name] = Part(disposition.get("filename", ""), kind, data)
    return None  # no closing delimiter: truncated


def _headers(head: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _params(value: str) -> dict[str, str]:
    """``form-data; name="file"; filename="a.csv"`` as ``{"name": "file", "filename":
    "a.csv"}``."""
    found: dict[str, str] = {}
    for match in _PARAM.finditer(value):
        quoted, bare = match[2], match[3]
        found[match[1].lower()] = quoted.replace('\\"', '"') if quoted is not None else bare.strip()
    return found
