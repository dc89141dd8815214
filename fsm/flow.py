"""Declaring a flow: stages, the transitions between them, and a handler per step.

A flow is a class that reads like its diagram::

    class Survey(Flow):
        name = "survey"
        initial = "intro"
        stages = (
            Stage("intro", steps=("hello",)),
            Stage("questions", steps=("age", "colour")),
        )
        transitions = (
            # trigger   source     dest
            ("begin",  "intro",   "questions"),
            ("restart", "questions", "intro"),
        )

        @step("intro", "hello")
        def hello(self, ctx: Context) -> Outcome:
            return ctx.go("begin", "How old are you?")
        ...

The declaration is data. It is checked when the class is created, so a broken flow fails at
import time with :class:`~fsm.errors.InvalidFlowDefinition` naming the problem: an unknown stage,
a stage no transition reaches, a step without a handler (or a handler without a step), a
duplicate trigger, a protected stage the auth stage cannot reach or be reached from. The class
also builds the one :class:`~fsm.machine.StageMachine` the engine uses for every user.

A stage is entered at its first step. "Stay" (any step change inside a stage) is always allowed;
moving between stages needs an event declared in ``transitions``.
"""

from __future__ import annotations

import inspect
import keyword
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from fsm.attachments import check_accepts
from fsm.errors import InvalidFlowDefinition
from fsm.machine import StageMachine
from fsm.media import MediaError
from fsm.snapshot import NEWER_FLOW_WINDOW, Snapshot
from fsm.templates import TemplateSpec, spec_problems
from fsm.timers import EventSpec, TimerSpec, collect

F = TypeVar("F", bound=Callable[..., Any])

#: A migration takes a snapshot written by flow version N and returns it as version N+1 wants
#: it (steps renamed or removed, data reshaped). Pure: no I/O, no clock.
Migration = Callable[[Snapshot], Snapshot]

# Names ``transitions`` puts on a model; a trigger called like one would clobber it.
_RESERVED = frozenset({"state", "trigger", "move", "may_land", "token_preserved", "machine"})


def folded(text: str) -> str:
    """``text`` as exit words are compared: trimmed, one space between words, case-folded."""
    return " ".join(text.split()).casefold()


#: What the user is told, by default, when a step fails unexpectedly (:attr:`Flow.failure_reply`).
FAILURE_REPLY = "Sorry, something went wrong on our side. Please try again in a moment."
#: ... and when an action failed on I/O and a re-delivery will finish it (:attr:`Flow.delay_reply`).
DELAY_REPLY = "Sorry, this is taking longer than it should. I will answer as soon as it is done."
#: What a step that accepts no attachment answers one with (``Flow.unsupported_reply``).
UNSUPPORTED_REPLY = "Sorry, I can only read text and button answers."

#: What a user types to leave a sub-flow (compared trimmed and case-folded).
EXIT_WORDS = frozenset({"cancel", "stop", "back", "menu", "exit", "quit", "/cancel", "/menu"})

#: A text an :class:`Exit` says or asks: a string, or a function of the step's context (the
#: same stage may say "Offer cancelled." or "Upgrade cancelled." depending on ``ctx.option``).
Said = str | Callable[[Any], str]


@dataclass(frozen=True, slots=True)
class Exit:
    """A stage's declared way out, applied by the engine before the step's handler runs, so
    no step checks for "cancel" itself.

    ``to`` is a trigger declared from the stage (``"show_menu"``) or a step of the stage
    (``"welcome"``: back to its start). ``say`` is the reply on leaving; ``unset`` names the
    data the sub-flow leaves behind, deleted so a cancelled request cannot come back.

    - A pressed option whose id is in ``ids`` (a WhatsApp button or list row) leaves at once.
    - A typed word in ``words`` leaves at once at a step that expects a choice or an amount.
    - At a *free-text* step (``@step(..., free_text=True)``: a name, a handle) the word may be
      the answer, so the engine asks ``ask`` with Yes / No buttons instead of guessing: *Yes*
      (or the exit word again) leaves, *No* takes the word as the step's answer, anything
      else is taken as the answer in its place. A slash command (``/cancel``) is never an
      answer: it leaves at once there too.

    An exit does not apply at its own target step (there is nothing to leave).
    """

    to: str
    say: Said = ""
    ask: Said = "Stop here?"
    unset: tuple[str, ...] = ()
    words: frozenset[str] = EXIT_WORDS
    ids: frozenset[str] = frozenset({"cancel"})

    def __init__(
        self,
        to: str,
        *,
        say: Said = "",
        ask: Said = "Stop here?",
        unset: Iterable[str] = (),
        words: Iterable[str] = EXIT_WORDS,
        ids: Iterable[str] = ("cancel",),
    ) -> None:
        for name, value in (("unset", unset), ("words", words), ("ids", ids)):
            if isinstance(value, str):
                raise TypeError(
                    f"Exit({name}=...) takes a list of strings, not the string {value!r}"
                )
        object.__setattr__(self, "to", to)
        object.__setattr__(self, "say", say)
        object.__setattr__(self, "ask", ask)
        object.__setattr__(self, "unset", tuple(unset))
        object.__setattr__(self, "words", frozenset(folded(w) for w in words))
        object.__setattr__(self, "ids", frozenset(ids))


@dataclass(frozen=True, slots=True)
class Stage:
    """A stage of the conversation. It is entered at ``steps[0]``.

    ``protected`` stages need a verified, unexpired token; with an expired one the engine sends
    the user to the flow's ``auth_stage`` and brings them back after login. ``exit`` is the
    stage's declared way out (:class:`Exit`), if it has one.
    """

    name: str
    steps: tuple[str, ...]
    protected: bool = False
    exit: Exit | None = None

    def __init__(
        self,
        name: str,
        steps: Iterable[str],
        *,
        protected: bool = False,
        exit: Exit | None = None,
    ) -> None:
        if isinstance(steps, str):
            raise InvalidFlowDefinition(
                name,
                f"stage {name!r} was given the string {steps!r} as its steps, which would be "
                f"one step per letter: write a tuple, ({steps!r},)",
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "steps", tuple(steps))
        object.__setattr__(self, "protected", protected)
        object.__setattr__(self, "exit", exit)

    @property
    def entry(self) -> str:
        return self.steps[0]


@dataclass(frozen=True, slots=True)
class StepSpec:
    """A step: the names of the flow methods that handle input and render its prompt.

    Methods are looked up by name on the flow instance, so a subclass that overrides one
    changes the behaviour as Python readers expect.
    """

    stage: str
    step: str
    handler: str
    side_effects: bool
    enter: str | None
    action: bool = False
    #: The step takes free text (a name, a handle), so an exit word there may be the answer:
    #: the engine asks before leaving (:class:`Exit`).
    free_text: bool = False
    #: The kinds of attachment the step takes besides text (:mod:`fsm.attachments`): another
    #: kind gets the step's prompt again; none declared: the flow's ``unsupported_reply``.
    accepts: frozenset[str] = frozenset()


def step(
    stage: str,
    step_id: str,
    *,
    side_effects: bool = False,
    blocking: bool = True,
    free_text: bool = False,
    accepts: Iterable[str] = (),
) -> Callable[[F], F]:
    """Mark a method as the handler of ``stage.step_id``.

    ``free_text=True`` says the step takes any text (a name, a handle), so a word like
    "cancel" may be its answer: the stage's :class:`Exit` then asks before leaving.

    ``accepts={"image", "document"}`` says the step takes these kinds of attachment besides
    text (:data:`fsm.attachments.ATTACHMENT_KINDS`: the handler reads ``ctx.media``,
    ``ctx.location``...). A message of another kind gets the step's prompt again; at a step
    that accepts none, the flow's ``unsupported_reply`` answers it (a reaction: nothing).

    ``side_effects=True`` (the handler calls an API that creates or changes something) makes the
    engine run it under the user's lease lock, so two workers never run it at once.

    The handler may be ``async def`` (then only :class:`fsm.AsyncEngine` runs the flow). On
    :class:`~fsm.AsyncEngine` a plain ``def`` handler runs in a worker thread, so blocking I/O
    in it never stalls the event loop; ``blocking=False`` says it does none (it only reads
    ``ctx`` and computes), and it then runs on the loop itself, saving the thread hop.
    """

    kinds = check_accepts(accepts, f"@step({stage!r}, {step_id!r})")

    def mark(fn: F) -> F:
        fn.__dict__.setdefault("_fsm_steps", []).append((stage, step_id, side_effects))
        if free_text:
            fn.__dict__.setdefault("_fsm_free_text", set()).add((stage, step_id))
        if kinds:
            fn.__dict__.setdefault("_fsm_accepts", {})[(stage, step_id)] = kinds
        _mark_blocking(fn, blocking)
        return fn

    return mark


def action(stage: str, step_id: str, *, blocking: bool = True) -> Callable[[F], F]:
    """Mark a method as the *action* of ``stage.step_id``: a step that takes no user input and
    performs an external change (an API call that creates or changes something).

    Another step moves the user to an action step with an ordinary outcome. The engine first
    saves that state, so the pending action is on record, then takes the user's lease lock,
    reloads, and runs the action once; its outcome (which must leave the action step) is saved
    by compare-and-set like any other. If a worker dies in between, the next message for that
    user (or a re-delivery of the same one) finishes the pending action first.
    ``ctx.idempotency_key`` is the same for every attempt at one pending action: pass it to the
    API so a retried call is applied once. When the call failed in a way that may still have
    been applied (a timeout, a 5xx, a dropped connection), return
    :meth:`ctx.retry_later(..., step=...) <fsm.step.Context.retry_later>`: the user goes back
    to that step and their next attempt at the same request reuses the key. An ordinary
    outcome (a definite refusal), changed data or leaving the stage starts a new request with
    a new key. ``async def`` and ``blocking`` as for :func:`step`.
    """

    def mark(fn: F) -> F:
        fn.__dict__.setdefault("_fsm_steps", []).append((stage, step_id, "action"))
        _mark_blocking(fn, blocking)
        return fn

    return mark


def on_enter(stage: str, step_id: str, *, blocking: bool = True) -> Callable[[F], F]:
    """Mark a method that renders the prompt of ``stage.step_id`` when the user arrives there
    (by an event, a resume or a step change). It returns replies and changes nothing.
    ``async def`` and ``blocking`` as for :func:`step`."""

    def mark(fn: F) -> F:
        fn.__dict__.setdefault("_fsm_enter", []).append((stage, step_id))
        _mark_blocking(fn, blocking)
        return fn

    return mark


def _mark_blocking(fn: Any, blocking: bool) -> None:
    if not blocking:
        fn.__dict__["_fsm_inline"] = True


def call_mode(method: Any, *, blocking: bool = True) -> str:
    """How an engine calls a flow method: ``"async"`` (``async def``: awaited on the loop),
    ``"inline"`` (marked ``blocking=False``, or of a flow whose ``blocking`` is False: called
    on the loop) or ``"thread"`` (a plain ``def``: :class:`~fsm.AsyncEngine` runs it in a
    worker thread). The sync engine calls every non-async method directly."""
    fn = getattr(method, "__func__", method)
    if inspect.iscoroutinefunction(fn):
        return "async"
    return "inline" if fn.__dict__.get("_fsm_inline") or not blocking else "thread"


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """The checked declaration; the engine, the graph export and the docs all read it."""

    name: str
    version: int
    initial: str
    safe_stage: str
    auth_stage: str | None
    stages: Mapping[str, Stage]
    transitions: tuple[tuple[str, str, str], ...]
    steps: Mapping[tuple[str, str], StepSpec]
    machine: StageMachine
    migrations: Mapping[int, Migration] = field(default_factory=dict)
    #: Whether a new (or expired) conversation's first message is applied to the initial
    #: step (a greeting step reads it), rather than answered with that step's prompt.
    takes_first_message: bool = False
    #: What the user is told when a step, a prompt or an action fails unexpectedly (the
    #: flow's bug, or an API answering nonsense): nothing was saved, the user can try again.
    failure_reply: str = ""
    #: What the user is told when an action failed on I/O (:attr:`transient_errors`) after
    #: their message was saved: a re-delivery of the message finishes it, same key.
    delay_reply: str = ""
    #: What a step that accepts no attachment answers one with.
    unsupported_reply: str = UNSUPPORTED_REPLY
    #: Exceptions that mean "the outside world did not answer" (a timeout, a dropped
    #: connection), looked for along a failure's ``__cause__`` / ``__context__`` chain.
    transient_errors: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError)
    #: Data keys that hold the user's personal data (an address, a drug name): every display
    #: path (``fsm inspect``, ``fsm ls``, history, the simulator's panel, logs, errors) hides
    #: their values, as it hides tokens. Backups keep them.
    sensitive: frozenset[str] = frozenset()
    #: The declared timers (:func:`fsm.timeout`), by (stage, step, name).
    timers: Mapping[tuple[str, str, str], TimerSpec] = field(default_factory=dict)
    #: The declared event handlers (:func:`fsm.on_event`), by (event, stage or None).
    events: Mapping[tuple[str, str | None], EventSpec] = field(default_factory=dict)
    #: How long a conversation lasts after its last save, unless the engine is told otherwise.
    session_ttl: float = 30 * 60
    #: The message templates the flow uses (``Flow.templates``), by (name, language).
    templates: Mapping[tuple[str, str], TemplateSpec] = field(default_factory=dict)

    def timers_at(self, stage: str, step: str) -> list[TimerSpec]:
        """The timers declared at ``stage.step``."""
        return [t for (s, p, _), t in self.timers.items() if (s, p) == (stage, step)]

    def event_handler(self, event: str, stage: str) -> EventSpec | None:
        """The handler of ``event`` in ``stage``: the stage's own, else the flow-wide one."""
        return self.events.get((event, stage)) or self.events.get((event, None))

    def path(self, source: str, dest: str) -> tuple[tuple[str, str], ...] | None:
        """Shortest sequence of ``(event, stage reached)`` from ``source`` to ``dest``."""
        if source == dest:
            return ()
        seen = {source}
        queue: deque[tuple[str, tuple[tuple[str, str], ...]]] = deque([(source, ())])
        while queue:
            stage, route = queue.popleft()
            for trigger, src, dst in self.transitions:
                if src != stage or dst in seen:
                    continue
                hop = (*route, (trigger, dst))
                if dst == dest:
                    return hop
                seen.add(dst)
                queue.append((dst, hop))
        return None

    def is_protected(self, stage: str) -> bool:
        return self.stages[stage].protected

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` (a :class:`~fsm.errors.StepFailed`, say) was caused by I/O: one of
        :attr:`transient_errors` along its ``__cause__`` / ``__context__`` chain (a context
        hidden by ``raise ... from None`` is not followed: that code said it does not count)."""
        seen: set[int] = set()
        link: BaseException | None = exc
        while link is not None and id(link) not in seen and len(seen) < 32:
            if isinstance(link, self.transient_errors):
                return True
            if isinstance(link, MediaError) and link.reason in ("unavailable", "expired"):
                return True  # the media channel out of reach: not the flow's bug
            seen.add(id(link))
            if link.__cause__ is not None:
                link = link.__cause__
            elif link.__suppress_context__:
                return False
            else:
                link = link.__context__
        return False

    def problem_with(self, snapshot: Snapshot) -> str | None:
        """Why a decoded snapshot cannot belong to this flow (msgspec-style ``$.path``), or
        None. A newer ``flow_version`` within :data:`~fsm.snapshot.NEWER_FLOW_WINDOW` is not a
        problem here (a newer deploy's: the engine refuses it, untouched); one further ahead
        was written by no deploy, and is."""
        if snapshot.flow != self.name:
            return f"flow {snapshot.flow!r} is not {self.name!r} - at `$.flow`"
        if snapshot.flow_version > self.version + NEWER_FLOW_WINDOW:
            return (
                f"flow version {snapshot.flow_version} is beyond any deploy (this code runs "
                f"{self.version}, a newer deploy at most {self.version + NEWER_FLOW_WINDOW})"
                " - at `$.flow_version`"
            )
        if snapshot.flow_version > self.version:
            return None
        stage = self.stages.get(snapshot.stage)
        if stage is None:
            return f"unknown stage {snapshot.stage!r} - at `$.stage`"
        if snapshot.step not in stage.steps:
            return f"stage {stage.name!r} has no step {snapshot.step!r} - at `$.step`"
        resume = snapshot.resume
        if resume is not None:
            target = self.stages.get(resume.stage)
            if target is None or resume.step not in target.steps:
                return (
                    f"resume point {resume.stage}.{resume.step} is not in the flow - at `$.resume`"
                )
            if self.auth_stage is not None and self.path(self.auth_stage, resume.stage) is None:
                return (
                    f"resume point {resume.stage}.{resume.step} cannot be reached from the auth "
                    "stage - at `$.resume`"
                )
        return None


class Flow:
    """Base class of every flow. Subclasses declare, this class checks and compiles.

    Class attributes a subclass sets: ``name``, ``stages``, ``transitions``, ``initial``
    (default: the first stage), and optionally ``version`` (bump it when steps change, with a
    migration), ``auth_stage`` (required when a stage is protected) and ``safe_stage`` (where a
    corrupt conversation restarts; default ``initial``). Instances carry the flow's
    dependencies (an API client) and are what :class:`~fsm.engine.Engine` runs.

    ``migrations`` maps a flow version N to a pure function that turns a snapshot written by
    version N into one version N+1 can run; the engine applies them in order when it loads an
    older conversation, so a deploy that renames or removes steps keeps old sessions.

    ``takes_first_message``: a new or expired conversation starts by showing the initial
    step's prompt (its :func:`on_enter`), so a first message is never applied to a question
    the user was not asked. A flow whose initial step reads the first message (a greeting:
    "hi" signs in) sets it True; a flow whose initial step has no prompt must.

    ``failure_reply`` is what the user is told when a step, a prompt or an action fails
    unexpectedly (nothing is saved; a pending action stays pending, with its key);
    ``delay_reply`` when an action failed on I/O after the user's message was saved (an
    exception in ``transient_errors``, default ``TimeoutError`` and ``ConnectionError``: add
    your HTTP client's, such as ``httpx.TransportError``), which the WhatsApp transport
    answers with 503 so the message is delivered again and the action finished, same key.
    ``sensitive`` names data keys holding personal data: every display path hides their
    values (backups keep them).

    ``unsupported_reply`` answers an attachment (an image, a location...) at a step that
    accepts none (``@step(..., accepts=...)``): the conversation stays where it is.

    ``templates`` declares the message templates the flow's replies use
    (:class:`~fsm.templates.TemplateSpec`: name, language, parameter counts, as approved in
    Meta's dashboard); a :func:`fsm.template` reply that matches none is refused when made.

    ``blocking`` (default True; a class attribute, or set on an instance) says whether the
    flow's plain ``def`` handlers may block (a sync HTTP client, a database driver). On
    :class:`~fsm.AsyncEngine` they then run in a worker thread; a flow whose handlers only
    compute, or call a client that never blocks, sets it False and they run on the loop,
    as one marked ``@step(..., blocking=False)`` does.
    """

    blocking: bool = True
    name: ClassVar[str]
    version: ClassVar[int] = 1
    stages: ClassVar[Sequence[Stage]]
    transitions: ClassVar[Sequence[tuple[str, str | Sequence[str], str]]]
    initial: ClassVar[str | None] = None
    auth_stage: ClassVar[str | None] = None
    safe_stage: ClassVar[str | None] = None
    migrations: ClassVar[Mapping[int, Migration]] = {}
    takes_first_message: ClassVar[bool] = False
    failure_reply: ClassVar[str] = FAILURE_REPLY
    delay_reply: ClassVar[str] = DELAY_REPLY
    unsupported_reply: ClassVar[str] = UNSUPPORTED_REPLY
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (TimeoutError, ConnectionError)
    sensitive: ClassVar[Iterable[str]] = ()
    #: How long a conversation lasts after its last save (seconds), unless the engine is built
    #: with its own ``session_ttl``; a declared timer must fit in it or extend the session.
    session_ttl: ClassVar[float] = 30 * 60
    templates: ClassVar[Sequence[TemplateSpec]] = ()
    spec: ClassVar[FlowSpec]

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        cls.spec = _compile(cls)

    def transcript_directives(self) -> Mapping[str, Callable[[Sequence[str]], None]]:
        """Transcript commands this flow's dependencies understand (``! NAME args`` lines):
        a flow built on a fake API returns, say, ``{"booking": ...}`` so ``! booking full``
        makes the next call fail. :class:`fsm.testing.Conversation` and ``fsm chat --engine``
        use them; a flow on real dependencies returns none (the default)."""
        return {}


def _compile(cls: type[Flow]) -> FlowSpec:
    name = getattr(cls, "name", None)
    label = name if isinstance(name, str) and name else cls.__name__

    def fail(problem: str) -> InvalidFlowDefinition:
        return InvalidFlowDefinition(label, problem)

    if not isinstance(name, str) or not name:
        raise fail("set `name` to a non-empty string")
    if not isinstance(cls.version, int) or cls.version < 1:
        raise fail("`version` must be an int >= 1")
    declared = list(getattr(cls, "stages", ()))
    if not declared:
        raise fail("declare at least one Stage in `stages`")
    stages: dict[str, Stage] = {}
    for stage in declared:
        if not isinstance(stage, Stage):
            raise fail(f"`stages` must hold Stage objects, got {stage!r}")
        if stage.name in stages:
            raise fail(f"stage {stage.name!r} is declared twice")
        if not stage.steps:
            raise fail(f"stage {stage.name!r} declares no steps")
        if len(set(stage.steps)) != len(stage.steps):
            raise fail(f"stage {stage.name!r} declares a step twice")
        stages[stage.name] = stage

    def known(stage: str | None, what: str) -> str:
        if stage not in stages:
            raise fail(f"{what} names unknown stage {stage!r}")
        assert stage is not None
        return stage

    initial = known(cls.initial or declared[0].name, "`initial`")
    safe = known(cls.safe_stage or initial, "`safe_stage`")
    auth = known(cls.auth_stage, "`auth_stage`") if cls.auth_stage is not None else None
    protected = frozenset(s.name for s in declared if s.protected)
    if protected and auth is None:
        raise fail(f"stages {sorted(protected)} are protected but no `auth_stage` is set")
    if auth is not None and auth in protected:
        raise fail(f"the auth stage {auth!r} cannot itself be protected")
    if safe in protected:
        raise fail(f"the safe stage {safe!r} cannot be protected")

    rows: list[tuple[str, str, str]] = []
    seen_pairs: set[tuple[str, str]] = set()
    for row in getattr(cls, "transitions", ()):
        if not (isinstance(row, tuple | list) and len(row) == 3):
            raise fail(f"a transition is (trigger, source(s), dest), got {row!r}")
        trigger, sources, dest = row
        if not isinstance(trigger, str) or not trigger.isidentifier() or keyword.iskeyword(trigger):
            raise fail(f"trigger {trigger!r} must be a Python identifier")
        if trigger in _RESERVED or trigger.startswith(("_", "to_", "may_", "is_")):
            raise fail(f"trigger {trigger!r} clashes with a name the machine reserves")
        known(dest, f"transition {trigger!r}")
        for source in [sources] if isinstance(sources, str) else list(sources):
            known(source, f"transition {trigger!r}")
            if (trigger, source) in seen_pairs:
                raise fail(f"duplicate trigger {trigger!r} from stage {source!r}")
            seen_pairs.add((trigger, source))
            rows.append((trigger, source, dest))

    steps = _collect_steps(cls, stages, fail)
    _check_exits(stages, rows, fail)
    for role, stage_name in (("initial", initial), ("safe", safe)):
        entry = stages[stage_name].entry
        if steps[(stage_name, entry)].action:
            raise fail(
                f"the {role} stage {stage_name!r} starts at action {entry!r}: an action runs "
                "only after a saved state leads to it; start with a step that takes input"
            )
    takes_first = getattr(cls, "takes_first_message", False)
    if not isinstance(takes_first, bool):
        raise fail("`takes_first_message` must be True or False")
    first = steps[(initial, stages[initial].entry)]
    if not takes_first and first.enter is None:
        raise fail(
            f"the initial step {initial}.{first.step} has no @on_enter prompt to show a new "
            "conversation: add one, or set `takes_first_message = True` if that step reads "
            "the first message itself (a greeting)"
        )
    said = _said(cls, fail)
    timed = _timed(cls, stages, steps, fail)
    migrations = dict(getattr(cls, "migrations", {}) or {})
    for from_version, migrate in migrations.items():
        if (
            not isinstance(from_version, int)
            or isinstance(from_version, bool)
            or not 1 <= from_version < cls.version
        ):
            raise fail(
                f"migration key {from_version!r} must be a flow version from 1 to "
                f"{cls.version - 1} (it migrates that version to the next)"
            )
        if not callable(migrate):
            raise fail(f"migration from version {from_version} is not callable")
    machine = StageMachine(
        name=name,
        stages=list(stages),
        initial=initial,
        transitions=rows,
        protected=protected,
    )
    spec = FlowSpec(
        name=name,
        version=cls.version,
        initial=initial,
        safe_stage=safe,
        auth_stage=auth,
        stages=stages,
        transitions=tuple(rows),
        steps=steps,
        machine=machine,
        migrations=migrations,
        takes_first_message=takes_first,
        templates=_templates(cls, fail),
        **timed,
        **said,
    )
    unreachable = [s for s in stages if s != initial and spec.path(initial, s) is None]
    if unreachable:
        raise fail(f"stages {unreachable} are unreachable from {initial!r}")
    for stage_name in sorted(protected):
        assert auth is not None
        if spec.path(stage_name, auth) is None:
            raise fail(f"protected stage {stage_name!r} has no path to the auth stage {auth!r}")
        if spec.path(auth, stage_name) is None:
            raise fail(f"the auth stage {auth!r} has no path back to {stage_name!r}")
    return spec


def _timed(
    cls: type[Flow],
    stages: Mapping[str, Stage],
    steps: Mapping[tuple[str, str], StepSpec],
    fail: Callable[[str], InvalidFlowDefinition],
) -> dict[str, Any]:
    """The flow's session length, timers and event handlers, checked."""
    session_ttl = cls.session_ttl
    if isinstance(session_ttl, bool) or not isinstance(session_ttl, int | float):
        raise fail("`session_ttl` must be a number of seconds > 0")
    if not session_ttl > 0:
        raise fail("`session_ttl` must be a number of seconds > 0")
    actions = {key for key, s in steps.items() if s.action}
    timers, events = collect(cls, stages, actions, float(session_ttl), fail)
    return {"timers": timers, "events": events, "session_ttl": float(session_ttl)}


def _templates(
    cls: type[Flow], fail: Callable[[str], InvalidFlowDefinition]
) -> dict[tuple[str, str], TemplateSpec]:
    """The flow's declared message templates, checked, by (name, language)."""
    declared = cls.templates
    if isinstance(declared, str | TemplateSpec) or not isinstance(declared, Iterable):
        raise fail("`templates` must be a tuple of TemplateSpec")
    out: dict[tuple[str, str], TemplateSpec] = {}
    for spec in declared:
        if not isinstance(spec, TemplateSpec):
            raise fail(f"`templates` must hold TemplateSpec objects, got {type(spec).__name__}")
        problems = spec_problems(spec)
        if problems:
            raise fail(f"template {spec.name!r} ({spec.language}): " + "; ".join(problems))
        if (spec.name, spec.language) in out:
            raise fail(f"template {spec.name!r} ({spec.language}) is declared twice")
        out[(spec.name, spec.language)] = spec
    return out


def _said(cls: type[Flow], fail: Callable[[str], InvalidFlowDefinition]) -> dict[str, Any]:
    """The flow's failure texts, transient errors and sensitive keys, checked."""
    out: dict[str, Any] = {}
    for name in ("failure_reply", "delay_reply", "unsupported_reply"):
        text = getattr(cls, name)
        if not isinstance(text, str) or not text.strip():
            raise fail(f"`{name}` must be a non-empty str (what the user is told)")
        out[name] = text
    errors = cls.transient_errors
    if not isinstance(errors, tuple) or not all(
        isinstance(e, type) and issubclass(e, BaseException) for e in errors
    ):
        raise fail("`transient_errors` must be a tuple of exception classes")
    out["transient_errors"] = errors
    keys = cls.sensitive
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise fail("`sensitive` must be a list of data key names (str), not a str")
    out["sensitive"] = frozenset(keys)
    return out


def _check_exits(
    stages: Mapping[str, Stage],
    rows: Sequence[tuple[str, str, str]],
    fail: Callable[[str], InvalidFlowDefinition],
) -> None:
    """Each declared exit leads somewhere: a trigger from its stage, or a step of it."""
    for stage in stages.values():
        way = stage.exit
        if way is None:
            continue
        if not isinstance(way, Exit):
            raise fail(f"stage {stage.name!r}: `exit` must be an Exit, got {way!r}")
        triggers = {trigger for trigger, source, _ in rows if source == stage.name}
        if way.to not in triggers and way.to not in stage.steps:
            raise fail(
                f"the exit of stage {stage.name!r} leads to {way.to!r}, which is neither a "
                f"trigger declared from it ({sorted(triggers)}) nor one of its steps"
            )
        if not way.words and not way.ids:
            raise fail(f"the exit of stage {stage.name!r} has no words and no ids")


def _collect_steps(
    cls: type[Flow],
    stages: Mapping[str, Stage],
    fail: Callable[[str], InvalidFlowDefinition],
) -> dict[tuple[str, str], StepSpec]:
    handlers: dict[tuple[str, str], tuple[str, bool | str]] = {}
    enters: dict[tuple[str, str], str] = {}
    free_text: set[tuple[str, str]] = set()
    accepts: dict[tuple[str, str], frozenset[str]] = {}
    for klass in reversed(cls.__mro__):  # a subclass may override its base's handlers
        own_handlers: set[tuple[str, str]] = set()
        own_enters: set[tuple[str, str]] = set()
        for attr_name, attr in vars(klass).items():
            fn = getattr(attr, "__func__", attr)
            for stage, step_id, side_effects in getattr(fn, "_fsm_steps", ()):
                if (stage, step_id) in own_handlers:
                    raise fail(f"step {stage}.{step_id} has two handlers")
                own_handlers.add((stage, step_id))
                handlers[(stage, step_id)] = (attr_name, side_effects)
                if (stage, step_id) in getattr(fn, "_fsm_free_text", ()):
                    free_text.add((stage, step_id))
                else:
                    free_text.discard((stage, step_id))
                kinds = getattr(fn, "_fsm_accepts", {}).get((stage, step_id))
                if kinds:
                    accepts[(stage, step_id)] = kinds
                else:
                    accepts.pop((stage, step_id), None)
            for stage, step_id in getattr(fn, "_fsm_enter", ()):
                if (stage, step_id) in own_enters:
                    raise fail(f"step {stage}.{step_id} has two @on_enter hooks")
                own_enters.add((stage, step_id))
                enters[(stage, step_id)] = attr_name
    for stage, step_id in [*handlers, *enters]:
        if stage not in stages:
            raise fail(f"a handler names unknown stage {stage!r}")
        if step_id not in stages[stage].steps:
            raise fail(f"a handler names step {step_id!r}, which stage {stage!r} does not declare")
    out: dict[tuple[str, str], StepSpec] = {}
    for stage in stages.values():
        for step_id in stage.steps:
            found = handlers.get((stage.name, step_id))
            if found is None:
                raise fail(f"step {stage.name}.{step_id} has no handler (use @step)")
            out[(stage.name, step_id)] = StepSpec(
                stage=stage.name,
                step=step_id,
                handler=found[0],
                side_effects=found[1] is not False,
                enter=enters.get((stage.name, step_id)),
                action=found[1] == "action",
                free_text=(stage.name, step_id) in free_text,
                accepts=accepts.get((stage.name, step_id), frozenset()),
            )
    return out
