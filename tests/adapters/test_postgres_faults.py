"""PostgresStore under real faults: the server crashed and restarted under load, backends
terminated with ``pg_terminate_backend`` between calls and in the middle of one, statements
cut by ``statement_timeout``, and 8 real processes writing one user by compare-and-set.

Whatever happens, a call returns the right answer or raises StoreUnavailable: never a write
applied twice, never SAVED for a write that did not land, never an acknowledged write lost.
Every loop is bounded (a deadline or a count); the faults are real signals to real processes.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from adapters.postgres import PostgresStore  # noqa: E402
from adapters.postgres_schema import quote  # noqa: E402
from fsm.errors import StoreUnavailable  # noqa: E402
from fsm.records import HistoryEntry, Record, SaveResult, SaveStatus  # noqa: E402
from tests import postgres_servers  # noqa: E402

SPAWN = multiprocessing.get_context("spawn")


def entry(version: int) -> HistoryEntry:
    return HistoryEntry(
        version=version, from_stage="a", to_stage="b", event="e", update_from="t", at=1.0
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def gapless(store: PostgresStore, user_key: str) -> int:
    """The stored version, after checking the history holds every version up to it once."""
    record = store.load(user_key).record
    version = 0 if record is None else record.version
    assert [h.version for h in store.history(user_key)] == list(range(version, 0, -1))
    return version


@pytest.fixture
def url() -> str:
    return postgres_servers.standalone().url


@pytest.fixture
def schema() -> str:
    return postgres_servers.fresh_schema("faults")


@pytest.fixture
def admin(url: str) -> Iterator[Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


# -- the server crashed and restarted under load --------------------------------------------
class Writer(threading.Thread):
    """Saves version after version of one user until stopped; after a failure (outcome
    unknown) it reloads before writing again, so any refusal is a wrong result."""

    def __init__(self, store: PostgresStore, user_key: str, hold: threading.Event) -> None:
        super().__init__(daemon=True)
        self.store, self.user_key, self.hold = store, user_key, hold
        self.stop, self.idle = threading.Event(), threading.Event()
        self.version = self.acked = self.failures = 0
        self.unsure = False
        self.wrong: list[SaveResult] = []

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            if self.hold.is_set():
                self.idle.set()
                time.sleep(0.01)
                continue
            self.idle.clear()
            try:
                self.step()
            except StoreUnavailable:
                self.failures += 1
                self.unsure = True
                time.sleep(0.02)

    def step(self) -> None:
        if self.unsure:
            record = self.store.load(self.user_key).record
            self.version, self.unsure = (0 if record is None else record.version), False
        v = self.version + 1
        result = self.store.save(
            self.user_key, b"%d" % v, version=v, expected_version=v - 1, ttl=600, history=entry(v)
        )
        if not result.saved:
            self.wrong.append(result)
            self.unsure = True
            return
        self.version = self.acked = v


def test_a_server_crashed_under_load_keeps_every_acknowledged_write(schema: str) -> None:
    server = postgres_servers.private("postgres-crash")
    options: dict[str, Any] = {"history_limit": 100_000, "pool_timeout": 1.0, "retries": 1}
    store = PostgresStore.from_url(server.url, schema=schema, **options)
    hold = threading.Event()
    writers = [Writer(store, f"user{n}", hold) for n in range(4)]
    try:
        for writer in writers:
            writer.start()
        wait_for(lambda: all(w.acked >= 20 for w in writers), 30, "writes before the crash")
        server.crash()  # SIGQUIT: every backend gone at once, mid-write
        wait_for(lambda: all(w.failures >= 1 for w in writers), 30, "every writer to notice")
        hold.set()
        wait_for(lambda: all(w.idle.is_set() for w in writers), 30, "the writers to pause")
        acked = {w.user_key: w.acked for w in writers}
        server.start()  # crash recovery from the WAL
        check = PostgresStore.from_url(server.url, schema=schema, history_limit=100_000)
        try:
            for user_key, version in acked.items():
                # Every acknowledged write is there; one more if a write whose reply was
                # lost had landed.
                assert gapless(check, user_key) in (version, version + 1)
        finally:
            check.close()
        hold.clear()
        wait_for(lambda: all(w.acked >= acked[w.user_key] + 20 for w in writers), 60, "recovery")
    finally:
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.join(timeout=30)
        try:
            assert [w.wrong for w in writers] == [[]] * len(writers)
            for writer in writers:  # the store itself recovered: its own pool reads it all
                assert gapless(store, writer.user_key) == writer.version
        finally:
            store.close()
            server.stop()


# -- backends terminated ---------------------------------------------------------------------
def _backends(admin: Any, app: str, *, waiting: bool = False) -> list[int]:
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    if waiting:
        sql += " AND wait_event_type = 'Lock'"
    return [int(row[0]) for row in admin.execute(sql, [app]).fetchall()]


def _terminate(admin: Any, pids: list[int]) -> None:
    for pid in pids:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_backends_terminated_between_calls(url: str, schema: str, admin: Any) -> None:
    app = f"terminated-{schema}"
    store = PostgresStore.from_url(f"{url}?application_name={app}", schema=schema)
    worked = 0
    try:
        store.save("u", b"1", version=1, expected_version=0, ttl=600, history=entry(1))
        version = 1
        for _ in range(30):
            assert _backends(admin, app)  # the pool's connections, idle between calls
            _terminate(admin, _backends(admin, app))
            try:
                result = store.save(
                    "u", b"x", version=version + 1, expected_version=version, ttl=600,
                    history=entry(version + 1), message_id=f"m{version + 1}",
                )  # fmt: skip
            except StoreUnavailable:
                version = gapless(store, "u")
                continue
            assert result.saved, result
            version, worked = version + 1, worked + 1
        assert gapless(store, "u") == version
        assert worked >= 25  # a dead connection costs a retry, not the call
    finally:
        store.close()


class Blocked:
    """A row of ``user_key`` locked by another transaction, released on :meth:`release`."""

    def __init__(self, url: str, schema: str, user_key: str) -> None:
        self.conn = psycopg.connect(url)
        sql = f"SELECT 1 FROM {quote(schema)}.sessions WHERE user_key = %s FOR UPDATE"
        self.conn.execute(sql, [user_key.encode()])

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_backend_terminated_mid_statement(url: str, schema: str, admin: Any) -> None:
    app = f"midway-{schema}"
    store = PostgresStore.from_url(f"{url}?application_name={app}", schema=schema)
    try:
        store.save("u", b"1", version=1, expected_version=0, ttl=600, history=entry(1))
        for attempt, call in enumerate(
            [
                lambda: store.save(
                    "u", b"2", version=2, expected_version=1, ttl=600, history=entry(2),
                    message_id="m2",
                ),
                lambda: store.lock_and_load("u", "me", 600, message_id="m2"),
            ]
        ):  # fmt: skip
            blocked = Blocked(url, schema, "u")
            thread, out = _in_thread(call)
            wait_for(lambda: bool(_backends(admin, app, waiting=True)), 10, "a blocked call")
            _terminate(admin, _backends(admin, app, waiting=True))  # mid-statement
            time.sleep(0.1)
            blocked.release()
            thread.join(timeout=30)
            [result] = out
            if isinstance(result, StoreUnavailable):
                continue  # allowed: then the checks below hold all the same
            assert not isinstance(result, BaseException), result
            if attempt == 0:  # the save, retried after its backend died: applied once
                assert result.saved and store.load("u", message_id="m2").seen
            else:
                assert result.record == Record(b"2", 2) and result.seen and result.locked
                assert store.lock_info("u").owner == "me"  # type: ignore[union-attr]
        assert gapless(store, "u") == 2
    finally:
        store.close()


# -- a statement timeout -----------------------------------------------------------------------
def test_a_statement_timeout_is_store_unavailable(url: str, schema: str) -> None:
    store = PostgresStore.from_url(url, schema=schema, statement_timeout=0.2, retries=1)
    try:
        store.save("u", b"first", version=1, expected_version=0, ttl=600, history=entry(1))
        blocked = Blocked(url, schema, "u")
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                store.save("u", b"SECRET-PAYLOAD", version=2, expected_version=1, ttl=600)
            took = time.monotonic() - started
            assert 0.35 <= took < 5  # two attempts of 0.2 s each, a pause between
            assert info.value.operation == "save" and "QueryCanceled" in str(info.value)
            assert "SECRET" not in str(info.value)
            with pytest.raises(StoreUnavailable):
                store.acquire_lock("u", "me", 600)
        finally:
            blocked.release()
        assert store.lock_info("u") is None  # the timed-out lock attempt holds nothing
        assert store.load("u").record == Record(b"first", 1)  # the timed-out save never landed
        assert store.save("u", b"second", version=2, expected_version=1, ttl=600).saved
    finally:
        store.close()


# -- processes ---------------------------------------------------------------------------------
def _cas_worker(url: str, schema: str, saves: int) -> list[int]:
    store = PostgresStore.from_url(url, schema=schema, pool_max=2, history_limit=1000)
    produced: list[int] = []
    try:
        current = store.load("hot").record
        for _ in range(saves * 100):  # bounded: every round is a save or a fresh conflict
            if len(produced) == saves:
                break
            version = 0 if current is None else current.version
            result = store.save(
                "hot", b"%d" % (version + 1), version=version + 1, expected_version=version,
                ttl=600, history=entry(version + 1),
            )  # fmt: skip
            if result.saved:
                produced.append(version + 1)
                current = Record(b"%d" % (version + 1), version + 1)
            else:
                assert result.status is SaveStatus.CONFLICT
                current = result.current
    finally:
        store.close()
    return produced


def test_8_processes_by_compare_and_set_produce_gapless_versions(url: str, schema: str) -> None:
    first = PostgresStore.from_url(url, schema=schema, history_limit=1000)
    try:
        first.load("hot")  # the schema, made once before the workers start
        with ProcessPoolExecutor(8, mp_context=SPAWN) as pool:
            batches = list(pool.map(_cas_worker, [url] * 8, [schema] * 8, [50] * 8))
        assert [len(batch) for batch in batches] == [50] * 8
        assert sorted(v for batch in batches for v in batch) == list(range(1, 401))
        assert gapless(first, "hot") == 400
    finally:
        first.close()
