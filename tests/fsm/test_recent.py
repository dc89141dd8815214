"""The engine's cache of recent records: bounded, and a stale entry is harmless."""

from __future__ import annotations

import enum

import pytest

from adapters import MemoryStore
from fsm import Context, Engine, FakeClock, Flow, Outcome, Stage, step
from fsm.recent import RecentRecords
from fsm.records import Record
from fsm.snapshot import is_plain
from tests.fsm.sample_flows import Counter


def test_bounded_least_recently_used_first_out() -> None:
    recent = RecentRecords(2)
    recent.put("a", Record(b"a", 1))
    recent.put("b", Record(b"b", 1))
    assert recent.get("a") is not None  # a is now the most recent
    recent.put("c", Record(b"c", 1))
    assert recent.get("b") is None and len(recent) == 2
    recent.put("a", None)  # gone from the store: forgotten
    assert recent.get("a") is None
    off = RecentRecords(0)
    off.put("a", Record(b"a", 1))
    assert off.get("a") is None
    with pytest.raises(ValueError):
        RecentRecords(-1)


class _CountingStore(MemoryStore):
    loads = 0

    def load(self, user_key: str, **kw: object) -> object:  # type: ignore[override]
        self.loads += 1
        return super().load(user_key, **kw)  # type: ignore[arg-type]


def test_a_warm_message_skips_the_read_and_a_stale_one_costs_one_retry(clock: FakeClock) -> None:
    store = _CountingStore(clock=clock)
    one, two = (Engine(Counter(), store, clock=clock) for _ in range(2))
    one.handle("u", "go")
    loads = store.loads
    one.handle("u", "+1")
    assert store.loads == loads  # warm: straight to the compare-and-set
    two.handle("u", "+1")  # another worker moves the conversation on
    result = one.handle("u", "+1")  # one's record is stale now
    assert result.snapshot.data["count"] == 3  # nothing lost
    assert one.stats["conflicts"] == 1  # the refused write's reply carried the current record
    assert store.loads == loads + 1  # only worker two's first (cold) load


def test_a_version_that_went_back_is_reported(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore(clock=clock)
    engine = Engine(Counter(), store, clock=clock)
    engine.handle("u", "go")
    engine.handle("u", "+1")
    v2 = store.load("u").record
    engine.handle("u", "+1")
    engine.handle("u", "+1")  # this process has seen version 4
    assert v2 is not None and v2.version == 2
    # As after a failover that lost the last writes: the primary now holds version 2.
    store.delete("u")
    store.save("u", v2.payload, version=2, expected_version=0, ttl=60)
    result = engine.handle("u", "+1")
    assert engine.stats["version_regressions"] == 1
    assert "went back from 4 to 2" in caplog.text
    assert result.snapshot.version == 3 and result.snapshot.data["count"] == 2


def test_a_reply_that_left_before_a_newer_put_neither_replaces_it_nor_reports_a_regression() -> (
    None
):
    """Two concurrent messages of one process: B's load of v7 went out, then A saved v8 and put
    it, then B's reply arrives. v7 is older knowledge, not a version that went back."""
    recent = RecentRecords(10)
    recent.put("u", Record(b"v6", 6))
    b_sent = recent.tick()  # B's load goes out
    a_sent = recent.tick()  # A's save goes out
    assert recent.put("u", Record(b"v8", 8), a_sent) == Record(b"v6", 6)
    assert recent.put("u", Record(b"v7", 7), b_sent) is None  # nothing to compare with
    got = recent.get("u")
    assert got is not None and got.record == Record(b"v8", 8)  # the newer one stays
    # A reply whose request left after v8 was put is compared with it: a real regression.
    c_sent = recent.tick()
    assert recent.put("u", Record(b"v5", 5), c_sent) == Record(b"v8", 8)


def test_a_warm_message_does_not_decode_what_this_process_saved(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot kept with the record this process saved is reused, and a save whose data is
    plain keeps its own snapshot: a warm message decodes nothing. A record another writer
    stored is decoded and checked."""
    from fsm import protocol, restore

    decoded: list[int] = []
    real = protocol.decode_snapshot

    def counting(raw: bytes, **kw: object) -> object:
        decoded.append(len(raw))
        return real(raw, **kw)  # type: ignore[arg-type]

    for module in (protocol, restore):  # the pass, and restoring what it loaded
        monkeypatch.setattr(module, "decode_snapshot", counting)
    store = MemoryStore(clock=clock)
    one, two = (Engine(Counter(), store, clock=clock) for _ in range(2))
    one.handle("u", "go")
    decoded.clear()
    one.handle("u", "+1")
    assert decoded == []  # neither the bytes it worked on nor the ones it saved
    two.handle("u", "+1")  # another worker: it has no snapshot for this record
    decoded.clear()
    result = one.handle("u", "+1")  # stale: the conflict reply's record is decoded and checked
    assert result.snapshot.data["count"] == 3 and len(decoded) == 1


class _Shade(enum.IntEnum):
    """An int enum: stored as its int, so what a load gives back is a plain int."""

    DARK = 1


class _Keeper(Flow):
    """Sets whatever the test puts in ``values``, then counts messages in plain data."""

    name = "keeper"
    takes_first_message = True
    stages = (Stage("s", ("keep",)),)
    transitions = ()
    values: dict[str, object] = {}

    @step("s", "keep")
    def keep(self, ctx: Context) -> Outcome:
        return ctx.stay("ok", set={**self.values, "n": ctx.data.get("n", 0) + 1})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param((1, 2), id="tuple"),
        pytest.param(_Shade.DARK, id="int-enum"),
        pytest.param({1: "a"}, id="int-key"),
        pytest.param([{"a": (1,)}], id="nested-tuple"),
        pytest.param(frozenset({"a"}), id="frozenset"),
    ],
)
def test_the_snapshot_kept_after_a_save_is_what_a_reload_gives(
    clock: FakeClock, value: object
) -> None:
    """Data that decoding would change (a tuple comes back a list, a str subclass a str) is
    decoded from the bytes saved, so the next message sees what any other worker would."""
    flow = _Keeper()
    flow.values = {"v": value}
    store = MemoryStore(clock=clock)
    engine = Engine(flow, store, clock=clock)
    kept = engine.handle("u", "x").snapshot
    reloaded = engine.peek("u")
    assert reloaded is not None
    assert kept == reloaded
    assert type(kept.data["v"]) is type(reloaded.data["v"])
    assert engine.handle("u", "x").snapshot.data["n"] == 2


def test_plain_data_is_recognised() -> None:
    assert is_plain({"a": [1, 2.5, "x", None, True, b"b", {"k": []}]})
    for value in ((1,), {1: 2}, [frozenset()], _Shade.DARK, {"a": {"b": (1,)}}):
        assert not is_plain(value)
