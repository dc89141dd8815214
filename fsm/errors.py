"""The error hierarchy: one root, :class:`FsmError`, and one class per way things go wrong.

Every error names what it is about (the user key, stage, event, step or version) so a log line
is enough to find the conversation. None of them ever carries a JWT or another secret: tokens are
described by their claims at most, never by their text. A user key (a phone number) shows in a
message as its last four characters only (:func:`fsm.redaction.user_tail`); the full key is
kept on the error as ``user_key`` for code that needs it.
"""

from __future__ import annotations

from typing import Any

from fsm.redaction import mask_user, user_tail


def _who(user_key: str | None, form: str) -> str:
    """``form`` (holding ``{}``) with the tail of ``user_key``, or nothing without a key."""
    return form.format(user_tail(user_key)) if user_key is not None else ""


class FsmError(Exception):
    """Root of every error this library raises on purpose.

    ``replies`` is set when :meth:`fsm.engine.Engine.handle` raises after it already saved
    something in the same call (a pending action finished before the message failed): those
    replies were stored but not returned, so a transport should still send them. ``notice``
    is what to tell the user after them, so that a user always hears something.
    """

    replies: tuple[Any, ...] = ()
    #: What the user should be told about this failure, not saved anywhere: set by the engine
    #: when the flow's own code failed (:class:`StepFailed` and the flow's refusals) to the
    #: flow's ``failure_reply``, or its ``delay_reply`` when ``transient``. None otherwise.
    notice: Any = None
    #: The message was saved and its action then failed on I/O (one of the flow's
    #: ``transient_errors``, such as ``TimeoutError``): delivering the same message again
    #: finishes the action with the same idempotency key, and may well succeed.
    transient: bool = False


class InvalidFlowDefinition(FsmError):
    """A flow declaration is inconsistent; raised when the flow class is built (import time)."""

    def __init__(self, flow: str, problem: str) -> None:
        self.flow = flow
        self.problem = problem
        super().__init__(f"flow {flow!r}: {problem}")


class TransitionNotAllowed(FsmError):
    """``event`` is not allowed from ``stage``; the stored snapshot was left unchanged."""

    def __init__(
        self, stage: str, event: str, *, user_key: str | None = None, reason: str = ""
    ) -> None:
        self.stage = stage
        self.event = event
        self.user_key = user_key
        self.reason = reason
        who = _who(user_key, " (user {})")
        why = f": {mask_user(reason, user_key)}" if reason else ""
        super().__init__(f"event {event!r} is not allowed from stage {stage!r}{who}{why}")


class StepNotFound(FsmError):
    """A handler asked to go to a step that its stage does not declare."""

    def __init__(self, stage: str, step: str, *, user_key: str | None = None) -> None:
        self.stage = stage
        self.step = step
        self.user_key = user_key
        who = _who(user_key, " (user {})")
        super().__init__(f"stage {stage!r} has no step {step!r}{who}")


class StepFailed(FsmError):
    """A step handler raised; nothing was saved. The original exception is ``__cause__``."""

    def __init__(self, stage: str, step: str, *, user_key: str, version: int) -> None:
        self.stage = stage
        self.step = step
        self.user_key = user_key
        self.version = version
        super().__init__(
            f"step {stage}.{step} failed for user {user_tail(user_key)} at version {version}; "
            "the stored snapshot is unchanged"
        )


class CorruptSnapshot(FsmError):
    """Stored bytes could not be decoded into a valid snapshot.

    ``raw`` holds the bytes exactly as read, ``detail`` the decoder's message (ending with the
    ``$.path`` of the bad field when msgspec could locate it).
    """

    def __init__(self, detail: str, *, raw: bytes, user_key: str | None = None) -> None:
        self.detail = detail
        self.raw = raw
        self.user_key = user_key
        who = _who(user_key, "user {}: ")
        super().__init__(f"{who}corrupt snapshot ({len(raw)} bytes): {mask_user(detail, user_key)}")

    def __repr__(self) -> str:  # never dump the raw bytes: they may contain a token
        detail = mask_user(self.detail, self.user_key)
        return f"CorruptSnapshot({detail!r}, raw=<{len(self.raw)} bytes>)"


class SchemaTooNew(FsmError):
    """A snapshot uses a schema newer than this code knows; it is neither written nor reset.

    An old worker that wrote it back would drop the fields it does not know.
    """

    def __init__(
        self, schema: int, supported: int, *, user_key: str | None = None, what: str = "schema"
    ) -> None:
        self.schema = schema
        self.supported = supported
        self.user_key = user_key
        self.what = what
        who = _who(user_key, "user {}: ")
        super().__init__(
            f"{who}snapshot {what} {schema} is newer than this code supports ({supported}); "
            "upgrade this worker"
        )


class ConflictError(FsmError):
    """Compare-and-set kept failing: other writers changed the conversation every time."""

    def __init__(self, user_key: str, *, attempts: int, version: int, detail: str = "") -> None:
        self.user_key = user_key
        self.attempts = attempts
        self.version = version
        why = mask_user(detail, user_key) or "the stored version kept moving"
        super().__init__(
            f"user {user_tail(user_key)}: gave up after {attempts} attempts, {why} "
            f"(last seen {version})"
        )


class StoreUnavailable(FsmError):
    """The store could not be reached or answered with an error; wraps the driver's exception."""

    def __init__(self, operation: str, *, user_key: str | None = None, detail: str = "") -> None:
        self.operation = operation
        self.user_key = user_key
        self.detail = detail
        who = _who(user_key, " for user {}")
        tail = f": {mask_user(detail, user_key)}" if detail else ""
        super().__init__(f"store unavailable during {operation}{who}{tail}")


class LockTimeout(FsmError):
    """The user's lease lock stayed held by someone else for longer than we may wait."""

    def __init__(self, user_key: str, *, waited: float) -> None:
        self.user_key = user_key
        self.waited = waited
        super().__init__(
            f"user {user_tail(user_key)}: lock still held by another worker after {waited:.2f}s"
        )


class TokenRefused(FsmError):
    """A JWT failed verification. ``reason`` says why; the token itself is never included."""

    def __init__(self, reason: str, *, user_key: str | None = None) -> None:
        self.reason = reason
        self.user_key = user_key
        who = _who(user_key, "user {}: ")
        super().__init__(f"{who}token refused: {mask_user(reason, user_key)}")


class ConfigurationError(FsmError, ValueError):
    """A deployment setting is missing or unusable. The message names the setting, never its
    value; ``fsm serve`` prints it as one line and exits with status 2."""


class InvalidUserKey(FsmError, ValueError):
    """A user id that cannot be used as a conversation key (empty, too long, not text)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"invalid user key: {problem}")
