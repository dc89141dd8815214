"""How fast the operator's commands go through a store, against a raw redis-py scan measured
in the same run (the least any tool must do: SCAN the session keys and GET each value).

Starts its own redis-server on a free loopback port, fills it with copies of a real Credex
session, prints a table, stops the server. Bounded: ``--sessions`` (default 20,000).
Run: ``.venv/bin/python -m tests.benchmarks.bench_ops`` (``--quick`` for 2,000 sessions).
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

from adapters.redis import RedisStore
from flows.credex import build_engine
from flows.credex.fake import FakeCredexApi
from fsm.clock import SYSTEM_CLOCK
from fsm.ops.backup import backup, restore
from fsm.ops.metrics import collect_metrics
from fsm.ops.migrate import migrate_sessions
from fsm.ops.validate import check_store
from fsm.snapshot import decode_snapshot
from tests.ops.conftest import schema_1
from tests.redis_servers import RedisServer


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def fill(store: RedisStore, n: int, payload: bytes, version: int) -> None:
    pipe = store.client.pipeline(transaction=False)
    for i in range(n):
        value = b"%d.%08x:" % (version, i) + payload
        pipe.set(store.layout.session(f"2637{i:08d}"), value, px=3_600_000)
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2,000 sessions")
    args = parser.parse_args()
    n = min(2_000 if args.quick else args.sessions, 200_000)
    server = RedisServer(name="bench-ops").start()
    try:
        store = RedisStore.from_url(server.url, namespace="ops")
        engine = build_engine(store, FakeCredexApi())
        snap = engine.handle("263770000001", "hi").snapshot
        record = store.load("263770000001").record
        assert record is not None
        fill(store, n - 1, record.payload, record.version)
        spec = engine.spec
        rows: list[tuple[str, float, str]] = []

        def raw_scan() -> int:
            count = 0
            keys: list[bytes] = []
            for key in store.client.scan_iter(match=store.layout.session_pattern, count=500):
                keys.append(key)
                if len(keys) >= 500:
                    store.client.mget(keys)
                    count += len(keys)
                    keys = []
            if keys:
                store.client.mget(keys)
                count += len(keys)
            return count

        base, counted = timed(raw_scan)
        assert counted == n
        rows.append(("raw redis-py SCAN + MGET (baseline)", base, ""))
        seconds, views = timed(lambda: sum(1 for _ in store.sessions()))
        assert views == n
        rows.append(("store.sessions() (value, TTL, lock)", seconds, ""))
        now = SYSTEM_CLOCK.now()
        seconds, bad = timed(lambda: list(check_store(store, spec, now=now)))
        rows.append(("fsm check", seconds, f"{len(bad)} invalid"))  # type: ignore[arg-type]
        seconds, metrics = timed(lambda: collect_metrics(store))
        rows.append(("fsm metrics", seconds, f"{metrics.sessions} sessions"))  # type: ignore[attr-defined]
        out = io.BytesIO()
        seconds, _ = timed(lambda: backup(store, out, clock=SYSTEM_CLOCK))
        size = len(out.getvalue())
        rows.append(("fsm backup", seconds, f"{size / n:.0f} file bytes/session"))
        seconds, report = timed(lambda: migrate_sessions(store, spec, clock=SYSTEM_CLOCK))
        rows.append(("fsm migrate (all current: reads only)", seconds, ""))
        target = RedisStore.from_url(server.url, namespace="restored")
        seconds, report = timed(
            lambda: restore(target, io.BytesIO(out.getvalue()), clock=SYSTEM_CLOCK)
        )
        rows.append(("fsm restore (into an empty namespace)", seconds, ""))
        old = schema_1(decode_snapshot(record.payload), flow_version=1, step="soon", stage="credex")
        fill(target, n, old, record.version)
        seconds, report = timed(lambda: migrate_sessions(target, spec, clock=SYSTEM_CLOCK))
        rows.append(("fsm migrate (all schema 1: rewrites)", seconds, ""))
        print(f"{n:,} sessions of {len(record.payload)} bytes, one redis-server on loopback\n")
        print(f"{'operation':<42} {'seconds':>8} {'sessions/s':>11} {'x baseline':>10}  note")
        for name, secs, note in rows:
            print(f"{name:<42} {secs:>8.2f} {n / secs:>11,.0f} {secs / base:>10.1f}  {note}")
        del snap, report
        store.close()
        target.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
