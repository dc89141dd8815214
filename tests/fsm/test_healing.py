"""No conversation is ever stuck: for every user, each message is applied, or the session is
quarantined byte for byte and the user reset with a notice. Each failure found by the
adversarial run is a test by name, on the memory store and on a real redis-server."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import MemoryStore, RedisStore, Store
from adapters.redis_ops import split_value
from fsm import SCHEMA_VERSION, Engine, FakeClock, Snapshot, encode_snapshot
from fsm.errors import FsmError, InvalidUserKey, SchemaTooNew, StepFailed
from fsm.ops.validate import Problem, diagnose
from fsm.records import MAX_VERSION
from fsm.snapshot import NEWER_FLOW_WINDOW, VERSION_LIMIT
from tests import redis_servers
from tests.fsm.sample_flows import Counter

_namespaces = itertools.count(1)
RESET = "Something went wrong with your conversation"


@dataclass
class World:
    store: Store
    clock: FakeClock
    write: Callable[[str, bytes], None]  # put raw bytes in a user's session, as corruption would
    kind: str

    def engine(self, **options: object) -> Engine:
        return Engine(Counter(), self.store, clock=self.clock, **options)  # type: ignore[arg-type]

    def snapshot_bytes(self, version: int, **fields: object) -> bytes:
        snapshot = Snapshot(
            flow="counter", stage="counting", step="count", version=version, **fields
        )  # type: ignore[arg-type]
        return msgspec.msgpack.encode(snapshot)


@pytest.fixture(params=["memory", "redis"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    clock = FakeClock()
    if request.param == "memory":
        memory = MemoryStore(clock=clock)

        def write_memory(user: str, raw: bytes) -> None:
            memory.delete(user)
            memory.save(user, raw, version=_version_of(raw), expected_version=0, ttl=600)

        yield World(memory, clock, write_memory, "memory")
        return
    namespace = f"heal{next(_namespaces)}-{os.getpid()}"
    store = RedisStore.from_url(redis_servers.standalone().url, namespace=namespace)

    def write_redis(user: str, raw: bytes) -> None:
        version = _version_of(raw)
        value = raw if raw.startswith(b"!") else b"%d.0123abcd:" % version + raw
        store.client.set(store.layout.session(user), value.removeprefix(b"!"))

    try:
        yield World(store, clock, write_redis, "redis")
    finally:
        store.close()


def _version_of(raw: bytes) -> int:
    try:
        version = msgspec.msgpack.decode(raw)[Snapshot.__struct_fields__.index("version")]
    except Exception:  # noqa: BLE001 - not a snapshot: any version will do
        return 1
    return version if isinstance(version, int) and 1 <= version <= MAX_VERSION else 1


def test_failure_1_a_cached_record_never_makes_an_error_permanent(world: World) -> None:
    """A worker whose cache holds a record on which the step fails (or that reads as newer)
    reads the store again after the error, so a repair, a rollback or a delete is seen."""
    engine = world.engine(poison_after=100)
    engine.handle("u", "go")
    world.write("u", world.snapshot_bytes(2, data={}))  # the step fails on it: no "count"
    with pytest.raises(StepFailed):
        engine.handle("u", "+1")
    world.write("u", world.snapshot_bytes(3, data={"count": 5}))  # repaired by an operator
    assert engine.handle("u", "+1").snapshot.data == {"count": 6}
    newer = world.snapshot_bytes(9, data={"count": 1}, schema=SCHEMA_VERSION + 1)
    world.write("u", newer)
    with pytest.raises(SchemaTooNew):
        engine.handle("u", "+1")
    world.store.delete("u")  # rolled back: the newer deploy's session is gone
    assert engine.handle("u", "go").snapshot.stage == "counting"


def test_failure_3_deeply_nested_data_is_corruption_not_a_recursion_error(world: World) -> None:
    engine = world.engine()
    engine.handle("u", "go")
    deep: object = 1
    for _ in range(900):
        deep = [deep]
    world.write("u", world.snapshot_bytes(2, data={"count": 1, "deep": deep}))
    result = engine.handle("u", "go")
    assert RESET in result.texts[0] and engine.stats["corrupt"] == 1
    assert engine.handle("u", "+1").snapshot.data == {"count": 1}


def test_failure_3_a_step_that_writes_data_too_deep_is_step_failed() -> None:
    from fsm import Context, Flow, Outcome, Stage, step

    class Deep(Flow):
        name = "deep"
        takes_first_message = True
        stages = (Stage("s", ("ask",)),)
        transitions = ()

        @step("s", "ask")
        def ask(self, ctx: Context) -> Outcome:
            value: object = 1
            for _ in range(5000):
                value = [value]
            return ctx.stay(set={"deep": value})

    engine = Engine(Deep(), MemoryStore())
    with pytest.raises(StepFailed) as caught:
        engine.handle("u", "x")
    assert "nested deeper" in str(caught.value.__cause__)


def test_failure_4_a_version_at_the_bound_never_makes_later_writes_unreadable(
    world: World,
) -> None:
    """A quarantined record claiming a huge version does not push the chain past what the
    value layout and the stores accept: the next messages are applied as usual."""
    engine = world.engine()
    engine.handle("u", "go")
    if world.kind == "redis":
        world.write("u", b"!999999999999999.0123abcd:garbage")  # 15 digits: the most it reads
    else:
        world.write("u", b"garbage")
        world.store.delete("u")
        world.store.save("u", b"garbage", version=MAX_VERSION, expected_version=0, ttl=600)
    first = engine.handle("u", "go")
    assert RESET in first.texts[0] and first.snapshot.version < MAX_VERSION
    for n in range(1, 4):  # the engine's own sessions read back as sessions, not as garbage
        assert engine.handle("u", "+1").snapshot.data == {"count": n}
    assert engine.stats["corrupt"] == 1


@pytest.mark.parametrize("version", [VERSION_LIMIT - 1, VERSION_LIMIT + 1, MAX_VERSION])
def test_failure_4_a_session_near_the_version_bound_goes_on_or_heals(
    world: World, version: int
) -> None:
    """Every session that reads as valid can be saved again; one above the limit heals."""
    engine = world.engine()
    engine.handle("u", "go")
    world.write("u", world.snapshot_bytes(version, data={"count": 1}))
    for _ in range(4):
        result = engine.handle("u", "+1")
    assert result.snapshot.stage == "counting"  # no message raised
    # Above the limit: quarantined at once. Just below: it goes on, crosses the limit, and
    # heals then: either way no message fails.
    assert engine.stats["corrupt"] == 1


def test_failure_5_a_lone_surrogate_in_an_id_is_a_clear_error_on_every_store(
    world: World,
) -> None:
    engine = world.engine()
    with pytest.raises(InvalidUserKey, match="lone surrogate"):
        engine.handle("user-\ud800", "go")
    with pytest.raises(ValueError, match="message_id must be valid Unicode"):
        engine.handle("u", "go", message_id="wamid.\udc00")
    with pytest.raises(ValueError, match="text must be valid Unicode"):
        engine.handle("u", "go\udfff")
    assert world.store.load("u").record is None  # nothing reached the store


def test_failure_6_a_future_issued_at_in_the_auth_slot_never_blocks_sign_in(world: World) -> None:
    from flows.credex import build_engine
    from flows.credex.fake import FakeCredexApi

    alice = "263770000001"
    api = FakeCredexApi(clock=world.clock, token_ttl=3600)
    engine = build_engine(world.store, api, clock=world.clock, jwt_leeway=0, session_ttl=36000)
    engine.handle(alice, "hi")
    held = engine.peek(alice)
    assert held is not None and held.auth is not None
    future = world.clock.now() + 10 * 365 * 86400
    tampered = msgspec.structs.replace(
        held,
        auth=msgspec.structs.replace(held.auth, issued_at=future),
        version=held.version + 1,
    )
    world.write(alice, encode_snapshot(tampered))
    world.clock.advance(2 * 3600)  # the held token has expired meanwhile
    for _ in range(2):  # sent to sign in again (or signed in at once by the greeting)
        signed_in = engine.handle(alice, "hi")
        if signed_in.snapshot.stage == "menu":
            break
    assert signed_in.snapshot.stage == "menu"
    assert signed_in.snapshot.auth is not None and signed_in.snapshot.auth.token != held.auth.token


def test_failure_6_a_valid_held_token_is_compared_by_its_own_claims() -> None:
    """A slot that says its token was issued in the future cannot refuse a fresher token."""
    import jwt

    from fsm import Auth, TokenVerifier

    key = b"k" * 32
    clock = FakeClock()
    now = clock.now()
    verifier = TokenVerifier(key, algorithms=("HS256",), leeway=0, clock=clock)
    old = jwt.encode({"sub": "a", "iat": int(now) - 60, "exp": int(now) + 600}, key)
    new = jwt.encode({"sub": "a", "iat": int(now), "exp": int(now) + 900}, key)
    slot = Auth(token=old, subject="a", expires_at=now + 600, issued_at=now + 10**8)
    assert verifier.replacement(slot, new).token == new
    with pytest.raises(FsmError, match="stale"):  # a really older token is still refused
        verifier.replacement(verifier.auth_for(new), old)


def test_failure_7_a_step_that_always_fails_quarantines_and_resets_after_n(world: World) -> None:
    engine = world.engine(poison_after=3)
    engine.handle("u", "go")
    poisoned = world.snapshot_bytes(2, data={"count": "not a number"})
    world.write("u", poisoned)
    for _ in range(2):
        with pytest.raises(StepFailed):
            engine.handle("u", "+1")
    third = engine.handle("u", "go")  # applied, to a fresh conversation
    assert RESET in third.texts[0] and third.snapshot.stage == "counting"
    assert engine.stats["poisoned"] == 1
    entries = list(world.store.quarantined("u"))
    assert [e.raw for e in entries] == [poisoned]  # byte for byte
    assert "failed 3 times in a row" in entries[0].reason
    assert engine.handle("u", "+1").snapshot.data == {"count": 1}


def test_failure_7_a_resume_point_the_flow_cannot_reach_is_corruption(world: World) -> None:
    from flows.credex import build_engine
    from flows.credex.fake import FakeCredexApi
    from fsm import Resume

    engine = build_engine(world.store, FakeCredexApi(clock=world.clock), clock=world.clock)
    raw = encode_snapshot(
        Snapshot(
            flow="credex",
            stage="auth",
            step="login",
            version=3,
            flow_version=2,
            resume=Resume(stage="init", step="greeting"),  # no path from auth to init
        )
    )
    world.write("263770000002", raw)
    first = engine.handle("263770000002", "hi")
    assert RESET in first.texts[0]
    assert engine.handle("263770000002", "hi").snapshot.stage == "menu"


def test_failure_7_a_redelivery_or_an_io_failure_does_not_count_as_poison(world: World) -> None:
    from fsm import Context, Flow, Outcome, Stage, step

    class Flaky(Flow):
        name = "flaky"
        takes_first_message = True
        stages = (Stage("s", ("ask",)),)
        transitions = ()

        @step("s", "ask")
        def ask(self, ctx: Context) -> Outcome:
            if ctx.text == "timeout":
                raise TimeoutError("the API did not answer")
            if ctx.text == "bug":
                raise KeyError("bug")
            return ctx.stay("ok", set={"n": ctx.data.get("n", 0) + 1})

    engine = Engine(Flaky(), world.store, clock=world.clock, poison_after=2)
    engine.handle("u", "x")
    for _ in range(5):  # an API outage: every message fails, the session is fine
        with pytest.raises(StepFailed):
            engine.handle("u", "timeout")
    for _ in range(3):  # one message delivered three times
        with pytest.raises(StepFailed):
            engine.handle("u", "bug", message_id="wamid.1")
    assert engine.stats["poisoned"] == 0
    assert engine.handle("u", "x").snapshot.data == {"n": 2}  # kept


def test_failure_3_data_grown_one_level_per_message_is_refused_before_it_is_saved(
    world: World,
) -> None:
    from fsm import Context, Flow, Outcome, Stage, step
    from fsm.errors import CorruptSnapshot

    class Nest(Flow):
        name = "nest"
        takes_first_message = True
        stages = (Stage("s", ("ask",)),)
        transitions = ()

        @step("s", "ask")
        def ask(self, ctx: Context) -> Outcome:
            return ctx.stay(set={"prev": ctx.data})  # a read-only view, one level deeper

    engine = Engine(Nest(), world.store, clock=world.clock)
    failed = 0
    for _ in range(80):
        try:
            engine.handle("u", "x")
        except CorruptSnapshot:  # saved too deep, then unreadable: must never happen
            raise
        except StepFailed as exc:
            failed += 1
            assert "nested deeper" in str(exc.__cause__)
    assert 0 < failed <= 3  # refused before it was saved; poisoned after three, then reset


def test_failure_7_a_version_no_deploy_wrote_is_corruption(world: World) -> None:
    """One deploy ahead is a newer deploy's session: refused, untouched (rolling deploys).
    Further ahead, no deploy wrote it: quarantined and reset, and fsm check says the same."""
    engine = world.engine()
    spec = Counter.spec
    one_ahead = world.snapshot_bytes(2, data={"count": 1}, schema=SCHEMA_VERSION + 1)
    world.write("a", one_ahead)
    with pytest.raises(SchemaTooNew):
        engine.handle("a", "+1")
    record = world.store.load("a").record
    assert record is not None and record.payload == one_ahead
    assert diagnose("a", record, spec, now=0).problem is Problem.SCHEMA_TOO_NEW
    for user, fields in [
        ("b", {"schema": SCHEMA_VERSION + 7}),
        ("c", {"flow_version": spec.version + NEWER_FLOW_WINDOW + 1}),
    ]:
        raw = world.snapshot_bytes(2, data={"count": 1}, **fields)
        world.write(user, raw)
        stored = world.store.load(user).record
        assert stored is not None
        assert diagnose(user, stored, spec, now=0).problem is Problem.UNDECODABLE
        result = engine.handle(user, "go")
        assert RESET in result.texts[0], user
    # A flow's authors may raise its version by more than one in a deploy.
    flow_ahead = world.snapshot_bytes(2, data={"count": 1}, flow_version=spec.version + 3)
    world.write("d", flow_ahead)
    with pytest.raises(SchemaTooNew):
        engine.handle("d", "+1")


# -- 2: the value layout, one definition on both sides of the wire -----------------------------
EDGE_VALUES = [
    b"1.0123abcd:x",
    b"1.0123ABCD:x",  # a tag letter flipped to upper case
    b"1.0123abcD:x",
    b"12.deadbeef:",
    b"999999999999999.0123abcd:x",  # 15 digits: the most
    b"1000000000000000.0123abcd:x",  # 16 digits: foreign
    b"01.0123abcd:x",  # a leading zero
    b"0.0123abcd:x",
    b"1.0123abc:x",  # a short tag
    b"1.0123abcde:x",  # a long tag
    b"1.0123abcg:x",
    b"1:0123abcd:x",
    b"1.0123abcd",
    b"-1.0123abcd:x",
    b" 1.0123abcd:x",
    b"1.0123abcd:\x00\xff",
    b"\xd9\x01.0123abcd:x",
    b"",
    b"x",
    "\u0661.0123abcd:x".encode(),  # ARABIC-INDIC DIGIT ONE: a digit, but not ASCII
]

_SPLIT = """
local version, tag, payload = split(ARGV[1])
return {version, tag, payload}
"""


def test_failure_2_python_and_lua_read_every_edge_of_the_value_layout_alike() -> None:
    from adapters.redis_scripts import _PRELUDE

    client = redis_servers.standalone().client()
    lua = client.register_script(_PRELUDE + _SPLIT)
    for value in EDGE_VALUES:
        version, tag, payload = lua(keys=[], args=[value])
        record = split_value(value)
        expected = (record.version, record.tag, record.payload)
        assert (version, tag.decode(), payload) == expected, value


def test_failure_2_a_flipped_tag_letter_is_quarantined_not_a_conflict_forever() -> None:
    namespace = f"tag{next(_namespaces)}-{os.getpid()}"
    store = RedisStore.from_url(redis_servers.standalone().url, namespace=namespace)
    try:
        engine = Engine(Counter(), store)
        engine.handle("u", "go")
        key = store.layout.session("u")
        value = store.client.get(key)
        assert value is not None
        head, _, payload = value.partition(b":")
        version, _, tag = head.partition(b".")
        # The tag with a hex letter a-f turned to A-F (a tag of digits only gets one first).
        flipped = version + b"." + (b"a" + tag[1:]).upper() + b":" + payload
        assert flipped != value
        store.client.set(key, flipped)
        result = engine.handle("u", "go")  # no ConflictError: foreign bytes, quarantined
        assert RESET in result.texts[0]
        assert [e.raw for e in store.quarantined("u")] == [flipped]
        assert engine.handle("u", "+1").snapshot.data == {"count": 1}
        # Foreign bytes are corruption, not a version that went back after a failover.
        assert (engine.stats["corrupt"], engine.stats["version_regressions"]) == (1, 0)
    finally:
        store.close()


# -- property: any bytes, then at most two messages; the third is applied ----------------------
def _valid(count: int = 1) -> bytes:
    return encode_snapshot(
        Snapshot(flow="counter", stage="counting", step="count", version=2, data={"count": count})
    )


_mutated = st.tuples(st.integers(0, 200), st.integers(0, 255)).map(
    lambda at_byte: (lambda raw: raw[: at_byte[0]] + bytes([at_byte[1]]) + raw[at_byte[0] + 1 :])(
        _valid()
    )
)
ANY_BYTES = st.one_of(st.binary(max_size=300), _mutated, st.just(_valid()))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=ANY_BYTES)
def test_any_bytes_in_a_session_heal_within_two_messages(raw: bytes) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    engine = Engine(Counter(), store, clock=clock)
    engine.handle("u", "go")
    store.delete("u")
    store.save("u", raw, version=_version_of(raw), expected_version=0, ttl=600)
    for _ in range(2):
        try:
            engine.handle("u", "+1")
        except SchemaTooNew:
            record = store.load("u").record
            assert record is not None and record.payload == raw  # a newer deploy's: untouched
            return
        except FsmError:
            continue
    result = engine.handle("u", "+1")  # never an error on the third message
    assert result.snapshot.stage == "counting"


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_the_fuzz_script_leaves_no_user_stuck_on_a_small_run(kind: str) -> None:
    """tests/benchmarks/fuzz_sessions.py on 1,500 users (it runs 100,000 by hand)."""
    from tests.benchmarks.fuzz_sessions import run

    if kind == "memory":
        outcome = run(MemoryStore(clock=FakeClock()), 1500, seed=5)
    else:
        namespace = f"fuzz{next(_namespaces)}-{os.getpid()}"
        store = RedisStore.from_url(redis_servers.standalone().url, namespace=namespace)
        try:
            outcome = run(store, 1500, seed=5)
        finally:
            store.close()
    assert outcome["stuck"] == 0, outcome
    assert outcome["healed"] > 500 and outcome["applied"] > 100  # both kinds were exercised
