"""Redis memory per armed conversation: what two armed timers and their index entry cost.

Starts its own redis-server on a free loopback port, prints figures, stops the server.
Run: ``.venv/bin/python -m tests.benchmarks.bench_timer_memory [--conversations 10000]``.

Each case starts from an empty server (``FLUSHALL``, so the keyspace's own tables grow alike
in every case) and saves N conversations through an Engine on RedisStore, on the system
clock; the figure is the growth of ``INFO used_memory`` per conversation:

- armed: :class:`~tests.timers.timer_flows.Nudge` driven to ``order.confirm`` ("hi", "1",
  "5"), two timers armed (10 and 25 minutes) and one entry in the index of deadlines;
- unarmed, same messages: :class:`Unarmed`, the same flow without its timers, driven the same
  way (the same history, seen ids and data: the difference is the timers alone);
- unarmed at menu.home: Nudge kept at its menu by three messages ("hi", "x", "y").

It also prints what the index itself takes per entry (``MEMORY USAGE`` of its keys, and the
``used_memory`` freed by deleting them), whether every shard is still a listpack, and what the
same entries would take as one unsharded sorted set. The
target (issue 27): an armed conversation at most about 100 bytes more than an unarmed one.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import redis

from adapters import RedisStore
from adapters.redis_server import RedisServer
from fsm import Context, Engine, Flow, Outcome, on_enter, step
from tests.timers.timer_flows import Nudge

#: The target: bytes an armed conversation may take beyond an unarmed one.
TARGET_BYTES = 100


class Unarmed(Flow):
    """:class:`Nudge`'s menu and order, without its timers and events."""

    name = "nudge"
    stages = Nudge.stages
    transitions = Nudge.transitions

    @on_enter("menu", "home")
    def home_prompt(self, ctx: Context) -> list[str]:
        return ["Menu: 1 to order"]

    @step("menu", "home")
    def home(self, ctx: Context) -> Outcome:
        return ctx.go("order") if ctx.text == "1" else ctx.stay("Say 1")

    @on_enter("order", "amount")
    def amount_prompt(self, ctx: Context) -> list[str]:
        return ["How much?"]

    @step("order", "amount")
    def amount(self, ctx: Context) -> Outcome:
        return ctx.stay(step="confirm", set={"amount": ctx.text})

    @on_enter("order", "confirm")
    def confirm_prompt(self, ctx: Context) -> list[str]:
        return [f"Confirm {ctx.data['amount']}? yes/no"]

    @step("order", "confirm")
    def confirm(self, ctx: Context) -> Outcome:
        return ctx.go("done", "Ordered.") if ctx.text in ("yes", "no") else ctx.stay("yes or no?")


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def seed(
    client: redis.Redis, namespace: str, flow: Flow, texts: tuple[str, ...], n: int
) -> RedisStore:
    """Save ``n`` conversations of ``flow``, each sent ``texts``; checks where they end. One
    client for every case: its connection is the server's one client, measured in none."""
    store = RedisStore(client, namespace=namespace)
    engine = Engine(flow, store)
    for i in range(n):
        user = f"26377{i:07d}"
        for k, text in enumerate(texts):
            result = engine.handle(user, text, message_id=f"wamid.{user}.{k}")
        assert result.snapshot.step in ("confirm", "home"), result.snapshot.step
    return store


def per_conversation(
    client: redis.Redis, n: int, make: Callable[[int], RedisStore]
) -> tuple[float, RedisStore]:
    """Bytes per conversation of ``make(n)`` on an emptied server, after one warm-up round
    (the store's scripts loaded, the connection's buffers grown) that is flushed first."""
    make(min(n, 200))
    client.flushall()
    before = used_memory(client)
    store = make(n)
    return (used_memory(client) - before) / n, store


def index_figures(client: redis.Redis, store: RedisStore) -> tuple[int, float, float, str, int]:
    """(entries, bytes per entry by MEMORY USAGE, by used_memory freed, encodings, largest)."""
    keys = [k for k in store.layout.index_keys if client.exists(k)]
    shards = [k for k in store.layout.index_shards if client.exists(k)]
    entries = sum(int(client.zcard(k)) for k in shards)
    usage = sum(int(client.memory_usage(k, samples=0) or 0) for k in keys)
    encodings = sorted({client.object("encoding", k).decode() for k in shards})
    largest = max(int(client.zcard(k)) for k in shards)
    before = used_memory(client)
    client.delete(*keys)
    freed = before - used_memory(client)
    return entries, usage / entries, freed / entries, ",".join(encodings), largest


def one_sorted_set(client: redis.Redis, store: RedisStore) -> float:
    """Bytes per entry had the same entries been one sorted set (a skiplist past 128)."""
    pipe = client.pipeline(transaction=False)
    for key in store.layout.index_shards:
        pipe.zrange(key, 0, -1, withscores=True)
    entries = [pair for shard in pipe.execute() for pair in shard]
    client.zadd("one-sorted-set", dict(entries))
    usage = int(client.memory_usage("one-sorted-set", samples=0) or 0)
    client.delete("one-sorted-set")
    return usage / len(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    n = parser.parse_args().conversations
    server = RedisServer(name="bench-timer-memory").start()
    started = time.monotonic()
    try:
        with server.client() as client:
            plain, _ = per_conversation(
                client, n, lambda k: seed(client, "plain", Unarmed(), ("hi", "1", "5"), k)
            )
            menu, _ = per_conversation(
                client, n, lambda k: seed(client, "menu", Nudge(), ("hi", "x", "y"), k)
            )
            armed, store = per_conversation(
                client, n, lambda k: seed(client, "armed", Nudge(), ("hi", "1", "5"), k)
            )
            user = "26377" + "0" * 7
            armed_value = int(client.strlen(store.layout.session(user)))
            unsharded = one_sorted_set(client, store)
            entries, usage, freed, encodings, largest = index_figures(client, store)
            version = client.info("server")["redis_version"]
    finally:
        server.stop()
    print(f"Redis {version}, {n:,} conversations per case ({time.monotonic() - started:.1f} s)")
    print(f"unarmed, same messages (order.confirm)  {plain:7.0f} B/conversation")
    print(f"unarmed at menu.home                    {menu:7.0f} B/conversation")
    print(f"armed (order.confirm, 2 timers)         {armed:7.0f} B/conversation")
    print(f"  difference to unarmed, same messages  {armed - plain:7.0f} B  (the target's)")
    print(f"  difference to unarmed at menu.home    {armed - menu:7.0f} B")
    print(f"  the armed session value               {armed_value:7d} B")
    print(f"index: {entries:,} entries, largest shard {largest}, encoding {encodings}")
    print(f"  MEMORY USAGE of its keys              {usage:7.1f} B/entry")
    print(f"  used_memory freed by deleting them    {freed:7.1f} B/entry")
    print(f"  as one sorted set instead (skiplist)  {unsharded:7.1f} B/entry")
    verdict = "met" if armed - plain <= TARGET_BYTES else "NOT met"
    print(f"target: armed - unarmed <= {TARGET_BYTES} B: {verdict}")


if __name__ == "__main__":
    main()
