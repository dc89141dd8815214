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

import redis.asyncio

from adapters import AsyncRedisStore
from flows.credex import build_async_engine
from flows.credex.fake import FakeCredexApi
from fsm import AsyncEngine
from tests.benchmarks.bench_redis import BOB, FLOOR_SCRIPT
from tests.redis_servers import RedisServer

Case = Callable[[], Awaitable[object]]


async def per_call(fn: Case, n: int, timer: Callable[[], float] = time.perf_counter) -> float:
    """Microseconds per awaited call over ``n`` sequential calls."""
    start = timer()
    for _ in range(n):
        await fn()
    return (timer() - start) / n * 1e6


async def interleaved(cases: dict[str, Case], n: int, rounds: int = 10) -> dict[str, float]:
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, fn in cases.items():
            best[name] = min(best[name], await per_call(fn, max(1, n // rounds)))
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
    floor = client.register_script(FLOOR_SCRIPT)
    store = AsyncRedisStore.from_url(url, namespace="bench-async")
    engine: AsyncEngine = build_async_engine(store, FakeCredexApi())
    try:
        await floor(keys=["floor"], args=["x"])
        await engine.handle(BOB, "hi")

        async def get_eval(key: str) -> None:
            await client.get(key)
            await floor(keys=[key], args=["x" * 500])

        out = await interleaved(
            {
                "floor": lambda: floor(keys=["floor"], args=["x" * 500]),
                "get_eval": lambda: get_eval("floor2"),
                "warm": lambda: engine.handle(BOB, "9"),
            },
            n,
        )
        out["cpu_floor"] = await per_call(
            lambda: floor(keys=["floor"], args=["x" * 500]), n // 2, time.process_time
        )
        out["cpu_warm"] = await per_call(lambda: engine.handle(BOB, "9"), n // 2, time.process_time)
        for tasks in (50, 500):
            users = [f"bench-{tasks}-{i}" for i in range(tasks)]
            for user in users:
                await engine.handle(user, "hi")
            per_task = max(4, 4 * n // tasks)
            out[f"raw_{tasks}"] = await throughput(
                tasks, per_task, lambda i: lambda: get_eval(f"raw-{i}")
            )
            out[f"engine_{tasks}"] = await throughput(
                tasks, per_task, lambda i, users=users: lambda: engine.handle(users[i], "9")
            )
        return out
    finally:
        await store.aclose()
        await client.aclose()
        await pool.disconnect()


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
    print(f"{'what':46} {'us/msg':>8} {'msg/s':>8} {'ratio':>7}  target")
    for label, cost, base, target in [
        ("raw redis.asyncio EVALSHA (the floor)", floor, floor, ""),
        ("raw redis.asyncio GET + EVALSHA", get_eval, floor, ""),
        ("AsyncEngine, warm (reference menu step)", warm, floor, "<= 1.5x the floor"),
    ]:
        print(f"{label:46} {cost:8.1f} {1e6 / cost:8.0f} {cost / base:6.2f}x  {target}")
    print(
        f"{'worker CPU, raw EVALSHA / AsyncEngine warm':46} {m['cpu_floor']:8.1f} "
        f"{m['cpu_warm']:8.1f}  us"
    )
    for tasks in (50, 500):
        raw, eng = m[f"raw_{tasks}"], m[f"engine_{tasks}"]
        label = f"{tasks} conversations on one loop: raw / engine"
        print(f"{label:46} {raw:8.0f} {eng:8.0f} {eng / raw:6.2f}x  >= 0.8x raw msg/s")


if __name__ == "__main__":
    main()
