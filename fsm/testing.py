"""A conversation testing kit for people who declare flows.

>>> from fsm.testing import Conversation
>>> chat = Conversation(engine, "263770000001", clock=clock)      # doctest: +SKIP
>>> chat.say("hi").expect("Welcome Alice", stage="menu")          # doctest: +SKIP
>>> chat.advance("10m").expect("Still there?")                    # doctest: +SKIP
>>> chat.notify("offer_received", {"amount": 5}).expect("offered you 5")  # doctest: +SKIP
>>> first, again = chat.twice("yes")                              # doctest: +SKIP
>>> chat.run('''
... > 1
... < How much
... = credex.amount
... ''')                                                          # doctest: +SKIP

>>> with Conversation(engine, clock=clock) as chat:                # doctest: +SKIP
...     chat.say("hi")                                            # the store closed at the end

Every message gets a fresh message id (as a transport would give it), so re-delivery
(:meth:`Conversation.twice`) and races (:meth:`Conversation.concurrently`) are real: they go
through the engine's dedupe, locking and compare-and-set like production traffic. Time
passes with a ticker running (:meth:`Conversation.advance`): each timer fires at its due time,
on every store, and nothing sleeps.
Expectations raise ``AssertionError`` that quotes what the bot said. Every reply is checked
against WhatsApp's limits: one that cannot be sent fails the test; a title or description
WhatsApp would show cut short is listed in :attr:`Turn.trimmed` and warned about
(:class:`Trimmed`). See ``docs/testing.md``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from fsm.async_engine import AsyncEngine
from fsm.attachments import Attachment, MediaKind
from fsm.blocking import BlockingEngine, blocking, run
from fsm.clock import FakeClock
from fsm.engine import Engine, Result
from fsm.fake_ticker import blank, combined, pass_time
from fsm.memory_media import MemoryMedia, media_of
from fsm.reply import Reply, check_whatsapp
from fsm.snapshot import Snapshot
from fsm.transcript import Directive, Proactive, Run, Runner, contains_in_order, duration

__all__ = ["ABSENT", "Conversation", "Proactive", "Trimmed", "Turn"]


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


#: ``expect(data={"amount": ABSENT})``: the key must not be in the snapshot's data (deleted).
ABSENT: Any = _Absent()


class Trimmed(UserWarning):
    """A reply WhatsApp would show with a title or description cut short (the conversation
    goes on: the step still sees whole titles). ``-W error::fsm.testing.Trimmed`` makes it
    fail a test run; ``-W ignore::fsm.testing.Trimmed`` hides it."""


class Turn:
    """One message and what came back; ``expect`` checks it and returns it for chaining.
    Also what the bot said on its own: ``text`` is then what made it speak (``"! clock
    +10m"``, ``"! event ping"``), as a transcript writes it.

    ``trimmed`` lists what the check (by default WhatsApp's limits) said would be cut short
    in these replies, one line each: empty when everything fits.
    """

    def __init__(self, text: str, result: Result, trimmed: Iterable[str] = ()) -> None:
        self.text = text
        self.result = result
        self.trimmed: list[str] = list(trimmed)

    @property
    def texts(self) -> list[str]:
        return self.result.texts

    @property
    def said(self) -> str:
        """Every reply rendered as the terminal shows it, one after another."""
        return "\n".join(self.result.texts)

    @property
    def snapshot(self) -> Snapshot:
        return self.result.snapshot

    @property
    def stage(self) -> str:
        return self.result.snapshot.stage

    @property
    def step(self) -> str:
        return self.result.snapshot.step

    def expect(
        self,
        *fragments: str,
        stage: str | None = None,
        step: str | None = None,
        data: Mapping[str, Any] | None = None,
        absent: tuple[str, ...] = (),
    ) -> Turn:
        """The replies contain ``fragments`` in this order (and none of ``absent``); the
        conversation is at ``stage``/``step``; ``data`` holds these items (others may exist;
        a value of :data:`ABSENT` means the key must not be there)."""
        problems: list[str] = []
        missing = contains_in_order(self.said, fragments)
        if missing is not None:
            problems.append(f"expected {missing!r} in the replies")
        problems += [
            f"did not expect {text!r} in the replies" for text in absent if text in self.said
        ]
        if stage is not None and self.stage != stage:
            problems.append(f"expected stage {stage!r}, at {self.stage!r}")
        if step is not None and self.step != step:
            problems.append(f"expected step {step!r}, at {self.step!r}")
        for key, value in (data or {}).items():
            got = self.snapshot.data.get(key, ABSENT)
            if got != value:
                want = "to be absent" if value is ABSENT else f"== {value!r}"
                problems.append(f"expected data[{key!r}] {want}, got {got!r}")
        if problems:
            raise AssertionError(self._report(problems))
        return self

    def _report(self, problems: list[str]) -> str:
        quoted = "\n".join(f"    | {line}" for line in (self.said or "(no reply)").splitlines())
        at = f"{self.stage}.{self.step} v{self.snapshot.version}"
        return (
            f"after {self.text!r} ({at}):\n  " + "\n  ".join(problems) + f"\n  bot said:\n{quoted}"
        )

    def __repr__(self) -> str:
        return f"Turn({self.text!r} -> {self.stage}.{self.step}, {len(self.texts)} replies)"


class Conversation:
    """One user talking to ``engine``. Pass the :class:`FakeClock` the engine (and any fake
    API) runs on to move time with :meth:`advance`; ``directives`` add transcript commands to
    those the flow provides (:meth:`fsm.Flow.transcript_directives`)."""

    def __init__(
        self,
        engine: Engine | AsyncEngine | BlockingEngine,
        user: str = "user-1",
        *,
        clock: FakeClock | None = None,
        directives: Mapping[str, Directive] | None = None,
        check: Callable[[Reply], Iterable[str] | None] | None = check_whatsapp,
    ) -> None:
        #: The engine's media channel: :meth:`send` puts files in it (a
        #: :class:`~fsm.memory_media.MemoryMedia` unless the engine came with its own).
        self.media = media_of(engine)
        # An AsyncEngine runs on a background event loop; threads (concurrently) are then
        # concurrent tasks on it.
        self.engine = blocking(engine)
        self.user = user
        if clock is None and isinstance(engine.clock, FakeClock):
            clock = engine.clock  # the usual case: move the clock the engine runs on
        self.clock = clock
        self.directives = {**self.engine.flow.transcript_directives(), **(directives or {})}
        #: Run on every reply the bot sends (default: WhatsApp's limits, so a flow that would
        #: be refused by the Graph API fails its own tests); None checks nothing. What it
        #: returns (what would be cut short) goes to :attr:`Turn.trimmed`, with a
        #: :class:`Trimmed` warning.
        self.check = check
        #: One per message, and one per result the bot sent on its own (a timer that fired,
        #: an event), in order.
        self.turns: list[Turn] = []
        #: What the bot said on its own (:class:`Proactive`), for every user, in order: the
        #: timers that fired as the clock moved (other users' too) and the events applied.
        #: ``[p.result for p in chat.proactive if p.user == "u2"]``: what came to ``u2``.
        self.proactive: list[Proactive] = []
        self._ids = 0
        self._id_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Close the engine's store (its connections); the engine is unusable afterwards, for
        every conversation on it. An async store (an :class:`~fsm.AsyncEngine`'s) is closed on
        the kit's own event loop, where its connections were opened: ``asyncio.run(
        store.aclose())`` would meet them "attached to a different loop". Closing twice does
        nothing more. ``with Conversation(...) as chat:`` closes it at the end of the block."""
        if self._closed:
            return
        self._closed = True
        if isinstance(self.engine, BlockingEngine):
            run(self.engine.engine.store.aclose())
        else:
            self.engine.store.close()

    def __enter__(self) -> Conversation:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def next_message_id(self) -> str:
        return self._next_id("msg")

    def _next_id(self, kind: str) -> str:
        with self._id_lock:
            self._ids += 1
            return f"{self.user}-{kind}-{self._ids}"

    def say(
        self,
        text: str,
        *,
        message_id: str | None = None,
        pressed: str | None = None,
        attachment: Attachment | None = None,
    ) -> Turn:
        """Send ``text`` as a new message (or with ``message_id`` to re-deliver one); with
        ``pressed``, as a tap on the option with that id (see :meth:`press`); with
        ``attachment``, as a file, a place, a reaction or contacts (see :meth:`send`)."""
        if message_id is None:
            message_id = self.next_message_id()
        result = self.engine.handle(
            self.user, text, message_id=message_id, pressed=pressed, attachment=attachment
        )
        turn = Turn(text, result, self._checked(result))
        self.turns.append(turn)
        return turn

    def send(
        self,
        data: bytes,
        mime_type: str,
        *,
        caption: str = "",
        filename: str = "",
        kind: MediaKind | None = None,
    ) -> Turn:
        """Send a file as the user would (an image, a document...: its kind from the mime
        type unless given): it is kept in :attr:`media`, so a step can download it.
        ``chat.send(png, "image/png", caption="my receipt").expect("Got it")``."""
        if not isinstance(self.media, MemoryMedia):
            raise RuntimeError("send() keeps files in a MemoryMedia: the engine has another")
        sent = self.media.add(data, mime_type, kind=kind, caption=caption, filename=filename)
        return self.say(caption, attachment=sent)

    def press(self, option_id: str, *, message_id: str | None = None) -> Turn:
        """Tap the option ``option_id`` of a button or list reply, as WhatsApp delivers it:
        the step reads the id as ``ctx.text`` and as ``ctx.pressed``."""
        return self.say(option_id, message_id=message_id, pressed=option_id)

    def _checked(self, result: Result) -> list[str]:
        """Run the check on every reply: what would be trimmed, also warned about."""
        if self.check is None:
            return []
        cut = [note for reply in result.replies for note in self.check(reply) or ()]
        for note in cut:
            warnings.warn(f"on WhatsApp, {note}", Trimmed, stacklevel=3)
        return cut

    def twice(self, text: str) -> tuple[Turn, Turn]:
        """Deliver one message twice in a row, as a webhook retry would."""
        message_id = self.next_message_id()
        return self.say(text, message_id=message_id), self.say(text, message_id=message_id)

    def concurrently(self, text: str, *, workers: int = 4, same_message: bool = True) -> list[Turn]:
        """Deliver ``text`` from ``workers`` threads at once: the same message re-delivered
        (``same_message``) or as that many separate taps. Threads start together (a barrier)."""
        if workers < 2:
            raise ValueError("workers must be >= 2")
        shared = self.next_message_id()
        ids = [shared if same_message else self.next_message_id() for _ in range(workers)]
        start = threading.Barrier(workers)

        def deliver(message_id: str) -> Result:
            start.wait()
            return self.engine.handle(self.user, text, message_id=message_id)

        with ThreadPoolExecutor(workers) as pool:
            turns = [Turn(text, r, self._checked(r)) for r in pool.map(deliver, ids)]
        self.turns.extend(turns)
        return turns

    def advance(self, seconds: float | str) -> Turn:
        """Let time pass (``90``, ``"30m"``, ``"2h"``, ``"1d"``) with a ticker running: the
        fake clock stops at each timer's due time on the way and fires what is due
        (:func:`fsm.fake_ticker.pass_time`), for every user. Returns a :class:`Turn` over what
        the firings said to this conversation's user, one after another (none: no replies),
        at the state the conversation is in now: ``chat.advance("10m").expect("Still
        there?", step="confirm")``. Every user's firings are in :attr:`proactive`.
        ``advance(0)`` fires what is due now: after ``chat.clock.advance(...)``, which moves
        the clock alone (tickers that were down), it fires what they would find."""
        if self.clock is None:
            raise RuntimeError("pass clock=FakeClock(...) (the engine's clock) to move time")
        moved = duration(seconds) if isinstance(seconds, str) else float(seconds)
        try:
            fired = pass_time(self.engine, self.clock, moved)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
        told = seconds.strip().lstrip("+") if isinstance(seconds, str) else f"{moved:g}"
        cause = f"! clock +{told}"
        mine: list[Result] = []
        trimmed: list[str] = []
        for user, result in fired:
            turn = self._heard(Proactive(user, cause, result))
            if user == self.user:
                mine.append(result)
                trimmed += turn.trimmed
        now = self.snapshot or (mine[-1].snapshot if mine else blank(self.engine))
        return Turn(cause, combined(mine, now), trimmed)

    def notify(
        self, event: str, data: dict[str, Any] | None = None, *, event_id: str | None = None
    ) -> Turn:
        """Apply the external event ``event`` (with ``data``) to this user's conversation, as
        :meth:`fsm.Engine.notify` does, under a fresh event id (or ``event_id``, to deliver
        one again: ``turn.result.duplicate``). The turn's ``result.ignored`` says why an
        event did not apply."""
        if event_id is None:
            event_id = self._next_id("event")
        result = self.engine.notify(self.user, event, data=data, event_id=event_id)
        return self._heard(Proactive(self.user, f"! event {event}", result))

    def _heard(self, proactive: Proactive) -> Turn:
        """Keep what the bot said on its own, checked, as a turn."""
        self.proactive.append(proactive)
        turn = Turn(proactive.cause, proactive.result, self._checked(proactive.result))
        self.turns.append(turn)
        return turn

    @property
    def snapshot(self) -> Snapshot | None:
        """What is stored for this user now."""
        return self.engine.peek(self.user)

    def run(self, transcript: str, *, source: str = "transcript") -> Run:
        """Play a transcript (see :mod:`fsm.transcript`) and return what happened; raise
        AssertionError listing every expectation that failed."""
        runner = Runner(
            self.engine,
            self.user,
            clock=self.clock,
            directives=self.directives,
            send=self._send,
            next_id=self.next_message_id,
            heard=self._heard,
        )
        try:
            outcome = runner.run(transcript, source=source)
        finally:
            self.user = runner.user  # a "! user" line switches this conversation's user too
        if not outcome.ok:
            raise AssertionError("\n".join(outcome.failures))
        return outcome

    def run_file(self, path: str | Path) -> Run:
        path = Path(path)
        return self.run(path.read_text(encoding="utf-8"), source=path.name)

    def _send(
        self, user: str, text: str, message_id: str, attachment: Attachment | None = None
    ) -> Result:
        result = self.engine.handle(user, text, message_id=message_id, attachment=attachment)
        self.turns.append(Turn(text, result, self._checked(result)))
        return result
