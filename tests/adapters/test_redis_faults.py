"""The engine on a real redis-server, under real processes and real faults.

Workers are separate processes (``spawn``), as production workers are; faults are real: a lock
holder SIGKILLed or SIGSTOPped, the server itself SIGKILLed and restarted.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
import redis

from adapters.redis import RedisStore
from fsm import Context, Engine, Flow, Outcome, Stage, action, decode_snapshot, step
from fsm.errors import StoreUnavailable
from tests import redis_servers
from tests.fsm.sample_flows import Counter

SPAWN = multiprocessing.get_context("spawn")


class Effects(Flow):
    """Every message leads to an action that counts itself in Redis, per message id."""

    name = "effects"

    takes_first_message = True
    stages = (Stage("s", ("ask", "do")),)
    transitions = ()

    def __init__(self, url: str, counter_key: str) -> None:
        self.redis = redis.Redis.from_url(url)
        self.counter_key = counter_key

    @step("s", "ask")
    def ask(self, ctx: Context) -> Outcome:
        return ctx.stay(step="do", set={"mid": ctx.message_id})

    @action("s", "do")
    def do(self, ctx: Context) -> Outcome:
        self.redis.hincrby(self.counter_key, ctx.data["mid"], 1)
        return ctx.stay("done", step="ask")


def _count_worker(url: str, namespace: str, ids: list[str]) -> list[tuple[int, bool]]:
    engine = Engine(Counter(), RedisStore.from_url(url, namespace=namespace), lock_wait=60)
    out = []
    for mid in ids:
        result = engine.handle("hot", "+1", message_id=mid)
        out.append((result.snapshot.version, result.duplicate))
    return out


def _effects_worker(url: str, namespace: str, ids: list[str]) -> int:
    flow = Effects(url, f"{namespace}:effects")
    engine = Engine(flow, RedisStore.from_url(url, namespace=namespace), lock_wait=60)
    return sum(not engine.handle("hot", "x", message_id=mid).duplicate for mid in ids)


def _start(url: str, namespace: str) -> None:
    Engine(Counter(), RedisStore.from_url(url, namespace=namespace)).handle("hot", "go")


def test_8_processes_x_250_messages_apply_2000_updates_with_gapless_versions() -> None:
    url, namespace = redis_servers.standalone().url, f"procs-{os.getpid()}"
    _start(url, namespace)
    with ProcessPoolExecutor(8, mp_context=SPAWN) as pool:
        batches = list(
            pool.map(_count_worker, [url] * 8, [namespace] * 8,
                     [[f"p{n}-{i}" for i in range(250)] for n in range(8)])
        )  # fmt: skip
    results = [r for batch in batches for r in batch]
    assert not any(duplicate for _, duplicate in results)
    assert sorted(v for v, _ in results) == list(range(2, 2002))  # each version exactly once
    stored = RedisStore.from_url(url, namespace=namespace).load("hot").record
    assert stored is not None and decode_snapshot(stored.payload).data["count"] == 2000


def test_redelivered_ids_across_processes_are_applied_once() -> None:
    url, namespace = redis_servers.standalone().url, f"redeliver-{os.getpid()}"
    _start(url, namespace)
    ids = [f"m{i}" for i in range(100)]
    with ProcessPoolExecutor(8, mp_context=SPAWN) as pool:
        batches = list(pool.map(_count_worker, [url] * 8, [namespace] * 8, [ids] * 8))
    applied = [r for batch in batches for r in batch if not r[1]]
    assert len(applied) == 100
    stored = RedisStore.from_url(url, namespace=namespace).load("hot").record
    assert stored is not None and decode_snapshot(stored.payload).data["count"] == 100


def test_a_side_effect_under_contention_runs_once_per_message() -> None:
    url, namespace = redis_servers.standalone().url, f"effects-{os.getpid()}"
    ids = [f"m{i}" for i in range(40)]
    with ProcessPoolExecutor(4, mp_context=SPAWN) as pool:
        applied = sum(pool.map(_effects_worker, [url] * 4, [namespace] * 4, [ids] * 4))
    assert applied == 40
    counts = redis.Redis.from_url(url).hgetall(f"{namespace}:effects")
    assert {k.decode(): int(v) for k, v in counts.items()} == {mid: 1 for mid in ids}


# -- a lock holder that dies, or stalls ------------------------------------------------------
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from adapters.redis import RedisStore
    url, namespace, ttl, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    store = RedisStore.from_url(url, namespace=namespace)
    loaded = store.lock_and_load("u", "holder", ttl)
    assert loaded is not None and loaded.record is not None
    print("locked", flush=True)
    if mode == "hold":
        time.sleep(60)
    sys.stdin.readline()  # resumed: now try to save what it prepared before it stalled
    result = store.save("u", b"from the stalled holder", version=loaded.record.version + 1,
                        expected_version=loaded.record.version, ttl=60, owner="holder")
    print(result.status.value, flush=True)
    """
)


def _holder(url: str, namespace: str, ttl: float, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url, namespace, str(ttl), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_killed_lock_holder_frees_the_lock_after_its_ttl_and_not_before() -> None:
    url, namespace = redis_servers.standalone().url, f"kill-{os.getpid()}"
    store = RedisStore.from_url(url, namespace=namespace)
    store.save("u", b"x", version=1, expected_version=0, ttl=60)
    holder = _holder(url, namespace, 2.0, "hold")
    taken = time.monotonic()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    while time.monotonic() - taken < 1.5:
        assert not store.acquire_lock("u", "next", 10)  # the dead holder's lock still stands
        time.sleep(0.1)
    deadline = time.monotonic() + 3
    while not store.acquire_lock("u", "next", 10):
        assert time.monotonic() < deadline, "the lock outlived its TTL"
        time.sleep(0.05)
    assert time.monotonic() - taken >= 1.9


def test_a_stalled_holder_resumed_after_its_ttl_cannot_save() -> None:
    url, namespace = redis_servers.standalone().url, f"stop-{os.getpid()}"
    store = RedisStore.from_url(url, namespace=namespace)
    store.save("u", b"v1", version=1, expected_version=0, ttl=60)
    holder = _holder(url, namespace, 1.0, "stall")
    holder.send_signal(signal.SIGSTOP)  # paused while holding the lease...
    try:
        time.sleep(1.3)  # ...past its TTL
        owner, loaded = store.acquire_lease_loaded("u", ttl=30, wait=5)
        assert loaded.record is not None and loaded.record.version == 1
        assert store.save(
            "u", b"from the new holder", version=2, expected_version=1, ttl=60, owner=owner
        ).saved
    finally:
        holder.send_signal(signal.SIGCONT)
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    status = holder.stdout.readline().strip()
    holder.wait(timeout=10)
    assert status in ("locked", "conflict")  # refused: the new holder has the lease
    assert store.load("u").record.payload == b"from the new holder"  # type: ignore[union-attr]
    store.release_lock("u", owner)
    # Even once the lease is free again, the stale version keeps it out.
    stale = store.save("u", b"late", version=2, expected_version=1, ttl=60, owner="holder")
    assert stale.status.value == "conflict"


# -- the server itself dies -------------------------------------------------------------------
def test_redis_killed_mid_load_and_restarted_loses_nothing_acknowledged() -> None:
    server = redis_servers.RedisServer(
        "--appendonly", "yes", "--appendfsync", "always", name="restart"
    ).start()
    url = server.url
    try:
        store = RedisStore.from_url(url, namespace="restart", retries=1)
        engine = Engine(Counter(), store, recent=0)
        engine.handle("u", "go")
        acknowledged: list[int] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def load() -> None:
            n = 0
            while not stop.is_set() and n < 3000:
                n += 1
                try:
                    result = engine.handle("u", "+1", message_id=f"m{n}")
                except StoreUnavailable:
                    time.sleep(0.01)
                    continue
                except BaseException as exc:  # noqa: BLE001 - any other error fails the test
                    errors.append(exc)
                    return
                acknowledged.append(result.snapshot.data["count"])

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(0.5)
        server.kill()  # mid-load
        time.sleep(0.3)
        server.start()  # same port, same dir: replays the append-only file
        time.sleep(0.5)
        stop.set()
        worker.join(timeout=60)
        assert not errors, errors
        assert acknowledged, "no message went through"
        record = store.load("u").record
        assert record is not None
        final = decode_snapshot(record.payload)  # not corrupt
        assert final.data["count"] >= max(acknowledged)  # nothing acknowledged was lost
        assert sorted(acknowledged) == acknowledged  # and never went backwards
        after = engine.handle("u", "+1").snapshot.data["count"]
        assert after == final.data["count"] + 1  # works again after the restart
    finally:
        server.stop()


def test_store_unavailable_carries_no_secret(tmp_path: Any) -> None:
    store = RedisStore.from_url("redis://:hunter2@127.0.0.1:1/0", retries=0)
    with pytest.raises(StoreUnavailable) as info:
        store.load("u")
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(store)


def test_a_sentinel_failover_is_followed_and_nothing_replicated_is_lost() -> None:
    setup = redis_servers.SentinelSetup()
    setup.start()
    try:
        store = RedisStore.from_url(setup.url, namespace="failover", retries=3)
        engine = Engine(Counter(), store)
        engine.handle("u", "go")
        for _ in range(20):
            engine.handle("u", "+1")
        with setup.primary.client() as primary:
            assert primary.execute_command("WAIT", 1, 5000) == 1  # the replica has all 21
        setup.primary.kill()
        deadline = time.monotonic() + 30
        result = None
        while time.monotonic() < deadline:  # unavailable until the Sentinel promotes
            try:
                result = engine.handle("u", "+1")
                break
            except StoreUnavailable:
                time.sleep(0.2)
        assert result is not None, "no failover within 30 s"
        assert result.snapshot.data["count"] == 21  # every write acknowledged before it, +1
        with setup.sentinel.client() as sentinel:
            primary_port = int(
                sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")[1]
            )
        assert primary_port == setup.replica.port  # the replica took over
    finally:
        setup.stop()
