"""Moving a live bot between stores with ``fsm backup`` and ``fsm restore`` (real CLI processes):
Redis to PostgreSQL while the bot keeps serving, then back, keeping versions, expiries,
history and pending outboxes; the procedure of docs/sql.md ("Moving a live bot").

The bot is an outbox engine on two threads; half its users never confirm a reply, so their
outboxes stay pending across the moves. Each move: a first backup and restore while the bot
serves on the old store; the bot stops; a second pass copies what changed since (the restore
keeps what the target holds at the same version, so it writes only those); the bot starts on
the new store and each conversation goes on from where it was.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter as Tally
from pathlib import Path

import pytest

from adapters import RedisStore
from adapters.postgres import PostgresStore
from fsm import Engine
from fsm.snapshot import decode_snapshot
from fsm.store import Store
from tests import postgres_servers, redis_servers
from tests.fsm.sample_flows import Counter

USERS = [f"2637700{n:05d}" for n in range(12)]
#: Users whose replies are never confirmed: their outboxes stay pending across the moves.
UNCONFIRMED = set(USERS[::2])
#: Seconds between two messages of one user, and messages per user per phase (at most, if a
#: move is slow): the history (50 entries) keeps every message of the test, with the restores'.
PACE, PER_PHASE = 0.5, 20
REPO = Path(__file__).resolve().parents[2]


class Bot:
    """An engine on ``store`` serving every user on two threads until stopped (or each user
    had ``PER_PHASE`` messages); counts what it applied."""

    def __init__(self, store: Store) -> None:
        self.engine = Engine(Counter(), store, outbox=True)
        self.applied: Tally[str] = Tally()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve, args=(USERS[i::2],), daemon=True) for i in (0, 1)
        ]

    def __enter__(self) -> Bot:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads)
        assert not self.errors, self.errors

    def _serve(self, users: list[str]) -> None:
        try:
            for _ in range(PER_PHASE):
                for user in users:
                    self._message(user)
                if self._stop.wait(PACE):
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self.errors.append(exc)

    def _message(self, user: str) -> None:
        result = self.engine.handle(user, "hi")
        assert not result.duplicate and not result.ignored, result
        self.applied[user] += 1
        if user not in UNCONFIRMED and result.outbox:
            keys = [o.key for o in result.outbox]
            assert self.engine.confirm(user, keys, lease=result.lease)


def fsm_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FSM_STORE", None)
    done = subprocess.run(
        [sys.executable, "-m", "fsm", *argv],
        capture_output=True, text=True, env=env, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


_moves = itertools.count(1)


def move(source: tuple[str, ...], target: tuple[str, ...], tmp: Path) -> tuple[str, str]:
    """Back up ``source`` and restore into ``target`` (``--store URL ...`` arguments); the
    restore's summary line."""
    path = tmp / f"move{next(_moves)}.jsonl"
    fsm_cli("backup", "-o", str(path), *source)
    return fsm_cli("restore", str(path), *target).stdout.strip(), str(path)


def state(store: Store) -> dict[str, tuple[int, bytes, int]]:
    """Each user's version, snapshot bytes and pending replies."""
    out = {}
    for user in USERS:
        record = store.load(user).record
        assert record is not None, user
        pending = len(decode_snapshot(record.payload).outbox)
        out[user] = (record.version, record.payload, pending)
    return out


def history(store: Store, user: str) -> list[tuple[int, str, str]]:
    """The user's history without the restores' own entries, oldest first."""
    return [
        (h.version, h.event, h.to_stage)
        for h in reversed(store.history(user))
        if h.event != "restore"
    ]


def check_moved(old: Store, new: Store) -> None:
    assert state(new) == state(old)
    for user in USERS:
        assert history(new, user) == history(old, user), user
        old_ttl, new_ttl = old.ttl(user), new.ttl(user)
        assert old_ttl is not None and new_ttl == pytest.approx(old_ttl, abs=10)


def counts(store: Store) -> dict[str, int]:
    return {user: decode_snapshot(store.load(user).record.payload).data["count"] for user in USERS}  # type: ignore[union-attr]


def live_move(bot: Bot, source: tuple[str, ...], target: tuple[str, ...], tmp: Path) -> str:
    """A first pass while ``bot`` serves on the source, then the cutover: the bot stops and
    a second pass copies what changed since the first. The second pass's summary."""
    first, _ = move(source, target, tmp)
    assert "restored" in first, first
    time.sleep(2 * PACE)  # the conversations go on after the first copy
    bot.__exit__()
    second, _ = move(source, target, tmp)
    assert re.search(r"\b[1-9][0-9]* restored", second), second  # what changed meanwhile
    return second


def test_a_live_bot_moves_from_redis_to_postgres_and_back(tmp_path: Path) -> None:
    namespace = f"move{os.getpid()}"
    redis_url = redis_servers.standalone().url
    schema = postgres_servers.fresh_schema("move")
    pg_url = f"{postgres_servers.standalone().url}?schema={schema}"
    on_redis = ("--store", redis_url, "--namespace", namespace)
    on_pg = ("--store", pg_url)
    redis_store = RedisStore.from_url(redis_url, namespace=namespace)
    pg_store = PostgresStore.from_url(pg_url)
    total: Tally[str] = Tally()
    try:
        bot = Bot(redis_store).__enter__()
        time.sleep(2 * PACE)  # every user has a conversation
        live_move(bot, on_redis, on_pg, tmp_path)
        total += bot.applied
        check_moved(redis_store, pg_store)
        assert counts(pg_store) == {u: total[u] - 1 for u in USERS}  # "hi" starts at 0
        assert all(state(pg_store)[u][2] > 0 for u in UNCONFIRMED)
        assert not any(state(pg_store)[u][2] for u in set(USERS) - UNCONFIRMED)

        bot = Bot(pg_store).__enter__()  # the bot goes on, on PostgreSQL
        time.sleep(2 * PACE)
        live_move(bot, on_pg, on_redis, tmp_path)  # and back
        total += bot.applied
        check_moved(pg_store, redis_store)
        with Bot(redis_store) as bot:
            time.sleep(2 * PACE)
        total += bot.applied
        assert counts(redis_store) == {u: total[u] - 1 for u in USERS}
    finally:
        redis_store.close()
        pg_store.close()
