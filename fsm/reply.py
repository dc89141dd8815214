"""Replies a step sends back: plain text, buttons (at most 3) or a list (at most 10 rows).

Typed so a transport can render them natively (WhatsApp interactive messages) while the terminal
chat renders them as numbered options. A list over more items than fit is shown a page at a
time (:func:`paged`). Titles and descriptions are kept whole here; the WhatsApp transport cuts
them to WhatsApp's limits when it sends them (:func:`whatsapp_trims` says what it would cut).
Any of them may carry a message template (:func:`template`), which the WhatsApp transport
sends in its place when the user's 24-hour window is closed (:mod:`fsm.templates`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec

from fsm.attachments import InboundMedia, Location, MediaKind, Reaction
from fsm.media_replies import OutboundMedia, make_media, media_problems
from fsm.templates import BodyParam, HeaderParam, Template, make_template, template_problems

MAX_BUTTONS = 3
MAX_ROWS = 10

#: The id of the row that turns a paged list (:func:`paged`) to its next page. No item may
#: use it.
MORE = "fsm.more"

#: What ends a title or description cut to fit (:func:`trimmed`).
ELLIPSIS = "…"


class Option(msgspec.Struct, frozen=True, omit_defaults=True):
    """One choice a user can pick, by number or by title.

    ``description`` is a second line under a list row's title (WhatsApp shows at most 72
    characters of it; the terminal shows ``3. Title - description``). Buttons cannot show
    one: :func:`buttons` refuses it. An option without a description is stored exactly as
    before descriptions existed (``omit_defaults``), and one stored then reads back with
    ``description == ""``.
    """

    id: str
    title: str
    description: str = ""


#: What a step may list: an :class:`Option`; a string (its id and title alike); an
#: ``(id, title)`` or ``(id, title, description)`` tuple or list; or a mapping with ``id``,
#: ``title`` and optionally ``description`` (rows kept in the conversation's data come back as
#: lists and dicts).
Item = Option | str | Sequence[str] | Mapping[str, Any]


#: What a reply is: text, interactive options, a file, a place, a request for the user's
#: location, or a reaction to one of the user's messages.
ReplyKind = Literal[
    "text",
    "buttons",
    "list",
    "image",
    "document",
    "audio",
    "video",
    "sticker",
    "location",
    "location_request",
    "reaction",
]
#: The kinds whose ``body`` may be empty (a caption is optional; a place or a reaction
#: has none).
WITHOUT_BODY = frozenset({"image", "document", "audio", "video", "sticker", "location", "reaction"})


class Reply(msgspec.Struct, frozen=True, omit_defaults=True):
    """A message to send. Build with :func:`text`, :func:`buttons`, :func:`choices`,
    :func:`paged`, :func:`template`, the media replies (:func:`image`, :func:`document`,
    :func:`audio`, :func:`video`, :func:`sticker`), :func:`location`,
    :func:`location_request` or :func:`reaction`.

    ``media`` is a media reply's file (its ``body`` the caption), ``place`` a location
    reply's place, ``reaction`` a reaction's target and emoji (default fields, omitted when
    stored: a reply stored before they existed reads back as it was).

    ``template``: the approved message template the WhatsApp transport sends instead when the
    user's 24-hour window is closed (None: the reply has none). Stored in an outbox as a map
    without its default fields (``omit_defaults``), so a reply without a template is stored
    as before templates existed, and one stored then reads back with ``template=None``.
    """

    body: str
    kind: ReplyKind = "text"
    options: tuple[Option, ...] = ()
    template: Template | None = None
    media: OutboundMedia | None = None
    place: Location | None = None
    reaction: Reaction | None = None

    def with_body(self, body: str) -> Reply:
        """The same options (and template) with another text: one set of buttons, asked in
        several ways.

        >>> buttons("Confirm?", ["Yes", "No"]).with_body("Send 5 USD to @bob?").body
        'Send 5 USD to @bob?'
        """
        return msgspec.structs.replace(self, body=body)

    def render(self) -> str:
        """Plain-text rendering: the body, then numbered options, whole (not cut to
        WhatsApp's limits), each followed by its description if it has one.

        >>> print(choices("Which one?", [("a", "Amoxicillin", "500 mg, 21 capsules")]).render())
        Which one?
          1. Amoxicillin - 500 mg, 21 capsules
        """
        lines = [self.body] if self.kind not in WITHOUT_BODY or self.body else []
        shown = self._shown()
        if shown:
            lines.insert(0, shown)
        if self.kind == "location_request":
            lines.append("  [Send location]")
        for n, opt in enumerate(self.options, start=1):
            about = f" - {opt.description}" if opt.description else ""
            lines.append(f"  {n}. {opt.title}{about}")
        return "\n".join(lines)

    def _shown(self) -> str:
        """The line that stands for a file, a place or a reaction ("" for other kinds)."""
        if self.media is not None:
            return f"[{self.media.describe()}]"
        if self.place is not None:
            named = ", ".join(part for part in (self.place.name, self.place.address) if part)
            at = f"{self.place.latitude:.5f}, {self.place.longitude:.5f}"
            return f"[location: {named} ({at})]" if named else f"[location: {at}]"
        if self.reaction is not None:
            emoji = self.reaction.emoji
            return f"[reaction {emoji}]" if emoji else "[reaction removed]"
        return ""


def text(body: str) -> Reply:
    return Reply(body)


def _media_reply(
    kind: MediaKind,
    source: str | bytes | InboundMedia | None,
    media_id: str,
    caption: str,
    mime_type: str,
    filename: str = "",
) -> Reply:
    media = make_media(kind, source, media_id=media_id, mime_type=mime_type, filename=filename)
    return Reply(caption, kind, media=media)


def image(
    source: str | bytes | InboundMedia | None = None,
    *,
    caption: str = "",
    media_id: str = "",
    mime_type: str = "",
) -> Reply:
    """An image (JPEG or PNG) from a link, bytes, a ``media_id`` or an image the user sent
    (``ctx.media``: fetched and sent again), with an optional caption.

    >>> image(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(2048), caption="Your receipt").render()
    '[image: 2 KB]\\nYour receipt'
    """
    return _media_reply("image", source, media_id, caption, mime_type)


def document(
    source: str | bytes | InboundMedia | None = None,
    *,
    filename: str,
    caption: str = "",
    media_id: str = "",
    mime_type: str = "",
) -> Reply:
    """A document (the user sees ``filename``) from a link, bytes or a ``media_id``; the
    mime type is guessed from the file name when not given.

    >>> document(b"date,amount\\n", filename="statement.csv", mime_type="text/plain").render()
    '[document: statement.csv, 12 B]'
    """
    return _media_reply("document", source, media_id, caption, mime_type, filename)


def audio(
    source: str | bytes | InboundMedia | None = None, *, media_id: str = "", mime_type: str = ""
) -> Reply:
    """Audio (AAC, AMR, MP3, MP4 audio, OGG Opus), without a caption."""
    return _media_reply("audio", source, media_id, "", mime_type)


def video(
    source: str | bytes | InboundMedia | None = None,
    *,
    caption: str = "",
    media_id: str = "",
    mime_type: str = "",
) -> Reply:
    """A video (MP4 or 3GPP), with an optional caption."""
    return _media_reply("video", source, media_id, caption, mime_type)


def sticker(source: str | bytes | InboundMedia | None = None, *, media_id: str = "") -> Reply:
    """A sticker (WebP, 512x512), without a caption."""
    return _media_reply("sticker", source, media_id, "", "image/webp")


def location(latitude: float, longitude: float, *, name: str = "", address: str = "") -> Reply:
    """A place the user can open in their maps app.

    >>> location(-17.8292, 31.0522, name="Credex office", address="Harare").render()
    '[location: Credex office, Harare (-17.82920, 31.05220)]'
    """
    return Reply("", "location", place=Location(float(latitude), float(longitude), name, address))


def location_request(body: str) -> Reply:
    """Ask the user to share their location (WhatsApp shows a *Send location* button under
    ``body``); the answer reaches a step that accepts ``"location"`` as ``ctx.location``."""
    if not body.strip():
        raise ValueError("a location request needs a body (what the location is for)")
    return Reply(body, "location_request")


def reaction(message_id: str, emoji: str) -> Reply:
    """React with ``emoji`` to the user's message ``message_id`` (``ctx.message_id``); ""
    removes the bot's reaction."""
    if not message_id:
        raise ValueError("a reaction needs the id of the message it reacts to")
    return Reply("", "reaction", reaction=Reaction(message_id, emoji))


def template(
    name: str,
    language: str,
    *,
    params: Iterable[BodyParam | str] = (),
    header: HeaderParam | str | None = None,
    buttons: Iterable[str] = (),
    fallback: Reply | str,
) -> Reply:
    """A reply that is the approved message template ``name`` in ``language`` when the
    user's 24-hour window is closed, and ``fallback`` (a Reply or a text) otherwise: inside
    the window, in the terminal chat and in :mod:`fsm.testing`.

    ``params`` fill the template's body variables in order: a str (text),
    :func:`fsm.templates.currency` or :func:`fsm.templates.date_time`. ``header`` fills the
    header's variable: a str, or :func:`fsm.templates.media` for an image, a document or a
    video. ``buttons`` are the payloads of its quick-reply buttons, in order: a tap on one
    reaches the step as a pressed option with that id (``ctx.pressed``). Checked against
    Meta's limits here (``ValueError``), and against the flow's ``templates`` when a step
    returns it.

    >>> nudge = template("order_reminder", "en", params=["5 USD"], buttons=["yes", "no"],
    ...                  fallback=buttons("Confirm 5 USD?", [("yes", "Yes"), ("no", "No")]))
    >>> nudge.render().splitlines()[0], nudge.template.name, nudge.template.buttons
    ('Confirm 5 USD?', 'order_reminder', ('yes', 'no'))
    """
    base = fallback if isinstance(fallback, Reply) else Reply(fallback)
    if not isinstance(base.body, str):
        raise TypeError(f"a template's fallback is a Reply or a str, got {type(fallback).__name__}")
    if base.template is not None:
        raise ValueError("a template's fallback is a free-form reply, not another template")
    made = make_template(name, language, params=params, header=header, buttons=buttons)
    return msgspec.structs.replace(base, template=made)


def as_option(item: Item) -> Option:
    """``item`` as an :class:`Option` (see :data:`Item`); ``TypeError`` for anything else.

    >>> as_option({"id": "rx-1", "title": "Amoxicillin", "description": "500 mg"})
    Option(id='rx-1', title='Amoxicillin', description='500 mg')
    """
    if isinstance(item, Option):
        return item
    if isinstance(item, str):
        return Option(item, item)
    if isinstance(item, Mapping):
        if not {"id", "title"} <= item.keys():
            raise TypeError(f"an option mapping needs 'id' and 'title', got {sorted(item)}")
        return Option(str(item["id"]), str(item["title"]), str(item.get("description") or ""))
    if isinstance(item, Sequence) and len(item) in (2, 3):
        return Option(*(str(part) for part in item))
    raise TypeError(
        f"an option is an Option, a string, (id, title[, description]) or a mapping: {item!r}"
    )


def _options(items: Iterable[Item]) -> tuple[Option, ...]:
    return tuple(as_option(item) for item in items)


def buttons(body: str, items: Iterable[Item]) -> Reply:
    """Reply buttons: 1 to 3 options, without descriptions (WhatsApp's buttons cannot show
    one: put it in the body, or use :func:`choices`)."""
    opts = _options(items)
    if not 1 <= len(opts) <= MAX_BUTTONS:
        raise ValueError(f"buttons take 1 to {MAX_BUTTONS} options, got {len(opts)}")
    described = [opt.title for opt in opts if opt.description]
    if described:
        raise ValueError(
            f"buttons cannot show a description (on {described}): put it in the body, "
            "or use choices()"
        )
    return Reply(body, "buttons", opts)


def choices(body: str, items: Iterable[Item]) -> Reply:
    """A list of 1 to 10 rows; for more items, :func:`paged`."""
    opts = _options(items)
    if not 1 <= len(opts) <= MAX_ROWS:
        raise ValueError(
            f"a list takes 1 to {MAX_ROWS} rows, got {len(opts)} (paged() shows any number)"
        )
    return Reply(body, "list", opts)


def pick(reply: Reply | None, answer: str) -> Option | None:
    """The option ``answer`` names, or None: its exact id first (a tapped button or list row
    arrives as its id, even an id made of digits), then a number ("2"), then its title or
    id ignoring case. Titles are matched whole, as the step built them, even where WhatsApp
    showed them cut short."""
    if reply is None or not reply.options:
        return None
    for opt in reply.options:  # a tapped option arrives as its id: exact first, even "10"
        if answer == opt.id:
            return opt
    answer = answer.strip()
    if answer.isdigit():
        index = int(answer) - 1
        return reply.options[index] if 0 <= index < len(reply.options) else None
    folded = answer.casefold()
    for opt in reply.options:
        if folded in (opt.id.casefold(), opt.title.casefold()):
            return opt
    return None


# -- lists over any number of items ----------------------------------------------------------
class Page:
    """One page of a list over any number of items: build it with :func:`paged`.

    ``reply`` is what to send: this page's items, then a row that turns the page (id
    :data:`MORE`: "More…", or "Back to the start" on the last page), then the ``extra`` rows
    every page repeats. ``number`` is this page (0 for the first) and ``count`` how many
    there are. A step keeps ``number`` in the conversation's data and builds the same page
    again from it when the answer comes (see :meth:`pick`).
    """

    __slots__ = ("_body", "_extra", "_first", "_items", "_more", "count", "number", "reply")

    def __init__(
        self,
        body: str,
        items: tuple[Option, ...],
        number: int,
        extra: tuple[Option, ...],
        more: str,
        first: str,
    ) -> None:
        self._body, self._items, self._extra = body, items, extra
        self._more, self._first = more, first
        if len(items) + len(extra) <= MAX_ROWS:
            self.count, self.number = 1, 0
            self.reply = choices(body, (*items, *extra))
            return
        per = MAX_ROWS - 1 - len(extra)
        if per < 1:
            raise ValueError(f"{len(extra)} extra rows leave no room for items in a list")
        self.count = -(-len(items) // per)
        self.number = min(max(number, 0), self.count - 1)
        shown = items[self.number * per : (self.number + 1) * per]
        turn = Option(MORE, first if self.number == self.count - 1 else more)
        self.reply = choices(body, (*shown, turn, *extra))

    @property
    def next(self) -> Page:
        """The page the "More…" row leads to: the next one, or the first after the last."""
        number = (self.number + 1) % self.count
        return Page(self._body, self._items, number, self._extra, self._more, self._first)

    def pick(self, answer: str) -> Option | Page | None:
        """What ``answer`` chose on this page: an item's or extra row's :class:`Option`; the
        next :class:`Page` for the "More…" row (tapped, its number typed, or its title typed,
        "more" enough); or None.

        Numbers count the rows this page shows: "3" on the second page is its third row. A
        tap on a row of a page shown earlier (WhatsApp keeps old lists tappable) arrives as
        its id and still picks that item.
        """
        chosen = pick(self.reply, answer)
        if chosen is None:
            chosen = next((opt for opt in (*self._items, *self._extra) if opt.id == answer), None)
        if chosen is None and self.count > 1:
            folded = answer.strip().casefold()
            titles = {t.casefold().rstrip(".…").strip() for t in (self._more, self._first)}
            if folded == MORE or folded.rstrip(".…").strip() in titles:
                return self.next
        if chosen is not None and chosen.id == MORE:
            return self.next
        return chosen

    def __repr__(self) -> str:
        return f"Page({self.number + 1} of {self.count}, {len(self.reply.options)} rows)"


def paged(
    body: str,
    items: Iterable[Item],
    page: int = 0,
    *,
    extra: Iterable[Item] = (),
    more: str = "More…",
    first: str = "Back to the start",
) -> Page:
    """Page ``page`` (0 for the first) of a list over any number of ``items``.

    Up to 10 rows fit in one list, shown as :func:`choices` would. More are shown 9 at a time
    (fewer with ``extra`` rows, such as "Back to menu", repeated on every page), followed by
    a row with id :data:`MORE` titled ``more``, or ``first`` on the last page, which leads
    back to the first. A ``page`` past the end (the items got fewer) shows the last page.

    In a step, three lines: build the page kept in the data, pick, and on "More…" stay with
    the next page::

        page = paged("Which prescription?", ctx.data["rx"], ctx.data.get("rx_page", 0))
        chosen = page.pick(ctx.text)
        if isinstance(chosen, Page):
            return ctx.stay(chosen.reply, set={"rx_page": chosen.number})

    >>> page = paged("Which one?", [f"item {n}" for n in range(1, 21)])
    >>> page, page.reply.options[-1].id, page.reply.options[-1].title
    (Page(1 of 3, 10 rows), 'fsm.more', 'More…')
    >>> page.pick("3").title, page.pick("10")
    ('item 3', Page(2 of 3, 10 rows))
    >>> page.next.pick("3").title
    'item 12'
    """
    opts, fixed = _options(items), _options(extra)
    reserved = [opt.title for opt in (*opts, *fixed) if opt.id == MORE]
    if reserved:
        raise ValueError(f"the id {MORE!r} turns the page; {reserved} cannot use it")
    return Page(body, opts, page, fixed, more, first)


# -- WhatsApp's limits ------------------------------------------------------------------------
#: What WhatsApp Cloud API accepts (interactive messages). Titles, descriptions and the list's
#: button label over their limit are cut short by the transport (:func:`trimmed`), which
#: :func:`whatsapp_trims` reports; anything else over a limit cannot be sent as it is
#: (:func:`whatsapp_problems`), so a flow finds out in its own tests (:func:`check_whatsapp`,
#: which :class:`fsm.testing.Conversation` runs on every reply), not in production.
WHATSAPP_TEXT = 4096  # a longer text is split by the transport, not refused
WHATSAPP_INTERACTIVE_BODY = 1024
WHATSAPP_BUTTON_TITLE = 20  # cut
WHATSAPP_BUTTON_ID = 256
WHATSAPP_ROW_TITLE = 24  # cut
WHATSAPP_ROW_DESCRIPTION = 72  # cut
WHATSAPP_ROW_ID = 200
WHATSAPP_LIST_BUTTON = 20  # the label of the button that opens a list; cut


def trimmed(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in "…" when it was cut.

    >>> trimmed("Amoxicillin 500 mg capsules", 24), trimmed("Short", 24)
    ('Amoxicillin 500 mg caps…', 'Short')
    """
    if len(text) <= limit:
        return text
    return text[: limit - len(ELLIPSIS)].rstrip() + ELLIPSIS


def whatsapp_problems(reply: Reply) -> list[str]:
    """Every way ``reply`` breaks WhatsApp's limits that cutting cannot mend (empty: it can be
    sent as an interactive message, perhaps with titles cut: :func:`whatsapp_trims`)."""
    problems: list[str] = []
    if not reply.body.strip() and reply.kind not in WITHOUT_BODY:
        problems.append("the body is empty")
    if reply.media is not None:
        return problems + media_problems(reply.media, reply.body)
    if reply.kind in ("text", "location", "reaction"):
        return problems
    if reply.kind == "location_request":
        if len(reply.body) > WHATSAPP_INTERACTIVE_BODY:
            problems.append(f"the body is {len(reply.body)} characters (at most 1024)")
        return problems
    if len(reply.body) > WHATSAPP_INTERACTIVE_BODY:
        problems.append(
            f"the body of {reply.kind} is {len(reply.body)} characters "
            f"(at most {WHATSAPP_INTERACTIVE_BODY})"
        )
    most = MAX_BUTTONS if reply.kind == "buttons" else MAX_ROWS
    if not 1 <= len(reply.options) <= most:
        problems.append(f"{reply.kind} take 1 to {most} options, got {len(reply.options)}")
    id_max = WHATSAPP_BUTTON_ID if reply.kind == "buttons" else WHATSAPP_ROW_ID
    what = "button" if reply.kind == "buttons" else "row"
    for opt in reply.options:
        if not opt.title.strip():
            problems.append(f"{what} title {opt.title!r} is empty")
        if not opt.id or len(opt.id) > id_max:
            problems.append(f"{what} id {opt.id!r} must be 1 to {id_max} characters")
        if opt.description and reply.kind == "buttons":
            problems.append(f"button {opt.title!r} cannot show a description")
    ids = [opt.id for opt in reply.options]
    if len(set(ids)) != len(ids):
        problems.append(f"{what} ids must be unique, got {ids}")
    return problems


def whatsapp_trims(reply: Reply) -> list[str]:
    """What the WhatsApp transport would cut short to send ``reply``: one line per title or
    description over its limit, saying what is shown instead (empty: nothing is cut)."""
    if reply.kind not in ("buttons", "list"):
        return []
    what, title_max = (
        ("button", WHATSAPP_BUTTON_TITLE)
        if reply.kind == "buttons"
        else ("row", WHATSAPP_ROW_TITLE)
    )
    cuts: list[str] = []
    for opt in reply.options:
        if len(opt.title) > title_max:
            cuts.append(
                f"{what} title {opt.title!r} is shown as {trimmed(opt.title, title_max)!r} "
                f"(at most {title_max} characters)"
            )
        if reply.kind == "list" and len(opt.description) > WHATSAPP_ROW_DESCRIPTION:
            short = trimmed(opt.description, WHATSAPP_ROW_DESCRIPTION)
            cuts.append(
                f"row description {opt.description!r} is shown as {short!r} "
                f"(at most {WHATSAPP_ROW_DESCRIPTION} characters)"
            )
    return cuts


def check_whatsapp(reply: Reply) -> list[str]:
    """Raise ``ValueError`` naming every WhatsApp limit ``reply`` breaks that cannot be mended;
    else return what the transport would cut short (:func:`whatsapp_trims`): a warning, not
    a failure.

    >>> print(*check_whatsapp(buttons("Pay?", ["Yes, pay it right now", "No"])))
    button title 'Yes, pay it right now' is shown as 'Yes, pay it right n…' (at most 20 characters)
    >>> check_whatsapp(buttons("", ["Yes"]))
    Traceback (most recent call last):
    ValueError: reply '' cannot be sent on WhatsApp: the body is empty
    """
    problems = whatsapp_problems(reply)
    if reply.template is not None:  # made by hand (fsm.template checks its own)
        problems += [f"its template: {p}" for p in template_problems(reply.template)]
    if problems:
        raise ValueError(
            f"reply {reply.body[:40]!r} cannot be sent on WhatsApp: " + "; ".join(problems)
        )
    return whatsapp_trims(reply)
