"""What a transcript's ``! send`` line sends: a file, a place, a reaction or a contact card, as
the user would, through a :class:`~fsm.memory_media.MemoryMedia` (so a step can download the
file). Files are made up (a few KB of the right type), named as the line says::

    ! send image                     an image (PNG)
    ! send image | my receipt        ... with the caption "my receipt"
    ! send document rx.pdf | scan    a document named rx.pdf (its type from the name)
    ! send audio / video / sticker   a voice note (OGG), a video (MP4), a sticker (WebP)
    ! send location -17.83,31.05 Clinic    a place (latitude,longitude), optionally named
    ! send reaction 👍               a reaction to the bot's last message
    ! send contact Bob 263770000002  a contact card

>>> text, sent = attachment("image | my receipt", MemoryMedia())
>>> text, sent.kind, sent.caption
('my receipt', 'image', 'my receipt')
"""

from __future__ import annotations

import mimetypes

from fsm.attachments import Attachment, Contact, Contacts, Location, MediaKind, Reaction
from fsm.memory_media import MemoryMedia

USAGE = (
    "use: ! send image|document NAME|audio|video|sticker [| caption], "
    "! send location LAT,LONG [name], ! send reaction EMOJI, ! send contact NAME PHONE"
)

#: Made-up files per kind: their leading bytes (the type's signature), and mime type.
_FILES: dict[str, tuple[bytes, str]] = {
    "image": (b"\x89PNG\r\n\x1a\n", "image/png"),
    "audio": (b"OggS", "audio/ogg"),
    "video": (b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
    "sticker": (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
    "document": (b"%PDF-1.4\n", "application/pdf"),
}
#: The size of a made-up file.
FILE_SIZE = 2048


def attachment(rest: str, media: MemoryMedia) -> tuple[str, Attachment]:
    """The text (a caption, or "") and the attachment a ``! send`` line's words make;
    ``ValueError`` saying how to write it."""
    words, _, caption = rest.partition("|")
    kind, *args = words.split() or [""]
    caption = caption.strip()
    if kind in _FILES:
        return caption, _file(kind, args, caption, media)
    if kind == "location" and args:
        return "", _place(args)
    if kind == "reaction" and len(args) == 1:
        return "", Reaction("last", args[0])
    if kind == "contact" and len(args) >= 2:
        return "", Contacts((Contact(" ".join(args[:-1]), (args[-1],)),))
    raise ValueError(USAGE)


def _file(kind: str, args: list[str], caption: str, media: MemoryMedia) -> Attachment:
    if len(args) > 1 or (args and kind != "document"):
        raise ValueError(USAGE)
    head, mime_type = _FILES[kind]
    filename = args[0] if args else ""
    if filename:
        mime_type = mimetypes.guess_type(filename)[0] or mime_type
    data = head + bytes(FILE_SIZE - len(head))
    chosen: MediaKind = kind  # type: ignore[assignment]
    return media.add(data, mime_type, kind=chosen, caption=caption, filename=filename)


def _place(args: list[str]) -> Location:
    latitude, _, longitude = args[0].partition(",")
    try:
        return Location(float(latitude), float(longitude), " ".join(args[1:]))
    except ValueError:
        raise ValueError(
            f"a location is LAT,LONG within range, like -17.83,31.05 ({USAGE})"
        ) from None
