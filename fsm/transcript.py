"""Transcripts: whole conversations written as text, run against an engine and checked.

One line per thing that happens::

    # A comment. Blank lines are ignored.
    > hi                      the user says "hi" (a line without a prefix says it too)
    < Welcome Alice           the bot's replies to that message contain this text...
    < 1. Offer credex         ...and then this, further on (fragments match in order)
    <! coming soon            ...and never this
    = menu.dashboard          the conversation is now at stage "menu", step "dashboard"
    = menu                    (or just at stage "menu")
    ! clock +2h               move the fake clock (s, m, h or d; plain numbers are seconds)
    ! user 263770000002       talk as another user from here on
    ! again                   deliver the last message again, with the same message id
    ! api fail createCredex 503    a directive the caller supplies (here: the Credex bot's)

The same file is a test (:func:`fsm.testing.Conversation.run_file`) and a demo
(``fsm chat --script FILE`` prints the conversation and checks it). Expectations are checked
against the rendered replies (:meth:`fsm.reply.Reply.render`), so numbered options count.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fsm.clock import FakeClock

if TYPE_CHECKING:
    from fsm.blocking import BlockingEngine
    from fsm.engine import Engine, Result

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


@dataclass
class Run:
    """What running a transcript did: every turn, how many expectations it checked (``<``,
    ``<!``, ``=`` lines and ``! again``), and every one that failed."""

    failures: list[str] = field(default_factory=list)
    turns: list[tuple[str, Result]] = field(default_factory=list)
    checks: int = 0

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


def move_clock(engine: object, clock: FakeClock, seconds: float) -> None:
    """Move ``clock`` by ``seconds``, the clock ``engine`` runs on: every session it judges
    (its expiry, its tokens' expiry) moves with it, on every store. A clock the engine does
    not run on would move nothing: that is an error, not a silent no-op."""
    runs_on = getattr(engine, "clock", None)
    if runs_on is not clock:
        raise ValueError(
            f"the engine runs on another clock ({type(runs_on).__name__}, or says none): "
            "moving this "
            "FakeClock would change nothing; build the engine with clock= this FakeClock"
        )
    clock.advance(seconds)


class Runner:
    """Plays a transcript against ``engine`` as ``user``; ``echo`` shows the conversation."""

    def __init__(
        self,
        engine: Engine | BlockingEngine,
        user: str,
        *,
        clock: FakeClock | None = None,
        directives: Mapping[str, Directive] | None = None,
        echo: Callable[[str], None] | None = None,
        send: Callable[[str, str, str], Result] | None = None,
        next_id: Callable[[], str] | None = None,
    ) -> None:
        self.engine = engine
        self.user = user
        self.clock = clock
        self.directives = dict(directives or {})
        self.echo = echo
        self._send = send or (lambda user, text, mid: engine.handle(user, text, message_id=mid))
        self._count = 0
        self._run_id = secrets.token_hex(4)
        self._next_id = next_id or self._counted_id
        self._last: tuple[str, str] | None = None  # (text, message id) of the last message

    def run(self, text: str, *, source: str = "transcript") -> Run:
        run = Run()
        said = ""
        cursor = 0  # "<" lines match in order: each one after the previous match
        result: Result | None = None
        for line in parse(text):
            where = f"{source}:{line.number}"
            if line.kind in ("expect", "refuse", "state"):
                run.checks += 1
            if line.kind == "say":
                self._last = (line.text, self._next_id())
                result = self._say(line.text, self._last[1], run)
                said, cursor = _rendered(result), 0
            elif line.kind == "directive":
                name, *args = line.text.split()
                if name == "again":
                    if self._last is None:
                        raise TranscriptError(f"{where}: '! again' before any message")
                    result = self._say(self._last[0], self._last[1], run)
                    said, cursor = _rendered(result), 0
                    run.checks += 1
                    if not result.duplicate:
                        run.failures.append(f"{where}: the re-delivery was applied again")
                else:
                    self._directive(name, args, where)
            elif result is None:
                raise TranscriptError(f"{where}: an expectation before any message")
            elif line.kind == "expect":
                found = said.find(line.text, cursor)
                if found < 0:
                    later = " after the previous expectation" if cursor else ""
                    run.failures.append(
                        f"{where}: expected {line.text!r}{later} in:\n{_quote(said)}"
                    )
                else:
                    cursor = found + len(line.text)
            elif line.kind == "refuse":
                if line.text in said:
                    run.failures.append(
                        f"{where}: did not expect {line.text!r} in:\n{_quote(said)}"
                    )
            else:  # state
                snap = result.snapshot
                at = f"{snap.stage}.{snap.step}" if "." in line.text else snap.stage
                if at != line.text:
                    run.failures.append(f"{where}: expected to be at {line.text}, at {at}")
            if self.echo is not None and run.failures and run.failures[-1].startswith(where):
                self.echo(f"  !! {run.failures[-1]}")
        return run

    def _counted_id(self) -> str:
        # Unique across runs too: two chats on one shared store must not dedupe each other.
        self._count += 1
        return f"transcript-{self._run_id}-{self._count}"

    def _say(self, text: str, message_id: str, run: Run) -> Result:
        if self.echo is not None:
            self.echo(f"you> {text}")
        result = self._send(self.user, text, message_id)
        run.turns.append((text, result))
        if self.echo is not None:
            for reply in result.replies:
                lines = reply.render().splitlines() or [""]
                self.echo("bot> " + "\n     ".join(lines))
            snap = result.snapshot
            extra = " duplicate" if result.duplicate else ""
            self.echo(f"     [{snap.stage}.{snap.step} v{snap.version}{extra}]")
        return result

    def _directive(self, name: str, args: list[str], where: str) -> None:
        try:
            if name == "clock":
                if self.clock is None:
                    raise ValueError("this run has no fake clock to move")
                if len(args) != 1:
                    raise ValueError("use: ! clock +SECONDS (or 30m, 2h, 1d)")
                move_clock(self.engine, self.clock, duration(args[0]))
            elif name == "user":
                if len(args) != 1:
                    raise ValueError("use: ! user USER_KEY")
                self.user = args[0]
            elif name in self.directives:
                self.directives[name](args)
            else:
                known = ", ".join(sorted({"again", "clock", "user", *self.directives}))
                raise ValueError(f"unknown directive {name!r} (known: {known})")
        except ValueError as exc:
            raise TranscriptError(f"{where}: {exc}") from None
        if self.echo is not None:
            self.echo(f"     (! {' '.join([name, *args])})")


def _rendered(result: Result) -> str:
    return "\n".join(reply.render() for reply in result.replies)


def _quote(said: str) -> str:
    return "\n".join(f"    | {line}" for line in (said or "(no reply)").splitlines())
