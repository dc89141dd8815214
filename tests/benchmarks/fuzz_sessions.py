"""Corrupt session values by the thousand: does any user get stuck?

Writes one corrupted value into each of N users' sessions (100,000 by default) on a
redis-server it starts itself, then sends each user up to three messages through the
reference Credex bot and counts, per user:

- ``applied``: the first message was applied (the bytes were still usable);
- ``healed``: the session was quarantined byte for byte and the user reset, within three
  messages (the rule: no error repeats on every message);
- ``newer``: the value reads as a session of a deploy one version ahead: refused, untouched
  (rolling deploys must not wipe what newer workers wrote); not stuck;
- ``stuck``: the third message still raised. The target is 0.

Run: ``.venv/bin/python -m tests.benchmarks.fuzz_sessions`` (``--users 5000`` for a quicker
run, ``--store memory`` for the embedded store). Seeded, bounded in count.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections import Counter as Tally
from collections.abc import Callable

import msgspec

from adapters import MemoryStore, RedisStore, Store
from flows.credex import build_engine
from flows.credex.fake import FakeCredexApi
from fsm import Engine, FakeClock
from fsm.errors import FsmError, SchemaTooNew
from tests.redis_servers import RedisServer

ALICE = "263770000001"
Mutation = Callable[[random.Random, bytes], bytes]


def _flip(rng: random.Random, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(rng: random.Random, raw: bytes) -> bytes:
    return raw[: rng.randrange(len(raw))]


def _noise(rng: random.Random, raw: bytes) -> bytes:
    return rng.randbytes(rng.randint(0, 400))


def _field(rng: random.Random, raw: bytes) -> bytes:
    """One field of the snapshot array replaced by an odd value of any type."""
    fields = msgspec.msgpack.decode(raw)
    odd: list[object] = [
        None,
        -1,
        0,
        2**40,
        10**12 - 10**6,
        10**12 - 1,
        10**15,
        "x" * rng.randint(0, 40),
        [],
        {},
        [[[[1]]]],
        {"a": {"b": {"c": 1}}},
        3.5,
        True,
        rng.randint(-5, 12),
    ]
    deep: object = 1
    for _ in range(rng.choice([10, 70, 600])):
        deep = [deep]
    odd.append(deep)
    index = rng.randrange(len(fields))
    fields[index] = rng.choice(odd)
    return msgspec.msgpack.encode(fields)


def _data(rng: random.Random, raw: bytes) -> bytes:
    """The conversation's data given values of the wrong shape (the step may fail on them)."""
    fields = msgspec.msgpack.decode(raw)
    data = fields[4] if isinstance(fields[4], dict) else {}
    for name in list(data) or ["dashboard"]:
        if rng.random() < 0.5:
            data[name] = rng.choice([1, "x", [], {"x": 1}, None, [1, 2, 3]])
    fields[4] = data
    return msgspec.msgpack.encode(fields)


def _auth(rng: random.Random, raw: bytes) -> bytes:
    """The auth slot garbled: a token that is not one, an expiry or issue time anywhere."""
    fields = msgspec.msgpack.decode(raw)
    slot = fields[5]
    if isinstance(slot, list) and slot:
        at = rng.randrange(len(slot))
        slot[at] = rng.choice(["not-a-jwt", 0, 2**40, -(2**31), None, "eyJ.x.y"])
    return msgspec.msgpack.encode(fields)


MUTATIONS: list[Mutation] = [_flip, _truncate, _noise, _field, _data, _auth]


def _prefix(rng: random.Random, value: bytes) -> bytes:
    """On Redis: the value's ``<version>.<tag>:`` prefix damaged, sometimes."""
    head, _, payload = value.partition(b":")
    choice = rng.randrange(8)
    if choice == 0:
        return head.upper() + b":" + payload
    if choice == 1:
        versions = [0, 10**12 - 1, 10**12 - 10**6, 10**12, 10**14 - 1, 10**15 - 1, 10**15]
        return b"%d.%s:" % (rng.choice(versions), head[-8:]) + payload
    if choice == 2:
        return payload
    return value


def run(store: Store, users: int, seed: int) -> Tally[str]:
    clock = FakeClock()
    api = FakeCredexApi(clock=clock, token_ttl=3600)
    engine: Engine = build_engine(store, api, clock=clock, session_ttl=3600)
    engine.handle(ALICE, "hi")
    record = store.load(ALICE).record
    assert record is not None
    rng = random.Random(seed)
    outcome: Tally[str] = Tally()
    for n in range(users):
        user = f"2637{n:08d}"
        raw = rng.choice(MUTATIONS)(rng, record.payload)
        if isinstance(store, RedisStore):
            value = _prefix(rng, b"%d.0123abcd:" % record.version + raw)
            store.client.set(store.layout.session(user), value)
        else:
            store.save(user, raw, version=record.version, expected_version=0, ttl=3600)
        outcome[_talk(engine, user)] += 1
    return outcome


def _talk(engine: Engine, user: str) -> str:
    """Four messages: the first two may fail (the rule allows that much), the last two must
    be applied. A session that works once and then fails is stuck too."""
    before = engine.stats["corrupt"] + engine.stats["poisoned"]
    first_ok = True
    for attempt in range(4):
        try:
            engine.handle(user, ("hi", "1", "menu", "hi")[attempt])
        except SchemaTooNew:
            return "newer"
        except FsmError:
            if attempt >= 2:
                return "stuck"
            first_ok = first_ok and attempt > 0
    healed = engine.stats["corrupt"] + engine.stats["poisoned"] > before
    return "healed" if healed or not first_ok else "applied"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--store", choices=["redis", "memory"], default="redis")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    logging.getLogger("fsm.engine").setLevel(logging.ERROR)  # one warning per quarantine
    started = time.perf_counter()
    if args.store == "memory":
        outcome = run(MemoryStore(clock=FakeClock()), args.users, args.seed)
    else:
        server = RedisServer(name="fuzz").start()
        try:
            store = RedisStore.from_url(server.url, namespace="fuzz", quarantine_limit=2)
            outcome = run(store, args.users, args.seed)
            store.close()
        finally:
            server.stop()
    took = time.perf_counter() - started
    print(f"{args.users} users with a corrupted session on {args.store}, {took:.0f} s:")
    for name in ("applied", "healed", "newer", "stuck"):
        print(f"  {name:8} {outcome[name]:7d}")
    print("target: stuck == 0")


if __name__ == "__main__":
    main()
