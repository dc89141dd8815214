"""What a step handler sees (:class:`Context`) and what it returns (:class:`Outcome`).

A handler never mutates the snapshot. It reads the context and returns an outcome describing the
change: replies, data to set, data to delete, the next step, an event to fire, an auth event. The
engine checks the outcome against the flow (the machine decides whether the event is allowed),
derives the next snapshot and saves it by compare-and-set; only then are the replies returned.

Deleting a field (``unset``) is different from not supplying it: a cancelled sub-flow's data is
removed explicitly and cannot come back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgspec

from fsm.attachments import (
    Attachment,
    Contact,
    Contacts,
    InboundMedia,
    Location,
    Reaction,
    attachment_kind,
    media_from,
)
from fsm.media import MediaAccess, MediaError
from fsm.redaction import REDACTED, redact
from fsm.reply import Reply
from fsm.snapshot import SCALAR_TYPES
from fsm.timers import Event

ReplyLike = Reply | str


@dataclass(frozen=True, slots=True)
class Login:
    """Auth event: store a newly issued token (login or refresh). The engine verifies it."""

    token: str

    def __repr__(self) -> str:
        return "Login(token=<redacted>)"


@dataclass(frozen=True, slots=True)
class Logout:
    """Auth event: clear the auth slot."""


AuthEvent = Login | Logout


#: What an outcome sets when it sets nothing: one shared, read-only empty mapping.
_NOTHING: Mapping[str, Any] = MappingProxyType({})


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """The change a handler asks for. Build it with :meth:`Context.stay` or :meth:`Context.go`.

    A frozen :class:`msgspec.Struct` (not a dataclass: one is made per message, and a Struct
    is about ten times cheaper to build); change one with :func:`msgspec.structs.replace`."""

    replies: tuple[Reply, ...] = ()
    event: str | None = None
    step: str | None = None
    option: str | None = None
    set: Mapping[str, Any] = _NOTHING
    unset: frozenset[str] = frozenset()
    clear: bool = False
    auth: AuthEvent | None = None
    resume: bool = False
    reauth: bool = False
    #: From an action: the call may have been applied; keep its idempotency key for the
    #: user's next attempt (:meth:`Context.retry_later`).
    keep_key: bool = False
    #: Leave by the stage's declared :class:`~fsm.flow.Exit` (:meth:`Context.exit`).
    exit: bool = False

    def __repr__(self) -> str:
        return (
            f"Outcome(event={self.event!r}, step={self.step!r}, option={self.option!r}, "
            f"set={sorted(self.set)!r}, unset={sorted(self.unset)!r}, clear={self.clear}, "
            f"auth={self.auth!r}, resume={self.resume}, reauth={self.reauth}, "
            f"keep_key={self.keep_key}, exit={self.exit}, replies={len(self.replies)})"
        )

    def __rich_repr__(self) -> list[tuple[str, Any]]:  # msgspec's would show set's values
        return [
            ("event", self.event),
            ("step", self.step),
            ("set", sorted(self.set)),
            ("replies", len(self.replies)),
        ]


def freeze(value: Any) -> Any:
    """A read-only deep view: maps become ``MappingProxyType``, lists become tuples.

    A handler that tries to change ``ctx.data`` in place fails loudly instead of changing the
    next snapshot behind the outcome's back.
    """
    kind = type(value)
    if kind in SCALAR_TYPES:  # the common case, checked first: ABC checks are slow
        return value
    if kind is FrozenData:
        return value
    if kind is dict or isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if kind is list or kind is tuple:
        return tuple([v if type(v) in SCALAR_TYPES else freeze(v) for v in value])
    return value


_UNSEEN: Any = object()

#: How many frozen data values are kept for reuse (:func:`_frozen`).
FROZEN_KEPT = 10_000
# id(stored value) -> (that value, its frozen view). The entry holds the value, so its id
# cannot be reused while the entry lives. Stored values are never changed in place (the
# engine copies, thaws into new containers, and hands handlers only frozen views), so a
# view made once stays right for as long as the value is stored; and a view is immutable
# all the way down (tuples and MappingProxyType), so sharing it between messages is safe.
_views: dict[int, tuple[Any, Any]] = {}


def _frozen(raw: Any) -> Any:
    """:func:`freeze` of a stored data value, made once per value: the next snapshot of a
    conversation shares every value its step did not set, so a step that reads the same
    dashboard message after message freezes it once."""
    if type(raw) in SCALAR_TYPES:
        return raw
    kept = _views.get(id(raw))
    if kept is not None and kept[0] is raw:
        return kept[1]
    frozen = freeze(raw)
    if len(_views) >= FROZEN_KEPT:
        _views.clear()  # a new generation: the active conversations' values come back first
    _views[id(raw)] = (raw, frozen)
    return frozen


class FrozenData(Mapping[str, Any]):
    """``ctx.data``: a read-only view of the stored data whose values are frozen
    (:func:`freeze`) when first read, and kept: a step pays only for the values it reads.

    Nothing in it changes anything: it has no method that writes, its attributes cannot be
    set, it reads the data through a ``MappingProxyType``, and every value it hands out is
    frozen all the way down. A handler cannot change the stored data behind its outcome's
    back. Its repr hides the values of ``hidden`` keys (the flow's sensitive ones) and of
    secret-looking keys (:func:`fsm.redaction.redact`)."""

    __slots__ = ("_data", "_frozen", "_hidden")
    _data: Mapping[str, Any]
    _frozen: dict[str, Any]
    _hidden: frozenset[str]

    def __init__(self, data: Mapping[str, Any], hidden: frozenset[str] = frozenset()) -> None:
        object.__setattr__(self, "_data", MappingProxyType(data))
        object.__setattr__(self, "_frozen", {})
        object.__setattr__(self, "_hidden", hidden)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ctx.data is read-only: return set=... in the outcome ({name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ctx.data is read-only: return unset=... in the outcome ({name})")

    def __getitem__(self, key: str) -> Any:
        value = self._frozen.get(key, _UNSEEN)
        if value is _UNSEEN:  # first read (a miss costs no exception: this runs per message)
            value = self._frozen[key] = _frozen(self._data[key])
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._frozen.get(key, _UNSEEN)
        if value is not _UNSEEN:
            return value
        raw = self._data.get(key, _UNSEEN)
        if raw is _UNSEEN:
            return default
        value = self._frozen[key] = _frozen(raw)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]  # like a dict: equal views, changing data

    def __repr__(self) -> str:
        return f"FrozenData({redact(self._data, self._hidden)!r})"


def thaw(value: Any) -> Any:
    """The storable form of a value a handler passed back (possibly read from ``ctx.data``)."""
    if type(value) in SCALAR_TYPES:
        return value
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def _replies(items: Iterable[ReplyLike]) -> tuple[Reply, ...]:
    """The replies of an outcome; anything but a Reply or a str is refused here, where the
    handler made it, not when the outcome is saved or sent."""
    out: list[Reply] = []
    for item in items:
        if isinstance(item, Reply):
            out.append(item)
        elif isinstance(item, str):
            out.append(Reply(item))
        else:
            raise TypeError(
                f"a reply is a Reply or a str, got {type(item).__name__} (pass data in "
                "set=..., and a step name as step=...)"
            )
    return tuple(out)


class Context(msgspec.Struct, frozen=True):
    """Read-only view of one message and the conversation it arrives in.

    ``data`` is read-only; change it through the outcome. The token is readable (API calls need
    it as a bearer token) but only an auth event in the outcome can change it; no repr shows
    it. A frozen :class:`msgspec.Struct`: :func:`msgspec.structs.replace` makes a changed copy.
    """

    user_key: str
    text: str
    stage: str
    step: str
    option: str
    data: Mapping[str, Any]
    subject: str
    token_expires_at: float | None
    now: float
    message_id: str | None
    _token: str | None = None
    #: In an action (:func:`fsm.flow.action`): the same for every attempt at one pending
    #: action, so an API that honours idempotency keys applies a retried call once. At the
    #: step an action sent the user back to with :meth:`retry_later`: that kept key (see
    #: ``uncertain``); elsewhere "".
    idempotency_key: str = ""
    #: The id of the option the user tapped (a WhatsApp reply button or list row), when the
    #: message is a tap: ``text`` is then that id too. None for typed text, so a flow can
    #: tell a typed "cancel" from a pressed Cancel button.
    pressed: str | None = None
    #: An earlier attempt at the request this step leads to may have been applied: its action
    #: failed in a way that may still have gone through (:meth:`retry_later`) and the user is
    #: back at this step with its key kept (``idempotency_key``). A step that lets the user
    #: stop here must not say "cancelled" then: it may already have happened. Always False in
    #: an action itself (pass ``idempotency_key``: it makes a retry safe).
    uncertain: bool = False
    #: The flow's sensitive data keys (:attr:`fsm.Flow.sensitive`), given by the engine: no
    #: repr shows their values, nor, when the flow declares any, the message's ``text`` (the
    #: answer to "your address?" is the address).
    _sensitive: frozenset[str] = frozenset()
    #: In an event handler (:func:`fsm.on_event`): the event (name, data, id); else None.
    event: Event | None = None
    #: In a timer's handler (:func:`fsm.timeout`): the timer's name; else "".
    timer: str = ""
    #: What the user sent besides text (:mod:`fsm.attachments`), at a step that accepts it;
    #: None for text (``text`` is then a media's caption, or "").
    attachment: Attachment | None = None
    #: The channel's media store, for :meth:`download` (given by the engine; None: none).
    _media: MediaAccess | None = None

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def kind(self) -> str:
        """``"text"``, or the attachment's kind (``"image"``, ``"location"``...)."""
        return attachment_kind(self.attachment)

    @property
    def media(self) -> InboundMedia | None:
        """The file the user sent (an image, a document...), or None."""
        return self.attachment if isinstance(self.attachment, InboundMedia) else None

    @property
    def location(self) -> Location | None:
        """The place the user shared, or None."""
        return self.attachment if isinstance(self.attachment, Location) else None

    @property
    def reaction(self) -> Reaction | None:
        """The user's reaction to one of the bot's messages, or None."""
        return self.attachment if isinstance(self.attachment, Reaction) else None

    @property
    def contacts(self) -> tuple[Contact, ...]:
        """The contact cards the user shared (empty for none)."""
        return self.attachment.contacts if isinstance(self.attachment, Contacts) else ()

    def download(self, media: InboundMedia | Mapping[str, Any] | None = None) -> bytes:
        """The bytes of ``media`` (default: the one this message carries; or one kept in the
        data), fetched from the channel now, in a ``def`` handler (it blocks this thread;
        an ``async def`` handler awaits :meth:`adownload`). Raises
        :class:`~fsm.media.MediaError` (too large, a type not allowed, the sha256 does not
        match, the link expired, the channel unreachable, or no channel at all)."""
        return self._media_access().download(self._media_of(media))

    async def adownload(self, media: InboundMedia | Mapping[str, Any] | None = None) -> bytes:
        """:meth:`download`, awaited (in an ``async def`` handler)."""
        return await self._media_access().adownload(self._media_of(media))

    def _media_access(self) -> MediaAccess:
        if self._media is None:
            raise MediaError("no_channel", "the engine was given no media channel (media=)")
        return self._media

    def _media_of(self, media: InboundMedia | Mapping[str, Any] | None) -> InboundMedia:
        if media is not None:
            return media_from(media)
        if self.media is None:
            raise ValueError(f"this message carries no file ({self.kind})")
        return self.media

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"Context({shown})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        """Every field but the token, with the data redacted (:func:`fsm.redaction.redact`:
        the flow's sensitive keys and secret-looking ones) and, in a flow that declares
        sensitive keys, the message's text hidden too."""
        hidden = self._sensitive
        shown: list[tuple[str, Any]] = []
        for name in self.__struct_fields__:
            if name in ("_token", "_sensitive", "_media"):
                continue
            value = getattr(self, name)
            if name == "data":
                value = redact(value, hidden)
            elif name == "text" and hidden and value:
                value = REDACTED
            shown.append((name, value))
        return shown

    @staticmethod
    def readonly(data: Mapping[str, Any]) -> Mapping[str, Any]:
        frozen: Mapping[str, Any] = freeze(data)
        return frozen

    def stay(
        self,
        *replies: ReplyLike,
        step: str | None = None,
        option: str | None = None,
        set: Mapping[str, Any] | None = None,
        unset: Iterable[str] = (),
        clear: bool = False,
        auth: AuthEvent | None = None,
    ) -> Outcome:
        """Remain in this stage (optionally at another of its steps)."""
        return Outcome(
            replies=_replies(replies),
            step=step,
            option=option,
            set=_NOTHING if not set else dict(set),
            unset=frozenset(unset) if unset else frozenset(),
            clear=clear,
            auth=auth,
        )

    def go(
        self,
        event: str,
        *replies: ReplyLike,
        step: str | None = None,
        option: str | None = None,
        set: Mapping[str, Any] | None = None,
        unset: Iterable[str] = (),
        clear: bool = False,
        auth: AuthEvent | None = None,
        resume: bool = False,
    ) -> Outcome:
        """Fire ``event``; the flow's machine decides whether it is allowed from here.

        With ``resume=True`` and a pending resume point (set when an expired token interrupted
        a protected stage), the engine returns the user there instead, along the flow's graph.
        """
        return Outcome(
            replies=_replies(replies),
            event=event,
            step=step,
            option=option,
            set=_NOTHING if not set else dict(set),
            unset=frozenset(unset) if unset else frozenset(),
            clear=clear,
            auth=auth,
            resume=resume,
        )

    def retry_later(
        self,
        *replies: ReplyLike,
        step: str,
        option: str | None = None,
        set: Mapping[str, Any] | None = None,
        unset: Iterable[str] = (),
    ) -> Outcome:
        """From an action whose call may have been applied although it failed (a timeout, a
        5xx, a dropped connection): back to ``step`` of this stage, keeping the action's
        idempotency key. When the user confirms again, the action runs with the same key, so
        the API applies the request at most once.

        Say so honestly ("it may have gone through"): the bot does not know. A definite
        refusal (a 4xx) is an ordinary :meth:`stay`: the next attempt is a new request with a
        new key, as it is after the user changes the request's data or leaves the stage.
        """
        stay = self.stay(*replies, step=step, option=option, set=set, unset=unset)
        return msgspec.structs.replace(stay, keep_key=True)

    def exit(self) -> Outcome:
        """Leave by this stage's declared :class:`~fsm.flow.Exit`, exactly as a typed "cancel"
        would: its trigger or step, its ``say`` (a function of the context can read
        ``ctx.uncertain``), its ``unset``. For a step that offers its own way out ("2. Cancel")
        so that what leaving says lives in one place. A stage with no ``exit`` fails."""
        return Outcome(exit=True)

    def reauth(self, *replies: ReplyLike) -> Outcome:
        """The API refused our token (401): send the user to the flow's auth stage with a
        resume point here, keeping the data, exactly as an expired token would."""
        return Outcome(replies=_replies(replies), reauth=True)
