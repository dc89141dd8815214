"""Property-based: random messages and triggers never leave the stage graph, never touch the
token without an auth event, and a refused move leaves the stored bytes unchanged."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import MemoryStore
from fsm import Engine, FakeClock, TokenVerifier
from fsm.errors import FsmError, TransitionNotAllowed
from tests.fsm.sample_flows import SECRET, Vault

WORDS = [
    "hi",
    "open sesame",
    "wrong",
    "deposit",
    "12",
    "0",
    "yes",
    "no",
    "logout",
    "refresh",
    "sneak",
    "teleport",
    "menu",
    "",
]
AUTH_WORDS = {"open sesame", "logout", "refresh"}
EDGES = {(src, dst) for _, src, dst in Vault.spec.transitions}
STAGES = set(Vault.spec.stages)

message = st.one_of(
    st.sampled_from(WORDS).map(lambda w: ("say", w)),
    st.floats(min_value=1, max_value=900).map(lambda s: ("wait", s)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message, min_size=1, max_size=40))
def test_random_conversations_stay_in_the_graph_and_keep_the_token(
    actions: list[tuple[str, object]],
) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    engine = Engine(
        Vault(clock, token_ttl=300),
        store,
        verifier=TokenVerifier(SECRET, clock=clock, leeway=0),
        clock=clock,
        session_ttl=600,
    )
    for kind, value in actions:
        if kind == "wait":
            clock.advance(float(value))  # type: ignore[arg-type]
            continue
        text = str(value)
        before = store.load("u").record
        before_snap = engine.peek("u") if before is not None else None
        try:
            result = engine.handle("u", text)
        except FsmError:
            # Refused (transition, token, ...): the stored bytes are exactly as before.
            assert store.load("u").record == before
            continue
        snap = result.snapshot
        assert snap.stage in STAGES
        assert snap.step in Vault.spec.stages[snap.stage].steps
        hops = [h for h in result.events]
        stage = before_snap.stage if before_snap else "start"
        for event in hops:
            dest = Vault.spec.machine.destination(stage, event)
            assert dest is not None and (stage, dest) in EDGES
            stage = dest
        assert stage == snap.stage  # where the fired events lead is where the user is
        if before_snap is not None and text not in AUTH_WORDS:
            old = before_snap.auth.token if before_snap.auth else None
            new = snap.auth.token if snap.auth else None
            assert old == new  # byte-identical token without an auth event
        if snap.stage in {"home", "deposit"}:
            assert snap.auth is not None  # a protected stage is never reached without one


@given(
    st.sampled_from(sorted(STAGES)),
    st.sampled_from(sorted({t for t, _, _ in Vault.spec.transitions} | {"fly", "reset"})),
)
def test_any_trigger_from_any_stage_follows_the_table_or_is_refused(stage: str, event: str) -> None:
    allowed = {(t, s): d for t, s, d in Vault.spec.transitions}
    try:
        dest = Vault.spec.machine.fire(stage, event, token_preserved=True, token_valid=True)
    except TransitionNotAllowed as exc:
        assert (event, stage) not in allowed
        assert exc.stage == stage and exc.event == event
    else:
        assert allowed[(event, stage)] == dest
