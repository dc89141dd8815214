"""Auto-pipelining (adapters/redis_pipeline.py) under AsyncRedisStore, on real redis-servers:
one turn's commands travel as one pipeline, each caller gets its own reply or error, a script
the server lost is loaded and its commands sent again, a caller cancelled before the flush is
never sent, cancellations inside busy batches leave no wrong reply and no half write, and each
conversation's commands keep their order."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator

import pytest
import redis.asyncio
from redis.exceptions import ResponseError

from adapters import AsyncRedisStore, RedisStore
from adapters.redis_lua import Lua
from adapters.redis_pipeline import AutoPipeline
from fsm.records import SaveStatus
from tests import redis_servers
from tests.redis_servers import RedisServer

from .test_async_redis_store import SlowProxy, _cancellation_rounds, _namespace, entry, run


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A server of this module's own: its connection counts are these tests' alone."""
    own = RedisServer(name="pipeline").start()
    try:
        yield own
    finally:
        own.stop()


def _connections(server: RedisServer) -> int:
    with server.client() as client:
        return int(client.info("stats")["total_connections_received"])


@pytest.mark.parametrize("pipeline", [True, False])
def test_one_turns_commands_travel_together(server: RedisServer, pipeline: bool) -> None:
    namespace = _namespace()

    async def main() -> None:
        store = AsyncRedisStore.from_url(server.url, namespace=namespace, pipeline=pipeline)
        try:
            for n in range(300):
                await store.save(f"u{n}", b"x%d" % n, version=1, expected_version=0, ttl=60)
            before = _connections(server)
            loaded = await asyncio.gather(*(store.load(f"u{n}") for n in range(300)))
            opened = _connections(server) - before
        finally:
            await store.aclose()
        assert [r.record.payload for r in loaded] == [b"x%d" % n for n in range(300)]  # type: ignore[union-attr]
        # 300 loads at once: one pipeline on one connection, or (a command at a time) a
        # connection for each command in flight, up to the bound of 100.
        assert opened <= 1 if pipeline else opened >= 50, opened

    run(main)


def test_each_caller_gets_its_own_reply_or_error(server: RedisServer) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(server.url)
        batch = AutoPipeline(client, {})
        await client.set("pipe:string", "s")
        try:
            replies = await asyncio.gather(
                *(batch.command("SET", f"pipe:k{n}", n) for n in range(20)),
                batch.command("LPUSH", "pipe:string", "x"),  # WRONGTYPE: this caller's alone
                *(batch.command("GET", f"pipe:k{n}") for n in range(20)),
                return_exceptions=True,
            )
        finally:
            await batch.aclose()
            await client.aclose()
        assert replies[:20] == [True] * 20
        assert isinstance(replies[20], ResponseError) and "WRONGTYPE" in str(replies[20])
        assert replies[21:] == [str(n).encode() for n in range(20)]

    run(main)


def test_a_script_the_server_lost_is_loaded_and_its_commands_sent_again(
    server: RedisServer,
) -> None:
    namespace = _namespace()

    async def main() -> None:
        store = AsyncRedisStore.from_url(server.url, namespace=namespace)
        try:
            await store.save("warm", b"x", version=1, expected_version=0, ttl=60)
            with server.client() as client:
                client.script_flush()  # a restart, a failover: the scripts are gone
            saved = await asyncio.gather(
                *(
                    store.save(
                        f"u{n}", b"x", version=1, expected_version=0, ttl=60, history=entry(1)
                    )
                    for n in range(50)
                )
            )
        finally:
            await store.aclose()
        assert all(s.status is SaveStatus.SAVED for s in saved)
        sync = RedisStore.from_url(server.url, namespace=namespace)
        try:
            assert all(sync.history(f"u{n}") == [entry(1)] for n in range(50))  # once each
        finally:
            sync.close()

    run(main)


def test_a_caller_cancelled_before_the_flush_is_never_sent(server: RedisServer) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(server.url)
        batch = AutoPipeline(client, {"noop": Lua("return 1")})
        try:
            kept = asyncio.ensure_future(batch.command("SET", "pipe:kept", "1"))
            dropped = asyncio.ensure_future(batch.command("SET", "pipe:dropped", "1"))
            await asyncio.sleep(0)  # both queued, the flush not run yet
            dropped.cancel()
            assert await kept is True
            with pytest.raises(asyncio.CancelledError):
                await dropped
            await batch.aclose()
            assert await client.exists("pipe:kept", "pipe:dropped") == 1
            assert await client.get("pipe:dropped") is None
        finally:
            await client.aclose()

    run(main)


async def _neighbours(store: AsyncRedisStore, stop: asyncio.Event, seen: Counter[str]) -> None:
    """Conversations of their own, saving and loading until ``stop``, each reply checked: a
    reply of a cancelled command served to them would fail here."""

    async def one(user: str) -> None:
        version = 0
        while not stop.is_set() and version < 2000:
            saved = await store.save(
                user, b"%s-%d" % (user.encode(), version + 1), version=version + 1,
                expected_version=version, ttl=600,
            )  # fmt: skip
            assert saved.status is SaveStatus.SAVED, (user, saved)
            version += 1
            loaded = await store.load(user)
            assert loaded.record is not None
            assert loaded.record.payload == b"%s-%d" % (user.encode(), version)
            seen["neighbour calls"] += 2

    await asyncio.gather(*(one(f"n{k}") for k in range(12)))


def test_cancellations_inside_busy_batches_leave_no_wrong_reply_nor_half_a_write() -> None:
    """The cancellation rounds of test_async_redis_store, with neighbours filling every batch:
    each cancelled command is one of many in its pipeline."""
    server, namespace = redis_servers.standalone(), _namespace()
    sync = RedisStore.from_url(server.url, namespace=namespace)

    async def main() -> Counter[str]:
        proxy = await SlowProxy(server.port).start()
        store = AsyncRedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0", namespace=namespace)
        stop, seen = asyncio.Event(), Counter[str]()
        busy = asyncio.ensure_future(_neighbours(store, stop, seen))
        try:
            seen.update(await _cancellation_rounds(store, sync, rounds=200))
        finally:
            stop.set()
            await busy
            await store.aclose()
            await proxy.aclose()
        return seen

    try:
        seen = run(main)
    finally:
        sync.close()
    print(f"\ncancellation rounds with neighbours: {dict(seen)}")
    # Both windows were reached: cut while queued (never sent) and after the batch landed.
    assert seen["save cut before it landed"] >= 1 and seen["save cut after it landed"] >= 3, seen
    assert seen["neighbour calls"] >= 200, seen


def test_each_conversations_commands_keep_their_order(server: RedisServer) -> None:
    async def main() -> dict[str, list[bytes]]:
        client = redis.asyncio.Redis.from_url(server.url)
        batch = AutoPipeline(client, {})
        rng = random.Random(7)

        async def talk(user: str) -> None:
            for n in range(30):
                await batch.command("RPUSH", f"pipe:order:{user}", n)
                if rng.random() < 0.3:
                    await asyncio.sleep(0)  # uneven turns: batches mix users differently

        try:
            users = [f"u{k}" for k in range(40)]
            await asyncio.gather(*(talk(u) for u in users))
            return {u: await client.lrange(f"pipe:order:{u}", 0, -1) for u in users}
        finally:
            await batch.aclose()
            await client.aclose()

    lists = run(main)
    assert all(items == [str(n).encode() for n in range(30)] for items in lists.values())


def test_a_caller_cancelled_while_its_batch_waits_for_a_pipeline_is_never_sent(
    server: RedisServer,
) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(server.url)
        batch = AutoPipeline(client, {}, max_pipelines=1)
        try:
            busy = asyncio.ensure_future(batch.command("BLPOP", "pipe:empty", 0.3))
            await asyncio.sleep(0.05)  # its batch holds the only pipeline, 0.3 s
            waiting = asyncio.ensure_future(batch.command("SET", "pipe:late", "1"))
            await asyncio.sleep(0.05)  # flushed: its batch waits for the pipeline
            waiting.cancel()
            assert await busy is None
            await batch.aclose()
            assert await client.get("pipe:late") is None
        finally:
            await client.aclose()

    run(main)


def test_a_script_that_cannot_be_loaded_fails_its_callers_alone(server: RedisServer) -> None:
    async def main() -> list[object]:
        client = redis.asyncio.Redis.from_url(server.url)
        batch = AutoPipeline(client, {"bad": Lua("this is not Lua"), "good": Lua("return 7")})
        try:
            return await asyncio.gather(
                batch.command("SET", "pipe:fine", "1"),
                batch.script("bad", [], []),  # NOSCRIPT, then a SCRIPT LOAD that fails
                batch.script("good", [], []),  # NOSCRIPT too: loaded and sent again
                batch.command("GET", "pipe:fine"),
                return_exceptions=True,
            )
        finally:
            await batch.aclose()
            await client.aclose()

    with redis_servers.RedisServer.client(server) as sync:
        sync.script_flush()
    fine, bad, good, got = run(main)
    assert fine is True and got == b"1"
    assert isinstance(bad, ResponseError) and "NOSCRIPT" not in str(bad)
    assert good == 7
