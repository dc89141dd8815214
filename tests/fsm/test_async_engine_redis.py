"""AsyncEngine on a real redis-server: concurrency on one loop, sync and async workers side by
side, and cancellation at random awaits."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import random
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from typing import Any

from adapters import AsyncRedisStore, RedisStore
from fsm import AsyncEngine, Engine, Result
from tests import redis_servers
from tests.fsm.async_flows import AsyncCounter
from tests.fsm.sample_flows import Counter

_namespaces = itertools.count(1)


def _namespace(name: str) -> str:
    return f"{name}-{os.getpid()}-{next(_namespaces)}"


def _run(url: str, namespace: str, main: Callable[[AsyncRedisStore], Awaitable[Any]]) -> Any:
    """``main(store)`` on a fresh event loop, with an AsyncRedisStore closed afterwards."""

    async def wrapped() -> Any:
        store = AsyncRedisStore.from_url(url, namespace=namespace, history_limit=5000)
        try:
            return await main(store)
        finally:
            await store.aclose()

    return asyncio.run(wrapped())


USERS, TASKS, PER_TASK = 50, 10, 3


def test_500_concurrent_conversations_on_one_loop_apply_every_message_once() -> None:
    """50 users x 10 tasks on one loop, each task sending 3 messages, one in five delivered
    twice, and an order (an action) per task: every message is applied once, every version
    of every user exactly once, every order's action called once."""
    url, namespace = redis_servers.standalone().url, _namespace("async500")
    flow = AsyncCounter()

    engines: list[AsyncEngine] = []

    async def main(store: AsyncRedisStore) -> list[tuple[str, Result, str]]:
        engine = AsyncEngine(flow, store, lock_wait=30.0)
        engines.append(engine)
        users = [f"user-{n}" for n in range(USERS)]
        for user in users:
            await engine.handle(user, "go")
        rng = random.Random(500)

        async def task(user: str, t: int) -> list[tuple[str, Result, str]]:
            out = []
            for i in range(PER_TASK):
                text = "order" if i == 0 else "+1"
                mid = f"{user}-t{t}-m{i}"
                out.append((user, await engine.handle(user, text, message_id=mid), text))
                if rng.random() < 0.2:  # a webhook re-delivery
                    out.append((user, await engine.handle(user, text, message_id=mid), "again"))
            return out

        batches = await asyncio.gather(*(task(u, t) for u in users for t in range(TASKS)))
        return [item for batch in batches for item in batch]

    results = _run(url, namespace, main)
    fresh = [(u, r) for u, r, text in results if text != "again"]
    assert not any(r.duplicate for _, r in fresh)
    assert all(r.duplicate for u, r, text in results if text == "again")
    # An order saves twice (the order, then its action); every other message once.
    per_user = TASKS * (PER_TASK + 1)
    store = RedisStore.from_url(url, namespace=namespace)
    try:
        for n in range(USERS):
            user = f"user-{n}"
            versions = sorted(h.version for h in store.history(user))
            assert versions == list(range(1, per_user + 2)), user  # gapless, none twice
            record = store.load(user).record
            assert record is not None and record.version == per_user + 1
    finally:
        store.close()
    assert len(flow.orders) == USERS * TASKS and set(flow.orders.values()) == {1}
    assert (flow.side_effects, flow.overlaps) == (0, 0)
    # Concurrent tasks read and wrote in every order: none of it is a version that went back.
    assert engines[0].stats["version_regressions"] == 0


def _alternate(kind: str, url: str, namespace: str, users: list[str], rounds: int) -> None:
    """One worker process: ``rounds`` "+1" messages per user, round-robin."""
    if kind == "sync":
        store = RedisStore.from_url(url, namespace=namespace, history_limit=5000)
        engine = Engine(Counter(), store)
        for r in range(rounds):
            for user in users:
                engine.handle(user, "+1", message_id=f"{kind}-{user}-{r}")
        store.close()
        return

    async def main(astore: AsyncRedisStore) -> None:
        engine = AsyncEngine(Counter(), astore)
        for r in range(rounds):
            for user in users:
                await engine.handle(user, "+1", message_id=f"{kind}-{user}-{r}")

    _run(url, namespace, main)


def test_a_sync_and_an_async_engine_in_two_processes_share_the_users_of_one_redis() -> None:
    url, namespace = redis_servers.standalone().url, _namespace("mixed")
    users, rounds = [f"u{n}" for n in range(8)], 60
    store = RedisStore.from_url(url, namespace=namespace, history_limit=5000)
    try:
        for user in users:
            Engine(Counter(), store).handle(user, "go")
        spawn = multiprocessing.get_context("spawn")
        workers = [
            spawn.Process(target=_alternate, args=(kind, url, namespace, users, rounds))
            for kind in ("sync", "async")
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
            assert worker.exitcode == 0
        engine = Engine(Counter(), store)
        for user in users:
            snapshot = engine.peek(user)
            assert snapshot is not None
            assert (snapshot.data["count"], snapshot.version) == (2 * rounds, 2 * rounds + 1)
            versions = sorted(h.version for h in store.history(user))
            assert versions == list(range(1, 2 * rounds + 2))
            # Both workers wrote (update_from names each process).
            writers = {h.update_from for h in store.history(user)[:-1]}
            assert len(writers) == 2, writers
    finally:
        store.close()


def test_cancellation_at_random_awaits_leaves_old_or_new_state_and_no_lease() -> None:
    """A seeded loop of messages cancelled after a random delay, on plain steps and on a step
    that runs under the lease: afterwards the lease is free, the stored count is the old or
    the new one (never half), another user's reads are still right (no reply crossed over
    on a reused connection), and a re-delivery applies the message exactly once."""
    url, namespace = redis_servers.standalone().url, _namespace("cancel")
    rng = random.Random(28858)

    async def main(store: AsyncRedisStore) -> Tally[str]:
        engine = AsyncEngine(AsyncCounter(), store, lock_ttl=5.0)
        await engine.handle("witness", "go")
        await engine.handle("witness", "+1")
        await engine.handle("plain", "go")
        await engine.handle("leased", "go")
        await engine.handle("leased", "side")
        seen: Tally[str] = Tally()
        for i in range(120):
            user = "plain" if i % 2 else "leased"
            before = await engine.peek(user)
            assert before is not None
            mid = f"{user}-{i}"
            task = asyncio.create_task(engine.handle(user, "+1", message_id=mid))
            await asyncio.sleep(rng.uniform(0, 0.004))
            task.cancel()
            try:
                await task
                seen["finished"] += 1
            except asyncio.CancelledError:
                seen["cancelled"] += 1
            assert await store.lock_info(user) is None, f"lease left held after message {i}"
            after = await engine.peek(user)
            assert after is not None
            applied = after.version - before.version
            assert applied in (0, 1) and after.data["count"] == before.data["count"] + applied
            seen["applied" if applied else "not applied"] += 1
            witness = await engine.peek("witness")
            assert witness is not None and witness.data == {"count": 1}
            again = await engine.handle(user, "+1", message_id=mid)
            assert again.duplicate == bool(applied)
            assert again.snapshot.data["count"] == before.data["count"] + 1
        return seen

    seen = _run(url, namespace, main)
    # The seeded delays cancel some messages before the save and let others land: both sides
    # of the race were exercised.
    assert seen["cancelled"] > 10 and seen["applied"] > 10 and seen["not applied"] > 10, seen
