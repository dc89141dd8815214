"""Sends N messages, for counting instructions per message under callgrind (not collected).

Run, with two values of N, and divide the difference by the difference in N:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m tests.benchmarks.count_steps menu 500
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m tests.benchmarks.count_steps menu 2500

Cases: ``menu`` (the reference bot's menu step on the memory store), ``redis`` (the same on a
RedisStore, against a redis-server this script starts on a free loopback port; only the
worker's instructions are counted, the server is another process).
"""

from __future__ import annotations

import sys

from flows.credex import build_engine

BOB = "263770000002"  # tier 3, no offers: an invalid choice keeps him in the menu


def run(case: str, n: int) -> None:
    if case == "menu":
        engine = build_engine()
        engine.handle(BOB, "hi")
        for _ in range(n):
            engine.handle(BOB, "9")
        return
    if case == "redis":
        from adapters import RedisStore
        from tests.redis_servers import RedisServer

        server = RedisServer(name="count").start()
        try:
            store = RedisStore.from_url(server.url)
            engine = build_engine(store)
            engine.handle(BOB, "hi")
            for _ in range(n):
                engine.handle(BOB, "9")
            store.close()
        finally:
            server.stop()
        return
    raise SystemExit(f"unknown case {case!r}: menu or redis")


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]))
