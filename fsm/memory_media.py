"""A media channel in memory (:class:`fsm.media.MediaChannel`), for tests, transcripts and the
terminal chat: files a user "sends" are kept by id, replies made from bytes are "uploaded"
into it, and every download is checked as a real channel's is (size, type, sha256).

>>> import asyncio
>>> media = MemoryMedia()
>>> sent = media.add(b"\\x89PNG\\r\\n\\x1a\\n", "image/png", caption="my receipt")
>>> sent.kind, sent.caption, asyncio.run(media.download(sent))[:4]
('image', 'my receipt', b'\\x89PNG')
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from typing import Any

from fsm.attachments import MEDIA_KINDS, InboundMedia, MediaKind
from fsm.media import MediaChannel, MediaError
from fsm.media_replies import WHATSAPP_MEDIA, OutboundMedia

#: The largest file a download returns (the WhatsApp transport's default cap).
MAX_BYTES = 16 * 1024 * 1024


class MemoryMedia:
    """Files by media id, and what was uploaded (``uploads``, in order)."""

    def __init__(self, *, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.files: dict[str, tuple[bytes, str]] = {}  # id -> (bytes, mime type)
        self.uploads: list[OutboundMedia] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryMedia({len(self.files)} files, {len(self.uploads)} uploads)"

    def add(
        self,
        data: bytes,
        mime_type: str,
        *,
        kind: MediaKind | None = None,
        caption: str = "",
        filename: str = "",
    ) -> InboundMedia:
        """Keep ``data`` as a file a user sent; the :class:`InboundMedia` that names it (its
        kind from the mime type unless given: ``image/...`` is an image, and so on)."""
        media_id = self._keep(data, mime_type)
        chosen: MediaKind = kind or kind_of(mime_type)
        digest = hashlib.sha256(data).hexdigest()
        return InboundMedia(chosen, media_id, mime_type, digest, caption, filename)

    def _keep(self, data: bytes, mime_type: str) -> str:
        with self._lock:
            media_id = f"mem-{next(self._ids)}"
            self.files[media_id] = (bytes(data), mime_type)
        return media_id

    async def download(self, media: InboundMedia) -> bytes:
        found = self.files.get(media.id)
        if found is None:
            raise MediaError("expired", "no such file")
        data, mime_type = found
        if len(data) > self.max_bytes:
            raise MediaError("too_large", f"{len(data)} bytes")
        if media.sha256 and hashlib.sha256(data).hexdigest() != media.sha256:
            raise MediaError("sha256")
        if media.mime_type and media.mime_type != mime_type:
            raise MediaError("mime")
        return data

    async def upload(self, media: OutboundMedia) -> str:
        if not media.data:
            raise ValueError("nothing to upload: the media has no bytes")
        with self._lock:
            self.uploads.append(media)
        return self._keep(media.data, media.mime_type)


def media_of(engine: Any) -> MediaChannel:
    """The media channel of ``engine`` (an Engine, an AsyncEngine or a BlockingEngine), a
    :class:`MemoryMedia` given to it when it has none: where the testing kit and transcripts
    keep the files a user "sends"."""
    from fsm.blocking import BlockingEngine  # at call time: it imports the engines

    core = engine.engine if isinstance(engine, BlockingEngine) else engine
    if core.media is None:
        core.media = MemoryMedia()
    channel: MediaChannel = core.media
    return channel


def kind_of(mime_type: str) -> MediaKind:
    """The media kind a mime type is sent as: a WhatsApp sticker is ``image/webp``; other
    images, audio and video by their family; anything else a document."""
    if mime_type == "image/webp":
        return "sticker"
    family = mime_type.partition("/")[0]
    for kind in MEDIA_KINDS:
        if kind == family and mime_type in WHATSAPP_MEDIA[kind][0]:
            return kind
    return "document"
