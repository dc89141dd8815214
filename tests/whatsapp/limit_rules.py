"""The messaging limit's rules, run against any :class:`~adapters.whatsapp.limits.Tracker`
(in memory, in Redis, in SQL), and a process that admits users against a shared count."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from redis.asyncio import Redis

from adapters.urls import open_async_store
from adapters.whatsapp.limits import DAY, Tracker
from adapters.whatsapp.limits_redis import RedisMessagingLimit
from adapters.whatsapp.server import messaging_tracker

HOUR = 3600.0


async def counts_unique_users_in_a_moving_day(limit: Tracker) -> None:
    """``limit`` is a fresh tracker for 2 users a day."""
    assert await limit.admit("a", 0.0) and await limit.admit("b", HOUR)
    assert await limit.admit("c", 2 * HOUR) is None
    assert await limit.hold("c", 2 * HOUR) and not await limit.hold("c", 3 * HOUR)
    assert await limit.held("c") and not await limit.held("d")
    assert await limit.admit("d", DAY) is None  # a's slot frees, but c waits first
    assert await limit.ready(DAY) == ["c"]
    assert await limit.admit("c", DAY) is not None and not await limit.held("c")
    assert await limit.counts(DAY) == (2, 0)
    again = await limit.admit("b", DAY + 1)  # b again: counted from now, not anew
    assert again is not None and not again.new
    assert await limit.counts(DAY + HOUR) == (2, 0)  # b's first send is a day old
    await limit.give_back(again)  # b was counted before: stays counted
    assert await limit.counts(DAY + HOUR) == (2, 0)
    fresh = await limit.admit("e", 3 * DAY)  # everyone else's day is over
    assert fresh is not None and fresh.new and await limit.counts(3 * DAY) == (1, 0)
    await limit.give_back(fresh)  # nothing was sent: e is forgotten
    assert await limit.counts(3 * DAY) == (0, 0)
    assert await limit.ready(3 * DAY) == []


async def _admit_all(url: str, namespace: str, limit: int, users: list[str]) -> int:
    """Admit ``users`` against the count of the store ``url`` names (Redis, SQLite or
    PostgreSQL, as ``fsm serve`` picks it); how many got in."""
    if url.startswith(("sqlite:", "postgres")):
        store = open_async_store(url)
        try:
            tracker = messaging_tracker(limit, store)
            admitted = [await tracker.admit(user, 1000.0) for user in users]
        finally:
            await store.aclose()
        return sum(a is not None for a in admitted)
    client = Redis.from_url(url)
    try:
        tracker = RedisMessagingLimit(client, limit, namespace=namespace)
        admitted = [await tracker.admit(user, 1000.0) for user in users]
        return sum(a is not None for a in admitted)
    finally:
        await client.aclose()


def admit_in_processes(url: str, namespace: str, limit: int, root: str) -> list[int]:
    """4 processes admitting 10 distinct users each, at once, against one count of the store
    ``url`` names (run from the checkout at ``root``): how many each got in."""
    batches = [[f"2637{p}{n:04d}" for n in range(10)] for p in range(4)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.whatsapp.limit_rules",
                url,
                namespace,
                str(limit),
                *users,
            ],
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
            stdout=subprocess.PIPE,
            text=True,
        )
        for users in batches
    ]
    return [int(worker.communicate(timeout=60)[0]) for worker in workers]


if __name__ == "__main__":  # python -m tests.whatsapp.limit_rules URL NAMESPACE LIMIT USER...
    url, namespace, limit, *users = sys.argv[1:]
    print(asyncio.run(_admit_all(url, namespace, int(limit), users)))
