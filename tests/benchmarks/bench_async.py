"""AsyncEngine on Redis, against raw ``redis.asyncio`` baselines measured in the same run.

Starts its own redis-server on a free loopback port, prints a table, stops the server.
Run: ``.venv/bin/python -m tests.benchmarks.bench_async`` (``--quick`` for a smoke run).
Every loop is bounded in count; sequential cases are measured in alternating rounds and each
reports its best round. See docs/performance.md for what was measured and why.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio

from adapters import AsyncRedisStore
from adapters.redis_lua import Lua
from adapters.redis_pipeline import AutoPipeline
from flows.credex import build_async_engine
from flows.credex.fake import FakeCredexApi
from fsm import AsyncEngine
from tests.benchmarks.bench_redis import (
    ACTION_RATIO,
    BOB,
    COLD_RATIO,
    CPU_BEYOND_RAW_US,
    FASTER_THAN,
    FLOOR_SCRIPT,
    WARM_RATIO,
)
from tests.benchmarks.common import Ping, check, targets_header
from tests.redis_servers import RedisServer

Case = Callable[[], Awaitable[object]]


async def per_call(fn: Case, n: int, timer: Callable[[], float] = time.perf_counter) -> float:
    """Microseconds per awaited call over ``n`` sequential calls."""
    start = timer()
    for _ in range(n):
        await fn()
    return (timer() - start) / n * 1e6


async def interleaved(
    cases: dict[str, Case],
    n: int,
    rounds: int = 10,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, fn in cases.items():
            best[name] = min(best[name], await per_call(fn, max(1, n // rounds), timer))
    return best


async def throughput(tasks: int, per_task: int, make: Callable[[int], Case]) -> float:
    """Messages per second with ``tasks`` concurrent conversations on this loop, each
    sending ``per_task`` messages one after another."""

    async def talk(n: int) -> None:
        step = make(n)
        for _ in range(per_task):
            await step()

    began = time.perf_counter()
    await asyncio.gather(*(talk(n) for n in range(tasks)))
    return tasks * per_task / (time.perf_counter() - began)


async def measure(url: str, n: int) -> dict[str, float]:
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=64)
    client = redis.asyncio.Redis(connection_pool=pool)
    lua = Lua(FLOOR_SCRIPT)  # the stores' own way to run a script: one EVALSHA

    async def floor(keys: list[str], args: list[str]) -> Any:
        return await lua.arun(client, keys, args)

    store = AsyncRedisStore.from_url(url, namespace="bench-async")
    engine: AsyncEngine = build_async_engine(store, FakeCredexApi())
    unpiped_store = AsyncRedisStore.from_url(url, namespace="bench-async", pipeline=False)
    unpiped: AsyncEngine = build_async_engine(unpiped_store, FakeCredexApi())
    cold: AsyncEngine = build_async_engine(store, FakeCredexApi(), recent=0)
    acting = AsyncEngine(Ping(), store)
    try:
        await floor(keys=["floor"], args=["x"])
        await engine.handle(BOB, "hi")
        await unpiped.handle(BOB, "9")
        await acting.handle("ping", "x")

        async def get_eval(key: str) -> None:
            await client.get(key)
            await floor(keys=[key], args=["x" * 500])

        async def lock_get_set_unlock() -> None:  # the original bot's pattern
            await client.set("orig:lock", "me", nx=True, px=30000)
            await client.get("orig:state")
            await client.set("orig:state", "x" * 500, ex=1800)
            await client.delete("orig:lock")

        async def two_keys() -> None:  # aiogram's RedisStorage cycle
            await client.get("fsm:chat:user:state")
            await client.get("fsm:chat:user:data")
            await client.set("fsm:chat:user:state", "menu")
            await client.set("fsm:chat:user:data", "x" * 500)

        out = await interleaved(
            {
                "floor": lambda: floor(keys=["floor"], args=["x" * 500]),
                "get_eval": lambda: get_eval("floor2"),
                "original": lock_get_set_unlock,
                "two_key": two_keys,
                "warm": lambda: engine.handle(BOB, "9"),
                "warm_unpiped": lambda: unpiped.handle(BOB, "9"),
                "cold": lambda: cold.handle(BOB, "9"),
                "action": lambda: acting.handle("ping", "x"),
            },
            n,
        )
        cpu = await interleaved(
            {
                "cpu_floor": lambda: floor(keys=["floor"], args=["x" * 500]),
                "cpu_warm": lambda: engine.handle(BOB, "9"),
            },
            n,
            timer=time.process_time,
        )
        out |= cpu
        out |= await conversations(url, n, engine, get_eval, floor)
        return out
    finally:
        await store.aclose()
        await unpiped_store.aclose()
        await client.aclose()
        await pool.disconnect()


async def conversations(
    url: str,
    n: int,
    engine: AsyncEngine,
    get_eval: Callable[[str], Awaitable[None]],
    floor: Callable[..., Awaitable[Any]],
) -> dict[str, float]:
    """Messages per second at 50 and 500 concurrent conversations: the engine (auto-pipelined,
    the default, and without), raw GET + EVALSHA one command at a time (redis-py's way, on a
    pool of 64 connections: the engine's bound on what it has in flight is as wide), and the
    same raw commands auto-pipelined (:class:`~adapters.redis_pipeline.AutoPipeline`)."""
    out: dict[str, float] = {}
    unpiped_store = AsyncRedisStore.from_url(url, namespace="bench-async", pipeline=False)
    unpiped: AsyncEngine = build_async_engine(unpiped_store, FakeCredexApi())
    raw_client = redis.asyncio.Redis.from_url(url, max_connections=64)
    lua = Lua(FLOOR_SCRIPT)
    batched = AutoPipeline(raw_client, {"floor": lua})

    async def piped_get_eval(key: str) -> None:
        await batched.command("GET", key)
        await batched.script("floor", [key], ["x" * 500])

    try:
        await floor(keys=["floor"], args=["x"])
        for tasks in (50, 500):
            users = [f"bench-{tasks}-{i}" for i in range(tasks)]
            for user in users:
                await engine.handle(user, "hi")
                await unpiped.handle(user, "9")  # this engine holds their records too
            per_task = max(4, 4 * n // tasks)
            cases: dict[str, Callable[[int], Case]] = {
                "raw": lambda i: lambda: get_eval(f"raw-{i}"),
                "raw_piped": lambda i: lambda: piped_get_eval(f"raw-{i}"),
                "engine": lambda i, users=users: lambda: engine.handle(users[i], "9"),
                "unpiped": lambda i, users=users: lambda: unpiped.handle(users[i], "9"),
            }
            for _ in range(2):  # alternating rounds, the best of each kept
                for name, make in cases.items():
                    key = f"{name}_{tasks}"
                    out[key] = max(out.get(key, 0.0), await throughput(tasks, per_task, make))
        return out
    finally:
        await batched.aclose()
        await unpiped_store.aclose()
        await raw_client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    args = parser.parse_args()
    n = 500 if args.quick else 5000
    server = RedisServer(name="bench-async").start()
    try:
        m = asyncio.run(measure(server.url, n))
    finally:
        server.stop()
    floor, get_eval, warm = m["floor"], m["get_eval"], m["warm"]
    from redis.utils import HIREDIS_AVAILABLE

    print(f"reply parser: {'hiredis' if HIREDIS_AVAILABLE else 'redis-py'} (both clients)")
    print(f"{'what':46} {'us/msg':>8} {'msg/s':>8} {'ratio':>7}")
    for label, cost, base in [
        ("raw redis.asyncio EVALSHA (the floor)", floor, floor),
        ("raw redis.asyncio GET + EVALSHA", get_eval, floor),
        ("AsyncEngine, warm (reference menu step)", warm, floor),
        ("  the same, not auto-pipelined", m["warm_unpiped"], floor),
        ("AsyncEngine, cold (reference menu step)", m["cold"], get_eval),
        ("AsyncEngine, a step that leads to an action", m["action"], floor),
        ("original bot: lock/GET/SET/unlock", m["original"], floor),
        ("two-key store: 2 GET + 2 SET", m["two_key"], floor),
    ]:
        print(f"{label:46} {cost:8.1f} {1e6 / cost:8.0f} {cost / base:6.2f}x")
    print(f"{'worker CPU, raw EVALSHA / AsyncEngine warm':46} {m['cpu_floor']:8.1f} "
          f"{m['cpu_warm']:8.1f}  us")  # fmt: skip
    print(f"\n{'conversations on one loop, msg/s':46} {'50':>8} {'500':>8}")
    for label, name in [
        ("raw GET + EVALSHA, a command at a time", "raw"),
        ("raw GET + EVALSHA, auto-pipelined", "raw_piped"),
        ("AsyncEngine, warm, auto-pipelined", "engine"),
        ("AsyncEngine, warm, a command at a time", "unpiped"),
    ]:
        print(f"{label:46} {m[f'{name}_50']:8.0f} {m[f'{name}_500']:8.0f}")
    targets_header("AsyncEngine on Redis")
    verdicts = [
        check("warm / raw EVALSHA", warm / floor, WARM_RATIO, "x"),
        check("cold / raw GET+EVALSHA", m["cold"] / get_eval, COLD_RATIO, "x"),
        check("a message that runs an action / raw EVALSHA", m["action"] / floor,
              ACTION_RATIO, "x"),
        check("engine CPU beyond the raw client's, warm", m["cpu_warm"] - m["cpu_floor"],
              CPU_BEYOND_RAW_US, "us"),
        check("original bot's locked update / warm", m["original"] / warm, FASTER_THAN, "x",
              at_least=True),
        check("two-key cycle / warm", m["two_key"] / warm, FASTER_THAN, "x", at_least=True),
    ]  # fmt: skip
    for tasks, wanted in ((50, 1.3), (500, 1.5)):
        ratio = m[f"engine_{tasks}"] / m[f"raw_{tasks}"]
        verdicts.append(check(f"{tasks} conversations: engine / raw msg/s (one at a time)",
                              ratio, wanted, "x", at_least=True))  # fmt: skip
    print(f"\n{sum(verdicts)} of {len(verdicts)} targets met")


if __name__ == "__main__":
    main()
