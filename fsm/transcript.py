"""Transcripts: whole conversations written as text, run against an engine and checked.

One line per thing that happens::

    # A comment. Blank lines are ignored.
    > hi                      the user says "hi" (a line without a prefix says it too)
    < Welcome Alice           the bot's replies to that message contain this text...
    < 1. Offer credex         ...and then this, further on (fragments match in order)
    <! coming soon            ...and never this
    = menu.dashboard          the conversation is now at stage "menu", step "dashboard"
    = menu                    (or just at stage "menu")
    ! clock +10m              let time pass (s, m, h or d; plain numbers are seconds): the
                              fake clock moves and every timer due on the way fires
    < Still there?            what the firings said to this user, as for a message
    ! event ping {"note": "hi"}    apply the event "ping" (data: a JSON object, optional) to
                              this user's conversation; "< ..." checks what it said
    ! event ping {} id=ev-1   the same, with the event id ev-1 (default: a fresh one)
    ! user 263770000002       talk as another user from here on
    ! again                   deliver the last message again, with the same message id
    ! send image | caption    send a file, a place, a reaction or a contact card, as the
                              user would (:mod:`fsm.transcript_send` lists them)
    ! window 24h              play a channel with a reply window (WhatsApp's 24 hours):
                              what the bot says on its own to a user who last wrote longer
                              ago shows as it goes out (off: ``! window off``)
    ! api fail createCredex 503    a directive the caller supplies (here: the Credex bot's)

``<``, ``<!`` and ``=`` lines check what happened last: the last message (or ``! again``),
``! clock`` or ``! event``. After ``! clock`` that is what the timers that fired said to the
current user, one firing after another (nothing, if none fired for them), and the state the
conversation is in now. Timers fire for every user as the clock moves; what they said to other
users is kept in :attr:`Run.proactive`, never mixed into the current user's: after ``! user X``
the ``<`` lines still check only what comes next.

The same file is a test (:func:`fsm.testing.Conversation.run_file`) and a demo
(``fsm chat --script FILE`` prints the conversation and checks it). Expectations are checked
against the rendered replies (:meth:`fsm.reply.Reply.render`), so numbered options count.

With ``! window 24h`` the run plays the channel's side of WhatsApp's rule: it notes when each
user last wrote (by the fake clock), and a reply the bot sends on its own (``! clock``,
``! event``) after that user's window has closed is shown as what would go out: a template
reply as its template (:meth:`fsm.templates.Template.render`: ``[template credex_reminder en]
10.00 USD [buttons: ...]``), a reply without one as ``(not sent: outside the window) ...``.
The channel knows when the user last wrote, so this holds even when the conversation that
knew it has expired. Replies to a message are always inside the window.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from fsm.attachments import Attachment, attachment_kind
from fsm.clock import FakeClock
from fsm.fake_ticker import blank, combined, pass_time
from fsm.fake_ticker import move_clock as move_clock  # where it was first, for its importers
from fsm.memory_media import MemoryMedia, media_of
from fsm.transcript_send import attachment

if TYPE_CHECKING:
    from fsm.blocking import BlockingEngine
    from fsm.engine import Engine, Result
    from fsm.reply import Reply

#: A caller-supplied directive: gets the words after its name; raises ValueError on bad input.
Directive = Callable[[Sequence[str]], None]

_DURATION = re.compile(r"^\+?(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class TranscriptError(ValueError):
    """A transcript line that cannot be understood (the message names the line)."""


@dataclass(frozen=True, slots=True)
class Line:
    number: int
    kind: str  # "say", "expect", "refuse", "state", "directive"
    text: str


def parse(text: str) -> list[Line]:
    """The lines of a transcript, classified; raises :class:`TranscriptError` on a bad one."""
    lines: list[Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        for prefix, kind in (("<!", "refuse"), ("<", "expect"), (">", "say"), ("=", "state")):
            if stripped.startswith(prefix):
                body = stripped[len(prefix) :].strip()
                if kind != "say" and not body:
                    raise TranscriptError(f"line {number}: {prefix!r} needs some text after it")
                lines.append(Line(number, kind, body))
                break
        else:
            if stripped.startswith("!"):
                body = stripped[1:].strip()
                if not body:
                    raise TranscriptError(f"line {number}: '!' needs a directive name")
                lines.append(Line(number, "directive", body))
            else:
                lines.append(Line(number, "say", stripped))
    return lines


def duration(text: str) -> float:
    """Seconds in ``"90"``, ``"+30m"``, ``"2h"``, ``"1d"``."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90, 30m, 2h, 1d)")
    return float(match[1]) * _UNITS[match[2]]


class Proactive(NamedTuple):
    """What the bot said without being written to: ``user``'s conversation, what made it
    speak (``"! clock +10m"`` for a timer that fired, ``"! event ping"``), and the result."""

    user: str
    cause: str
    result: Result


@dataclass
class Run:
    """What running a transcript did: every message and its result (``turns``), what the bot
    said on its own (``proactive``: timers that fired, for every user, and events), how many
    expectations it checked (``<``, ``<!``, ``=`` lines and ``! again``), and every one that
    failed."""

    failures: list[str] = field(default_factory=list)
    turns: list[tuple[str, Result]] = field(default_factory=list)
    checks: int = 0
    proactive: list[Proactive] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def contains_in_order(said: str, fragments: Iterable[str]) -> str | None:
    """None if every fragment occurs in ``said`` in order; else the first one missing."""
    position = 0
    for fragment in fragments:
        found = said.find(fragment, position)
        if found < 0:
            return fragment
        position = found + len(fragment)
    return None


def event_arguments(text: str) -> tuple[str, dict[str, Any], str | None]:
    """The event name, data and id of an ``! event NAME [{json}] [id=ID]`` line.

    >>> event_arguments('ping {"note": "hi there"} id=ev-1')
    ('ping', {'note': 'hi there'}, 'ev-1')
    """
    usage = "use: ! event NAME [{JSON object}] [id=EVENT_ID]"
    name, _, rest = text.strip().partition(" ")
    if not name or name.startswith(("{", "id=")):
        raise ValueError(usage)
    rest = rest.strip()
    data: dict[str, Any] = {}
    if rest.startswith("{"):
        try:
            data, end = json.JSONDecoder().raw_decode(rest)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"the event's data is not a JSON object ({exc.msg}): {usage}"
            ) from None
        rest = rest[end:].strip()
    key, equals, event_id = rest.partition("=")
    if rest and (key != "id" or not equals or not event_id or event_id.split() != [event_id]):
        raise ValueError(usage)
    return name, data, event_id or None


@dataclass
class _Heard:
    """What the last thing that happened came to: its result (None before any), what the bot
    said (rendered), and where the next ``<`` line starts looking in it."""

    result: Result | None = None
    said: str = ""
    cursor: int = 0

    @classmethod
    def of(cls, result: Result, closed: bool = False) -> _Heard:
        return cls(result, "\n".join(rendered(reply, closed) for reply in result.replies))


#: How a reply without a template shows when the window is closed (it is not attempted).
NOT_SENT = "(not sent: outside the window)"


def rendered(reply: Reply, closed: bool = False) -> str:
    """``reply`` as the user would see it: its free-form form, or, when the window is
    ``closed``, its template (or :data:`NOT_SENT` and the free-form form, if it has none)."""
    if not closed:
        return reply.render()
    if reply.template is not None:
        return reply.template.render()
    return f"{NOT_SENT} {reply.render()}"


class Runner:
    """Plays a transcript against ``engine`` as ``user``; ``echo`` shows the conversation;
    ``heard`` is told of each :class:`Proactive` result as it comes."""

    def __init__(
        self,
        engine: Engine | BlockingEngine,
        user: str,
        *,
        clock: FakeClock | None = None,
        directives: Mapping[str, Directive] | None = None,
        echo: Callable[[str], None] | None = None,
        send: Callable[..., Result] | None = None,
        next_id: Callable[[], str] | None = None,
        heard: Callable[[Proactive], object] | None = None,
    ) -> None:
        self.engine = engine
        self.user = user
        self.clock = clock
        self.directives = dict(directives or {})
        self.echo = echo
        self._send = send or (
            lambda user, text, mid, attachment=None: engine.handle(
                user, text, message_id=mid, attachment=attachment
            )
        )
        self._heard = heard
        self._count = 0
        self._run_id = secrets.token_hex(4)
        self._next_id = next_id or self._counted_id
        self._last: tuple[str, str] | None = None  # (text, message id) of the last message
        #: The channel's reply window in seconds (``! window 24h``), None: not played.
        self.window: float | None = None
        self._wrote: dict[str, float] = {}  # user -> when they last wrote (the fake clock)

    def run(self, text: str, *, source: str = "transcript") -> Run:
        run = Run()
        heard = _Heard()  # "<" lines match in order: each one after the previous match
        for line in parse(text):
            where = f"{source}:{line.number}"
            if line.kind == "say":
                self._last = (line.text, self._next_id())
                heard = _Heard.of(self._say(line.text, self._last[1], run))
            elif line.kind == "directive":
                result = self._act(line.text, where, run)
                if result is not None:
                    heard = _Heard.of(result, self._closed(result))
            elif heard.result is None:
                raise TranscriptError(f"{where}: an expectation before any message")
            else:
                run.checks += 1
                _check(line, where, heard, run)
            if self.echo is not None and run.failures and run.failures[-1].startswith(where):
                self.echo(f"  !! {run.failures[-1]}")
        return run

    def _counted_id(self) -> str:
        # Unique across runs too: two chats on one shared store must not dedupe each other.
        self._count += 1
        return f"transcript-{self._run_id}-{self._count}"

    def _say(
        self, text: str, message_id: str, run: Run, attachment: Attachment | None = None
    ) -> Result:
        if self.echo is not None:
            sent = f"[{attachment_kind(attachment)}] " if attachment is not None else ""
            self.echo(f"you> {sent}{text}")
        if self.clock is not None:
            self._wrote[self.user] = self.clock.now()
        if attachment is None:  # the callable a caller gave may not take attachments
            result = self._send(self.user, text, message_id)
        else:
            result = self._send(self.user, text, message_id, attachment)
        run.turns.append((text, result))
        self._show(result)
        return result

    def _closed(self, result: Result) -> bool:
        """Whether the current user's window was closed when the bot said ``result`` on its
        own (at its save's time), with a window played."""
        if self.window is None or self.clock is None:
            return False
        at = result.snapshot.last_updated or self.clock.now()
        wrote = self._wrote.get(self.user)
        return wrote is None or at - wrote >= self.window

    def _show(self, result: Result, closed: bool = False) -> None:
        if self.echo is None:
            return
        for reply in result.replies:
            lines = rendered(reply, closed).splitlines() or [""]
            self.echo("bot> " + "\n     ".join(lines))
        snap = result.snapshot
        extra = " duplicate" if result.duplicate else ""
        self.echo(f"     [{snap.stage}.{snap.step} v{snap.version}{extra}]")

    def _act(self, text: str, where: str, run: Run) -> Result | None:
        """Apply a ``!`` line; the result that ``<`` lines check next, if it makes one."""
        name, _, rest = text.partition(" ")
        if name == "again":
            if self._last is None:
                raise TranscriptError(f"{where}: '! again' before any message")
            result = self._say(self._last[0], self._last[1], run)
            run.checks += 1
            if not result.duplicate:
                run.failures.append(f"{where}: the re-delivery was applied again")
            return result
        if self.echo is not None:
            self.echo(f"     (! {text})")
        try:
            return self._directive(name, rest, run)
        except ValueError as exc:
            raise TranscriptError(f"{where}: {exc}") from None

    def _directive(self, name: str, rest: str, run: Run) -> Result | None:
        args = rest.split()
        if name == "clock":
            if self.clock is None:
                raise ValueError("this run has no fake clock to move")
            if len(args) != 1:
                raise ValueError("use: ! clock +SECONDS (or 30m, 2h, 1d)")
            return self._pass(duration(args[0]), f"! clock +{args[0].lstrip('+')}", run)
        if name == "event":
            event, data, event_id = event_arguments(rest)
            result = self.engine.notify(
                self.user, event, data=data, event_id=event_id or self._next_id()
            )
            self._tell(Proactive(self.user, f"! event {event}", result), run)
            self._show(result, self._closed(result))
            if result.ignored and self.echo is not None:
                self.echo(f"     (not applied: {result.ignored})")
            return result
        if name == "user":
            if len(args) != 1:
                raise ValueError("use: ! user USER_KEY")
            self.user = args[0]
        elif name == "window":
            self.window = self._window(args)
        elif name == "send":
            said, sent = attachment(rest, self._media())
            self._last = (said, self._next_id())
            return self._say(said, self._last[1], run, sent)
        elif name in self.directives:
            self.directives[name](args)
        else:
            known = ", ".join(
                sorted({"again", "clock", "event", "send", "user", "window", *self.directives})
            )
            raise ValueError(f"unknown directive {name!r} (known: {known})")
        return None

    def _media(self) -> MemoryMedia:
        """Where ``! send`` keeps its files: the engine's media channel (a MemoryMedia, given
        to an engine that had none)."""
        media = media_of(self.engine)
        if not isinstance(media, MemoryMedia):
            raise ValueError("! send keeps files in a MemoryMedia: this engine has another")
        return media

    def _window(self, args: list[str]) -> float | None:
        if len(args) != 1:
            raise ValueError("use: ! window 24h (or off)")
        if args[0] == "off":
            return None
        if self.clock is None:
            raise ValueError("this run has no fake clock: a window needs one")
        seconds = duration(args[0])
        if seconds <= 0:
            raise ValueError("a window is longer than 0 seconds")
        return seconds

    def _pass(self, seconds: float, cause: str, run: Run) -> Result:
        """Let ``seconds`` pass, timers firing on the way; what they said to the current
        user, at the state the conversation is in now."""
        assert self.clock is not None
        mine: list[Result] = []
        fired = pass_time(self.engine, self.clock, seconds)
        for user, result in fired:
            self._tell(Proactive(user, cause, result), run)
            if user == self.user:
                mine.append(result)
        stored = self.engine.peek(self.user)
        now = stored or (mine[-1].snapshot if mine else blank(self.engine))
        result = combined(mine, now)
        if mine:
            self._show(result, self._closed(result))
        others = len(fired) - len(mine)
        if others and self.echo is not None:  # who they were is theirs: not shown
            self.echo(f"     ({others} timer{'s' * (others != 1)} fired for other users)")
        return result

    def _tell(self, proactive: Proactive, run: Run) -> None:
        run.proactive.append(proactive)
        if self._heard is not None:
            self._heard(proactive)


def _check(line: Line, where: str, heard: _Heard, run: Run) -> None:
    """Check one ``<``, ``<!`` or ``=`` line against what was heard last."""
    said = heard.said
    if line.kind == "expect":
        found = said.find(line.text, heard.cursor)
        if found < 0:
            later = " after the previous expectation" if heard.cursor else ""
            run.failures.append(f"{where}: expected {line.text!r}{later} in:\n{_quote(said)}")
        else:
            heard.cursor = found + len(line.text)
    elif line.kind == "refuse":
        if line.text in said:
            run.failures.append(f"{where}: did not expect {line.text!r} in:\n{_quote(said)}")
    else:  # state
        assert heard.result is not None
        snap = heard.result.snapshot
        at = f"{snap.stage}.{snap.step}" if "." in line.text else snap.stage
        if at != line.text:
            run.failures.append(f"{where}: expected to be at {line.text}, at {at}")


def _quote(said: str) -> str:
    return "\n".join(f"    | {line}" for line in (said or "(no reply)").splitlines())
