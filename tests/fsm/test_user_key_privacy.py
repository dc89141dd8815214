"""No log line and no error message shows a user's whole phone number: at most its last four
digits (``...0016``, :func:`fsm.redaction.user_tail`). Errors keep the full key as an attribute
for the code that needs it; only the operator's CLI tables show it whole."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import msgspec
import pytest

import fsm.errors
from adapters import MemoryStore
from adapters.whatsapp.delivery import phone_tail
from fsm import (
    Context,
    FakeClock,
    Flow,
    Outcome,
    Stage,
    action,
    decode_snapshot,
    encode_snapshot,
    step,
)
from fsm.errors import (
    ConflictError,
    CorruptSnapshot,
    FsmError,
    LockTimeout,
    SchemaTooNew,
    StepFailed,
    StepNotFound,
    StoreUnavailable,
    TokenRefused,
    TransitionNotAllowed,
)
from fsm.records import SaveResult
from fsm.redaction import mask_user, user_tail

from .conftest import make_engine
from .sample_flows import Counter

PHONE = "263773000016"
TAIL = "...0016"
HIDDEN = PHONE[:-4]  # what must never show: every digit before the last four


def shows_more_than_the_tail(text: str, key: str = PHONE) -> bool:
    """Whether ``text`` holds five or more consecutive characters of ``key``."""
    return any(key[i : i + 5] in text for i in range(len(key) - 4))


def test_user_tail_shows_the_last_four_characters_at_most() -> None:
    assert user_tail(PHONE) == TAIL
    assert user_tail("12345") == "...2345"
    assert user_tail("2631") == "2631" and user_tail("u") == "u"  # short keys: nothing to hide
    assert user_tail("26377300\n0016") == "...0016"
    assert user_tail("263773000\n16") == "...0\\n16"  # a key cannot forge a log line
    assert phone_tail is user_tail  # the transport applies the same rule


def test_mask_user_cuts_the_key_inside_a_text() -> None:
    assert mask_user(f"WRONGTYPE fsm:{{{PHONE}}}:s", PHONE) == "WRONGTYPE fsm:{...0016}:s"
    assert mask_user("nothing to cut", PHONE) == "nothing to cut"
    assert mask_user("u moved", "u") == "u moved"  # a short key is not searched for
    assert mask_user("text", None) == "text"


CASES: dict[type[FsmError], Any] = {
    TransitionNotAllowed: lambda: TransitionNotAllowed(
        "menu", "pay", user_key=PHONE, reason=f"no path to 'pay' for {PHONE}"
    ),
    StepNotFound: lambda: StepNotFound("menu", "nowhere", user_key=PHONE),
    StepFailed: lambda: StepFailed("menu", "ask", user_key=PHONE, version=3),
    CorruptSnapshot: lambda: CorruptSnapshot(
        f"bad bytes under fsm:{{{PHONE}}}:s - at `$.version`", raw=b"\xc1", user_key=PHONE
    ),
    SchemaTooNew: lambda: SchemaTooNew(9, 3, user_key=PHONE),
    ConflictError: lambda: ConflictError(
        PHONE, attempts=3, version=7, detail=f"fsm:{{{PHONE}}}:s kept moving"
    ),
    StoreUnavailable: lambda: StoreUnavailable(
        "save", user_key=PHONE, detail=f"ResponseError: WRONGTYPE at fsm:{{{PHONE}}}:s"
    ),
    LockTimeout: lambda: LockTimeout(PHONE, waited=1.5),
    TokenRefused: lambda: TokenRefused("expired", user_key=PHONE),
}


@pytest.mark.parametrize("kind", list(CASES), ids=lambda kind: kind.__name__)
def test_an_error_shows_the_tail_of_the_user_key_and_keeps_the_key(kind: type[FsmError]) -> None:
    exc = CASES[kind]()
    assert isinstance(exc, kind)
    for shown in (str(exc), repr(exc), str(exc.args)):
        assert not shows_more_than_the_tail(shown), shown
    assert TAIL in str(exc)  # enough to find the conversation with the operator's tools
    assert exc.user_key == PHONE  # type: ignore[attr-defined]


def test_every_error_that_takes_a_user_key_is_checked_above() -> None:
    takes_a_key = {
        cls
        for _, cls in inspect.getmembers(fsm.errors, inspect.isclass)
        if issubclass(cls, FsmError) and "user_key" in inspect.signature(cls.__init__).parameters
    }
    assert takes_a_key == set(CASES)


# -- through the engine, on the memory store ---------------------------------------------------


class _Api:
    def __init__(self) -> None:
        self.broken = False

    def do(self, key: str) -> None:
        if self.broken:
            raise RuntimeError(f"API refused the order for {PHONE}")  # the flow's own text


class _Orders(Flow):
    """idle -(go)-> place (an action) -> idle."""

    name = "orders"
    takes_first_message = True
    stages = (Stage("home", ("idle", "place")),)
    transitions = ()

    def __init__(self, api: _Api) -> None:
        self.api = api

    @step("home", "idle")
    def idle(self, ctx: Context) -> Outcome:
        if ctx.text == "go":
            return ctx.stay("placing", step="place")
        return ctx.stay(f"idle got {ctx.text}")

    @action("home", "place")
    def place(self, ctx: Context) -> Outcome:
        self.api.do(ctx.idempotency_key)
        return ctx.stay("placed", step="idle")


class _RacingStore(MemoryStore):
    """Another writer saves just before every save of ours, while ``racing``."""

    racing = False

    def save(self, user_key: str, payload: bytes, **kw: Any) -> SaveResult:
        rec = super().load(user_key).record
        if self.racing and rec is not None:
            bumped = msgspec.structs.replace(decode_snapshot(rec.payload), version=rec.version + 1)
            super().save(
                user_key,
                encode_snapshot(bumped),
                version=rec.version + 1,
                expected_version=rec.version,
                ttl=60,
            )
        return super().save(user_key, payload, **kw)


class _NoRelease(MemoryStore):
    """Cannot release a lease: the driver's error quotes the Redis key, user key and all."""

    def release_lock(self, user_key: str, owner: str) -> bool:
        raise StoreUnavailable(
            "release_lock", user_key=user_key, detail=f"ConnectionError: fsm:{{{user_key}}}:l"
        )


def _errors_keep_the_key_out(exc: BaseException) -> None:
    assert not shows_more_than_the_tail(str(exc)) and not shows_more_than_the_tail(repr(exc))


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Any:
    """Every record the test logs, at any level from any logger, is checked when it ends."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    records = caplog.get_records("call")
    assert records, "the scenario logged nothing: it checked nothing"
    assert any(TAIL in r.getMessage() for r in records)  # the user is still named, by the tail
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in records:
        assert HIDDEN not in record.getMessage(), record.getMessage()
        shown = formatter.format(record)  # with the traceback of an exception logged with it
        assert HIDDEN not in shown, shown


def test_a_conflict(logs: Any, clock: FakeClock, engine_kind: str) -> None:
    store = _RacingStore(clock=clock)
    engine = make_engine(engine_kind, Counter(), store, clock=clock, max_attempts=2)
    engine.handle(PHONE, "go")
    store.racing = True
    with pytest.raises(ConflictError) as info:
        engine.handle(PHONE, "+1")
    _errors_keep_the_key_out(info.value)
    logging.getLogger("test").warning("%s", info.value)  # as a transport logs it


def test_a_step_failure_and_an_unknown_step(logs: Any, clock: FakeClock, engine_kind: str) -> None:
    engine = make_engine(engine_kind, Counter(), MemoryStore(clock=clock), clock=clock)
    engine.handle(PHONE, "go")
    with pytest.raises(StepFailed) as failed:
        engine.handle(PHONE, "boom", message_id="m1")
    with pytest.raises(StepNotFound) as missing:
        engine.handle(PHONE, "jump", message_id="m2")
    for exc in (failed.value, missing.value):
        _errors_keep_the_key_out(exc)
        logging.getLogger("test").warning("%s", exc)


def test_a_lock_held_by_another_worker(logs: Any, clock: FakeClock, engine_kind: str) -> None:
    store = MemoryStore(clock=clock)
    engine = make_engine(engine_kind, Counter(), store, clock=clock, lock_wait=0)
    engine.handle(PHONE, "locked")  # its next step runs under the lease
    assert store.acquire_lock(PHONE, "another-worker", 30)
    with pytest.raises(LockTimeout) as info:
        engine.handle(PHONE, "+1")
    _errors_keep_the_key_out(info.value)
    logging.getLogger("test").warning("%s", info.value)


def test_a_lease_that_cannot_be_released(logs: Any, clock: FakeClock) -> None:
    api = _Api()
    engine = make_engine("sync", _Orders(api), _NoRelease(clock=clock), clock=clock)
    engine.handle(PHONE, "hi")
    api.broken = True
    with pytest.raises(StepFailed):  # the action fails under the lease, which stays: logged
        engine.handle(PHONE, "go")


@pytest.mark.parametrize("raw", [b"\xc1", msgspec.msgpack.encode({"flow": "counter"})])
def test_a_corrupt_snapshot_quarantined(
    logs: Any, clock: FakeClock, engine_kind: str, raw: bytes
) -> None:
    store = MemoryStore(clock=clock)
    store.save(PHONE, raw, version=1, expected_version=0, ttl=600)
    engine = make_engine(engine_kind, Counter(), store, clock=clock)
    assert engine.handle(PHONE, "go").texts[0] == engine.reset_notice
    assert engine.stats["corrupt"] == 1
    with pytest.raises(CorruptSnapshot) as info:
        decode_snapshot(raw, user_key=PHONE)
    _errors_keep_the_key_out(info.value)


def test_a_poisoned_session_quarantined(logs: Any, clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    engine = make_engine("sync", Counter(), store, clock=clock, poison_after=2)
    engine.handle(PHONE, "go")
    with pytest.raises(StepFailed):
        engine.handle(PHONE, "boom", message_id="m1")
    assert engine.handle(PHONE, "boom", message_id="m2").texts[0] == engine.reset_notice
    assert engine.stats["poisoned"] == 1


def test_a_session_expired_with_an_action_pending(
    logs: Any, clock: FakeClock, engine_kind: str
) -> None:
    api = _Api()
    # The store keeps the session on its own clock: the engine's finds it expired.
    engine = make_engine(engine_kind, _Orders(api), MemoryStore(), clock=clock, session_ttl=600)
    engine.handle(PHONE, "hi")
    api.broken = True
    with pytest.raises(StepFailed) as info:
        engine.handle(PHONE, "go", message_id="m1")
    _errors_keep_the_key_out(info.value)
    clock.advance(601)
    assert engine.handle(PHONE, "hi", message_id="m2").texts[0] == engine.expired_notice
    assert engine.stats["expired_unfinished"] == 1


def test_an_action_abandoned(logs: Any, clock: FakeClock, engine_kind: str) -> None:
    api = _Orders(_Api())
    engine = make_engine(engine_kind, api, MemoryStore(clock=clock), clock=clock)
    engine.handle(PHONE, "hi")
    api.api.broken = True
    for _ in range(2):  # and once more as Meta re-delivers it
        with pytest.raises(StepFailed):
            engine.handle(PHONE, "go", message_id="m1")
    assert engine.handle(PHONE, "hello", message_id="m2").texts[0] == engine.abandon_notice
    assert engine.stats["actions_abandoned"] == 1


def test_a_version_that_went_back(logs: Any, clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    engine = make_engine("sync", Counter(), store, clock=clock)
    engine.handle(PHONE, "go")
    engine.handle(PHONE, "+1")
    v2 = store.load(PHONE).record
    engine.handle(PHONE, "+1")
    assert v2 is not None
    store.delete(PHONE)  # as after a failover that lost the last write
    store.save(PHONE, v2.payload, version=2, expected_version=0, ttl=60)
    engine.handle(PHONE, "+1")
    assert engine.stats["version_regressions"] == 1
