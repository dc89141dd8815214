"""Actions: steps that call an API after the state expecting their outcome is saved."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters import MemoryStore
from fsm import Context, Engine, FakeClock, Flow, Outcome, Stage, TokenVerifier, action, step
from fsm.errors import ConflictError, InvalidFlowDefinition, StepFailed, TransitionNotAllowed
from tests.fsm.sample_flows import SECRET, issue_token


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the engine catches it."""


class Kitchen:
    """An order API that honours idempotency keys, and can die right after doing its work."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.orders: dict[str, str] = {}  # idempotency key -> order id
        self.crash_after_next = False
        self.seen_states: list[tuple[str, str] | None] = []
        self.store: MemoryStore | None = None
        self.lock = threading.Lock()

    def place(self, size: str, key: str, user: str) -> str:
        with self.lock:
            self.calls.append(key)
            if self.store is not None:  # what is stored when the API is called
                record = self.store.load(user).record
                from fsm import decode_snapshot

                snap = decode_snapshot(record.payload) if record else None
                self.seen_states.append((snap.stage, snap.step) if snap else None)
            order = self.orders.setdefault(key, f"order-{len(self.orders) + 1}")
            if self.crash_after_next:
                self.crash_after_next = False
                raise Crash
            return order


class Shop(Flow):
    """menu -> order (size, placing*) -> menu; placing is an action."""

    name = "shop"
    takes_first_message = True
    auth_stage = "auth"
    stages = (
        Stage("auth", ("login",)),
        Stage("menu", ("home",), protected=True),
        Stage("order", ("size", "placing"), protected=True),
    )
    transitions = (
        ("open_menu", ["auth", "menu", "order"], "menu"),
        ("order_food", "menu", "order"),
        ("sign_in", "menu", "auth"),
    )

    def __init__(self, kitchen: Kitchen, clock: FakeClock) -> None:
        self.kitchen = kitchen
        self.clock = clock
        self.stay_in_action = False

    @step("auth", "login")
    def login(self, ctx: Context) -> Outcome:
        from fsm import Login

        token = issue_token(self.clock, sub=ctx.user_key, ttl=600)
        return ctx.go("open_menu", "signed in", auth=Login(token), resume=True)

    @step("menu", "home")
    def home(self, ctx: Context) -> Outcome:
        if ctx.text != "order":
            return ctx.stay("say order")
        return ctx.go("order_food", "what size?")

    @step("order", "size")
    def size(self, ctx: Context) -> Outcome:
        if ctx.text not in {"small", "large"}:
            return ctx.stay("small or large?")
        return ctx.stay("placing your order", step="placing", set={"size": ctx.text})

    @action("order", "placing")
    def placing(self, ctx: Context) -> Outcome:
        if self.stay_in_action:
            return ctx.stay("still here")
        order = self.kitchen.place(ctx.data["size"], ctx.idempotency_key, ctx.user_key)
        return ctx.go("open_menu", f"placed {order}", unset=["size"], set={"last": order})


@pytest.fixture
def kitchen() -> Kitchen:
    return Kitchen()


@pytest.fixture
def shop(clock: FakeClock, kitchen: Kitchen) -> Engine:
    store = MemoryStore(clock=clock)
    kitchen.store = store
    verifier = TokenVerifier(SECRET, clock=clock, leeway=0)
    return Engine(Shop(kitchen, clock), store, verifier=verifier, clock=clock, lock_ttl=5)


def _to_size(engine: Engine, user: str = "u") -> None:
    engine.handle(user, "hi")  # auth -> menu
    engine.handle(user, "order")  # menu -> order.size


def _crash_in_action(shop: Engine, kitchen: Kitchen, message_id: str | None = None) -> None:
    """Order, and let the worker die right after the kitchen took the order."""
    _to_size(shop)
    kitchen.crash_after_next = True
    with pytest.raises(Crash):
        shop.handle("u", "large", message_id=message_id)


def test_action_runs_after_the_state_expecting_it_is_saved(shop: Engine, kitchen: Kitchen) -> None:
    _to_size(shop)
    result = shop.handle("u", "large", message_id="m1")
    assert result.texts == ["placing your order", "placed order-1"]
    assert kitchen.seen_states == [("order", "placing")]  # the pending action was on record
    assert (result.snapshot.stage, result.snapshot.step) == ("menu", "home")
    assert result.snapshot.data == {"last": "order-1"}
    history = shop.store.history("u", limit=2)
    assert [(h.from_step, h.to_step) for h in history] == [("placing", "home"), ("size", "placing")]
    assert shop.store.lock_info("u") is None
    assert shop.stats["actions"] == 1


def test_a_crash_after_the_call_is_finished_by_the_redelivery_once(
    shop: Engine, kitchen: Kitchen, clock: FakeClock
) -> None:
    _crash_in_action(shop, kitchen, "m1")
    pending = shop.peek("u")
    assert pending is not None and pending.step == "placing"  # the intent survived the crash
    clock.advance(10)  # the dead worker's lease runs out
    again = shop.handle("u", "large", message_id="m1")  # the webhook re-delivers
    assert again.duplicate
    assert again.texts == ["placed order-1"]  # the replies the dead worker never sent
    assert kitchen.calls == [kitchen.calls[0]] * 2  # retried with the same idempotency key
    assert list(kitchen.orders.values()) == ["order-1"]  # and applied once
    assert shop.handle("u", "large", message_id="m1").texts == []  # nothing left to finish


def test_a_new_message_first_finishes_the_pending_action(
    shop: Engine, kitchen: Kitchen, clock: FakeClock
) -> None:
    _crash_in_action(shop, kitchen, "m1")
    clock.advance(10)
    result = shop.handle("u", "order", message_id="m2")
    assert result.texts == ["placed order-1", "what size?"]  # action, then the message
    assert not result.duplicate
    assert (result.snapshot.stage, result.snapshot.step) == ("order", "size")
    assert len(kitchen.orders) == 1


def test_racing_deliveries_of_one_message_call_the_api_once(shop: Engine, kitchen: Kitchen) -> None:
    _to_size(shop)
    barrier = threading.Barrier(8)

    def deliver(_: int) -> list[str]:
        barrier.wait()
        return shop.handle("u", "small", message_id="m1").texts

    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(deliver, range(8)))
    assert len(kitchen.calls) == 1
    # Whichever delivery applied the message says its prompt; whichever took the lease first
    # ran the action and says its outcome (possibly a delivery that found the message seen).
    said = [text for out in outputs for text in out]
    assert sorted(said) == ["placed order-1", "placing your order"]


def test_different_messages_racing_into_the_action_call_it_once(
    shop: Engine, kitchen: Kitchen
) -> None:
    _to_size(shop)
    barrier = threading.Barrier(6)

    def deliver(n: int) -> list[str]:
        barrier.wait()
        return shop.handle("u", "small", message_id=f"tap-{n}").texts

    with ThreadPoolExecutor(6) as pool:
        outputs = list(pool.map(deliver, range(6)))
    assert len(kitchen.calls) == 1
    assert sum("placed order-1" in out for out in outputs) == 1
    said = [text for out in outputs for text in out]
    assert said.count("say order") == 5  # later taps land on the menu, each answered once


def test_an_action_that_does_not_move_on_fails_and_leaves_it_pending(
    shop: Engine, kitchen: Kitchen
) -> None:
    _to_size(shop)
    shop.flow.stay_in_action = True  # type: ignore[attr-defined]
    with pytest.raises(StepFailed) as info:
        shop.handle("u", "small")
    assert (info.value.stage, info.value.step) == ("order", "placing")
    assert "another step" in str(info.value.__cause__)
    pending = shop.peek("u")
    assert pending is not None and pending.step == "placing"
    shop.flow.stay_in_action = False  # type: ignore[attr-defined]
    assert shop.handle("u", "anything").texts[0] == "placed order-1"


def test_an_expired_token_at_a_pending_action_signs_in_then_runs_it(
    shop: Engine, kitchen: Kitchen, clock: FakeClock
) -> None:
    _crash_in_action(shop, kitchen)
    clock.advance(601)  # the token has expired while the action was pending
    result = shop.handle("u", "hi")
    # The pending action first goes to sign-in (the token guard), the message signs in, the
    # resume lands on the action again and it runs with the key it had before the crash.
    assert result.texts == [shop.auth_notice, "signed in", "placed order-1"]
    assert kitchen.calls == [kitchen.calls[0]] * 2
    assert len(kitchen.orders) == 1


def test_action_decorator_is_checked_like_step() -> None:
    with pytest.raises(InvalidFlowDefinition, match="two handlers"):

        class Twice(Flow):
            name = "twice"
            takes_first_message = True
            stages = (Stage("a", ("x",)),)
            transitions = ()

            @step("a", "x")
            def x(self, ctx: Context) -> Outcome:
                return ctx.stay()

            @action("a", "x")
            def y(self, ctx: Context) -> Outcome:
                return ctx.stay()

    assert Shop.spec.steps[("order", "placing")].action
    assert Shop.spec.steps[("order", "placing")].side_effects
    assert not Shop.spec.steps[("order", "size")].action


def test_token_is_issued_by_test_helper(clock: FakeClock) -> None:
    # The sample tokens are real HS256 JWTs the verifier accepts.
    verifier = TokenVerifier(SECRET, clock=clock, leeway=0)
    assert verifier.verify(issue_token(clock, sub="u")).subject == "u"


def test_a_flow_cannot_start_at_an_action() -> None:
    with pytest.raises(InvalidFlowDefinition, match="initial stage 'a' starts at action 'go'"):

        class StartsActing(Flow):
            name = "starts_acting"
            takes_first_message = True
            stages = (Stage("a", ("go", "wait")),)
            transitions = ()

            @action("a", "go")
            def go(self, ctx: Context) -> Outcome:
                return ctx.stay(step="wait")

            @step("a", "wait")
            def wait(self, ctx: Context) -> Outcome:
                return ctx.stay()


class Api:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.broken = False
        self.during: Callable[[], None] | None = None

    def do(self, what: str, key: str) -> None:
        self.calls.append((what, key))
        if self.during is not None:
            hook, self.during = self.during, None
            hook()
        if self.broken:
            raise RuntimeError("API client bug")


class Chain(Flow):
    """idle -(go)-> a1 (action) -> a2 (action) -> idle."""

    name = "chain"
    takes_first_message = True
    stages = (Stage("home", ("idle", "a1", "a2")),)
    transitions = ()

    def __init__(self, api: Api) -> None:
        self.api = api

    @step("home", "idle")
    def idle(self, ctx: Context) -> Outcome:
        if ctx.text == "go":
            return ctx.stay("starting", step="a1", set={"job": 1})
        if ctx.text == "boom":
            raise ValueError("a bug in input handling")
        return ctx.stay(f"idle got {ctx.text}")

    @action("home", "a1")
    def a1(self, ctx: Context) -> Outcome:
        self.api.do("a1", ctx.idempotency_key)
        return ctx.stay("a1 done", step="a2")

    @action("home", "a2")
    def a2(self, ctx: Context) -> Outcome:
        self.api.do("a2", ctx.idempotency_key)
        return ctx.stay("a2 done", step="idle")


def _chain(clock: FakeClock, store: MemoryStore | None = None, api: Api | None = None) -> Engine:
    return Engine(Chain(api or Api()), store or MemoryStore(clock=clock), clock=clock, lock_ttl=5)


def test_chained_actions_run_in_order_each_with_its_own_random_key(clock: FakeClock) -> None:
    engine = _chain(clock)
    api: Api = engine.flow.api  # type: ignore[attr-defined]
    engine.handle("u", "hi")
    assert engine.handle("u", "go").texts == ["starting", "a1 done", "a2 done"]
    engine.handle("u", "go")
    keys = [k for _, k in api.calls]
    assert len(set(keys)) == 4  # never reused, not even for the same step later
    assert all(k.startswith("chain-") and "u" not in k.removeprefix("chain-") for k in keys[:1])


def test_a_new_message_unwedges_a_failing_action(clock: FakeClock) -> None:
    engine = _chain(clock)
    api: Api = engine.flow.api  # type: ignore[attr-defined]
    engine.handle("u", "hi")
    api.broken = True
    with pytest.raises(StepFailed):  # reported to the caller, the pending state is kept
        engine.handle("u", "go", message_id="m1")
    with pytest.raises(StepFailed):  # a re-delivery of the same message retries it, once more
        engine.handle("u", "go", message_id="m1")
    # A new message: the action fails again, so it is given up; the user is told and goes on.
    result = engine.handle("u", "hello", message_id="m2")
    assert result.texts == [engine.abandon_notice, "idle got hello"]
    abandoned = engine.store.history("u", limit=2)[1]
    assert (abandoned.from_step, abandoned.to_step, abandoned.event) == ("a1", "idle", "abandon")
    assert (result.snapshot.step, result.snapshot.data, result.snapshot.pending) == ("idle", {}, "")
    assert engine.stats["actions_abandoned"] == 1
    assert len(api.calls) == 3 and len({k for _, k in api.calls}) == 1  # one key throughout


def test_an_action_refused_by_the_flow_is_given_up_too(clock: FakeClock) -> None:
    class Lost(Chain):
        @action("home", "a1")
        def a1(self, ctx: Context) -> Outcome:
            self.api.do("a1", ctx.idempotency_key)
            return ctx.go("nowhere")  # not a declared event: TransitionNotAllowed

    engine = Engine(Lost(Api()), MemoryStore(clock=clock), clock=clock)
    engine.handle("u", "hi")
    with pytest.raises(TransitionNotAllowed):
        engine.handle("u", "go")
    assert engine.handle("u", "hello").texts == [engine.abandon_notice, "idle got hello"]


def test_replies_of_saves_made_before_an_error_travel_on_the_error(clock: FakeClock) -> None:
    engine = _chain(clock)
    api: Api = engine.flow.api  # type: ignore[attr-defined]
    engine.handle("u", "hi")
    api.broken = True
    with pytest.raises(StepFailed):
        engine.handle("u", "go")
    api.broken = False
    with pytest.raises(StepFailed) as info:
        engine.handle("u", "boom")  # the pending actions finish and are saved, then "boom" fails
    assert [r.body for r in info.value.replies] == ["a1 done", "a2 done"]
    assert engine.peek("u").step == "idle"  # type: ignore[union-attr]


def test_a_lapsed_lease_is_never_trusted_for_the_next_action(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    api = Api()
    worker1, worker2 = _chain(clock, store, api), _chain(clock, store, api)
    worker1.handle("u", "hi")

    def slow_then_race() -> None:  # a1 outlives the 5 s lease; worker 2 arrives meanwhile
        clock.advance(6)
        worker2.handle("u", "other")  # finds a1 pending, takes the lapsed lock, runs a1 and a2

    api.during = slow_then_race
    with pytest.raises(ConflictError):  # worker 1's a1 result loses the compare-and-set
        worker1.handle("u", "go")
    assert [what for what, _ in api.calls] == ["a1", "a1", "a2"]  # a2 ran once
    assert len({k for what, k in api.calls if what == "a1"}) == 1  # a1 retried with its key
    assert worker1.stats["lease_lost"] == 1
    assert store.lock_info("u") is None


def test_the_interrupted_actions_key_rides_in_the_resume_point_only(
    shop: Engine, kitchen: Kitchen, clock: FakeClock
) -> None:
    _crash_in_action(shop, kitchen)
    key = shop.peek("u").pending  # type: ignore[union-attr]
    assert key.startswith("shop-")
    shop.flow.login = lambda ctx: ctx.stay("password?")  # type: ignore[attr-defined, method-assign]
    clock.advance(601)
    at_auth = shop.handle("u", "hi").snapshot
    assert at_auth.stage == "auth" and at_auth.pending == ""  # not offered to the auth step
    assert at_auth.resume is not None and at_auth.resume.pending == key


def test_a_redelivery_to_a_worker_with_an_older_record_finishes_the_pending_action(
    clock: FakeClock, kitchen: Kitchen
) -> None:
    store = MemoryStore(clock=clock)
    kitchen.store = store
    verifier = TokenVerifier(SECRET, clock=clock, leeway=0)
    flow = Shop(kitchen, clock)
    a, b = (Engine(flow, store, verifier=verifier, clock=clock, lock_ttl=5) for _ in range(2))
    _to_size(a)  # a's cache: the conversation at order.size
    kitchen.crash_after_next = True
    with pytest.raises(Crash):  # b takes the message and dies after the kitchen call
        b.handle("u", "large", message_id="m1")
    clock.advance(10)
    again = a.handle("u", "large", message_id="m1")  # the re-delivery lands on a
    assert again.duplicate  # a's older record led to a refused write that said so...
    assert again.texts == ["placed order-1"] and len(kitchen.orders) == 1  # ...and a finished it
