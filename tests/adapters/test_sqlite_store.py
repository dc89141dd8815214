"""SQLiteStore beyond the contract suite: what a file adds.

The file outlives the store (a new store reads what an old one wrote, engines included); the
URLs it is named by, and the ones refused; a full disk is a clear StoreUnavailable and loses no
acknowledged write (a real process under a file-size limit); expired rows are swept in bounded
batches; files of another application or a newer layout are refused; nothing shows a payload.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import resource
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from adapters import AsyncSQLiteStore, SQLiteStore
from adapters.sqlite import Swept
from adapters.sqlite_schema import APPLICATION_ID, SCHEMA_VERSION
from fsm import Engine
from fsm.clock import FakeClock
from fsm.errors import StoreUnavailable
from fsm.records import Due, HistoryEntry, Loaded, Record, SaveStatus
from tests.fsm.sample_flows import Counter

#: Looks like a token, so a test can see that no message, error or repr ever shows it.
SECRET = b"eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl"


def entry(version: int) -> HistoryEntry:
    return HistoryEntry(
        version=version, from_stage="a", to_stage="b", event="go", update_from="t", at=1.0
    )


def rows(path: Path, table: str) -> int:
    """Rows of ``table``, read by a connection of the test's own (expired ones too)."""
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# -- the file outlives the store --------------------------------------------------------------
def test_a_new_store_on_the_same_file_reads_what_the_old_one_wrote(tmp_path: Path) -> None:
    path, clock = tmp_path / "fsm.db", FakeClock()
    old = SQLiteStore(path, clock=clock)
    saved = old.save(
        "u", b"one", version=1, expected_version=0, ttl=600, history=entry(1), message_id="m1",
        owner="w", lease=60,
    )  # fmt: skip
    old.save("bad", b"\xc1garbage", version=1, expected_version=0, ttl=600)
    qid = old.quarantine("bad", b"\xc1garbage", "decode failed")
    old.index_due("u", "1.ab", 1_700_000_100.5)
    old.close()

    new = SQLiteStore(path, clock=clock)
    try:
        loaded = new.load("u", message_id="m1")
        assert loaded == Loaded(Record(b"one", 1), seen=True, locked=True)
        assert loaded.record is not None and loaded.record.tag == saved.tag != ""
        assert new.history("u") == [entry(1)]
        lock = new.lock_info("u")
        assert lock is not None and lock.owner == "w" and lock.ttl == 60
        assert new.ttl("u") == 600
        assert [(q.id, q.raw) for q in new.quarantined()] == [(qid, b"\xc1garbage")]
        assert list(new.indexed_due()) == [Due("u", "1.ab", 1_700_000_100.5)]
        assert new.save("u", b"two", version=2, expected_version=1, ttl=600, owner="w").saved
    finally:
        new.close()


def test_the_tag_names_the_write_and_a_stale_tag_is_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "fsm.db")
    try:
        first = store.save("u", b"one", version=1, expected_version=0, ttl=60)
        record = store.load("u").record
        assert record is not None and record.tag == first.tag and len(first.tag) == 8
        # Another write of version 1 (as if the first were lost): the old tag no longer fits.
        store.delete("u")
        store.save("u", b"uno", version=1, expected_version=0, ttl=60)
        stale = store.save(
            "u", b"two", version=2, expected_version=1, ttl=60, expected_tag=first.tag
        )
        assert stale.status is SaveStatus.CONFLICT and stale.current == Record(b"uno", 1)
        assert store.save("u", b"two", version=2, expected_version=1, ttl=60).saved
    finally:
        store.close()


def test_a_second_engine_on_the_file_continues_the_conversation(tmp_path: Path) -> None:
    path, clock = tmp_path / "bot.db", FakeClock()
    first = Engine(Counter(), SQLiteStore(path, clock=clock), clock=clock)
    assert first.handle("+263770000001", "go", message_id="w1").texts == ["counting"]
    assert first.handle("+263770000001", "+1", message_id="w2").texts == ["1"]
    assert first.handle("locked", "locked").texts == ["locked mode"]
    assert first.handle("locked", "+1").texts == ["1"]  # an action step: under the lease
    first.store.close()

    second = Engine(Counter(), SQLiteStore(path, clock=clock), clock=clock)
    try:
        assert second.handle("+263770000001", "+1", message_id="w3").texts == ["2"]
        again = second.handle("+263770000001", "+1", message_id="w2")  # a re-delivery
        assert again.duplicate
        assert second.handle("locked", "+1").texts == ["2"]
        snapshot = second.peek("+263770000001")
        assert snapshot is not None and snapshot.data == {"count": 2}
        assert snapshot.version == 3
    finally:
        second.store.close()


# -- URLs --------------------------------------------------------------------------------------
def test_from_url_reads_relative_and_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    relative = SQLiteStore.from_url("sqlite:///data/rel.db?synchronous=normal&timeout=2.5")
    absolute = SQLiteStore.from_url(f"sqlite:///{tmp_path / 'abs.db'}")  # four slashes
    try:
        assert relative.path == "data/rel.db" and relative.synchronous == "normal"
        assert absolute.path == str(tmp_path / "abs.db") and absolute.synchronous == "full"
        relative.save("u", b"x", version=1, expected_version=0, ttl=60)
        absolute.save("u", b"y", version=1, expected_version=0, ttl=60)
    finally:
        relative.close()
        absolute.close()
    assert rows(tmp_path / "data" / "rel.db", "sessions") == 1
    assert rows(tmp_path / "abs.db", "sessions") == 1
    spaced = SQLiteStore.from_url(f"sqlite:///{tmp_path}/with%20space.db")
    spaced.close()
    assert (tmp_path / "with space.db").exists()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite:///file:x?mode=memory", "unknown sqlite URL option"),
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite://host/fsm.db", "not a host"),
        ("redis://localhost/0", "not a sqlite URL"),
        ("sqlite:///fsm.db?cache=shared", "unknown sqlite URL option 'cache'"),
        ("sqlite:///fsm.db?timeout=-1", "timeout must be positive"),
        ("sqlite:///fsm.db?timeout=soon", "timeout must be a number"),
        ("sqlite:///fsm.db?synchronous=off", "synchronous must be one of full, normal"),
    ],
)
def test_from_url_refuses_what_it_cannot_serve(
    url: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=says):
        SQLiteStore.from_url(url)
    assert not (tmp_path / "fsm.db").exists()


def test_in_memory_databases_and_doubled_options_are_refused(tmp_path: Path) -> None:
    for path in (":memory:", "", "file:shared?mode=memory&cache=shared"):
        with pytest.raises(ValueError, match="in-memory"):
            SQLiteStore(path)
    with pytest.raises(TypeError, match="timeout"):
        SQLiteStore.from_url(f"sqlite:///{tmp_path / 'x.db'}?timeout=1", timeout=2.0)
    with pytest.raises(ValueError, match="history_limit"):
        SQLiteStore(tmp_path / "x.db", history_limit=0)


def test_the_async_store_opens_from_a_url_too(tmp_path: Path) -> None:
    import asyncio

    async def run() -> Loaded:
        store = AsyncSQLiteStore.from_url(f"sqlite:///{tmp_path / 'a.db'}", workers=2)
        try:
            await store.save("u", b"x", version=1, expected_version=0, ttl=60)
            return await store.load("u")
        finally:
            await store.aclose()

    assert asyncio.run(run()).record == Record(b"x", 1)
    with pytest.raises(TypeError):
        AsyncSQLiteStore()
    with pytest.raises(ValueError, match="workers"):
        AsyncSQLiteStore(tmp_path / "b.db", workers=0)


# -- the file's layout -------------------------------------------------------------------------
def test_a_new_file_is_marked_with_its_schema_and_reopened_as_is(tmp_path: Path) -> None:
    path = tmp_path / "fsm.db"
    SQLiteStore(path).close()
    SQLiteStore(path).close()  # the second open finds the tables: nothing to migrate
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_files_it_must_not_write_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE sessions (anything)")
    with pytest.raises(StoreUnavailable, match="another application's tables"):
        SQLiteStore(foreign)
    newer = tmp_path / "newer.db"
    SQLiteStore(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreUnavailable, match="newer than this code knows"):
        SQLiteStore(newer)
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_bytes(b"not a database, " * 100)
    with pytest.raises(StoreUnavailable, match="open"):
        SQLiteStore(not_sqlite)
    with pytest.raises(StoreUnavailable, match="unable to open"):
        SQLiteStore(tmp_path / "no such folder" / "fsm.db")


# -- expiry and the sweep ----------------------------------------------------------------------
def _expiring(store: SQLiteStore, users: int) -> None:
    for n in range(users):
        store.save(
            f"u{n}", b"x", version=1, expected_version=0, ttl=10, history=entry(1),
            message_id=f"m{n}", owner="w", lease=10,
        )  # fmt: skip


def test_expired_rows_are_invisible_at_once_and_swept_in_bounded_batches(tmp_path: Path) -> None:
    path, clock = tmp_path / "fsm.db", FakeClock()
    store = SQLiteStore(path, clock=clock, history_ttl=10, dedupe_ttl=10, sweep_every=10**6)
    try:
        _expiring(store, 25)
        clock.advance(11)
        assert store.load("u3", message_id="m3") == Loaded(None, seen=False, locked=False)
        assert store.history("u3") == [] and list(store.scan()) == []
        assert rows(path, "sessions") == 25  # invisible, not yet deleted
        assert store.server_stats()["expired_keys"] == 25
        assert store.sweep(limit=10) == Swept(sessions=10, leases=10, seen=10, histories=10)
        assert (rows(path, "sessions"), rows(path, "history")) == (15, 15)
        assert store.sweep(limit=10) == Swept(10, 10, 10, 10)
        assert store.sweep(limit=10) == Swept(5, 5, 5, 5)
        assert store.sweep(limit=10) == Swept(0, 0, 0, 0)
        for table in ("sessions", "leases", "seen", "history", "history_heads"):
            assert rows(path, table) == 0, table
        assert store.server_stats()["expired_keys"] == 25  # counted once, swept or not
        with pytest.raises(ValueError):
            store.sweep(limit=0)
    finally:
        store.close()


def test_writes_sweep_a_bounded_batch_every_few_transactions(tmp_path: Path) -> None:
    path, clock = tmp_path / "fsm.db", FakeClock()
    store = SQLiteStore(path, clock=clock, sweep_every=5, sweep_limit=3)
    try:
        for n in range(20):  # writes 5, 10, 15, 20 sweep: nothing has expired yet
            store.save(f"old{n}", b"x", version=1, expected_version=0, ttl=1)
        clock.advance(2)
        assert rows(path, "sessions") == 20
        for n in range(4):
            assert store.save(f"new{n}", b"y", version=1, expected_version=0, ttl=60).saved
        assert rows(path, "sessions") == 24  # no sweep yet
        assert store.acquire_lock("new0", "w", 60)  # write 25: sweeps 3, in its transaction
        assert rows(path, "sessions") == 21
        for _ in range(5):  # write 30 sweeps 3 more
            store.release_lock("new0", "nobody")
        assert rows(path, "sessions") == 18
        assert sorted(store.scan()) == [f"new{n}" for n in range(4)]
    finally:
        store.close()


# -- a full disk -------------------------------------------------------------------------------
LIMIT = 2_000_000  # bytes any file of the child may reach (a save writes ~10 pages to the WAL)


def fill_the_disk(path: str, results: Any) -> None:
    """A child process under a file-size limit: saves until the store refuses; reports what
    was acknowledged (user -> version and payload size) and the error's text."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))
    store = SQLiteStore(path)
    acknowledged: dict[str, int] = {}
    error = ""
    for n in range(1, 400):  # far more than fits: 400 x 5 KB
        user = f"u{n % 7}"
        version = acknowledged.get(user, 0) + 1
        payload = SECRET + os.urandom(5000)
        try:
            saved = store.save(user, payload, version=version, expected_version=version - 1,
                               ttl=3600, history=entry(version), message_id=f"m{n}")  # fmt: skip
        except StoreUnavailable as exc:
            error = f"{exc}|{exc!r}|{exc.detail}"
            break
        assert saved.saved
        acknowledged[user] = version
    readable = {user: (store.load(user).record or Record(b"", 0)).version for user in acknowledged}
    store.close()
    results.put((acknowledged, readable, error))


def test_a_full_disk_is_a_clear_error_and_loses_no_acknowledged_write(tmp_path: Path) -> None:
    path = tmp_path / "full.db"
    SQLiteStore(path).close()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=fill_the_disk, args=(str(path), results), daemon=True)
    child.start()
    try:
        acknowledged, readable, error = results.get(timeout=60)
    except queue.Empty:
        raise AssertionError("the child under a file-size limit never reported") from None
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert error.startswith("store unavailable during save for user u"), error
    assert "SQLITE_IOERR" in error or "SQLITE_FULL" in error, error
    assert SECRET.decode() not in error
    assert readable == acknowledged  # the failing process still reads what it wrote
    assert sum(acknowledged.values()) > 20
    store = SQLiteStore(path)  # no limit now: every acknowledged save is there
    try:
        for user, version in acknowledged.items():
            record = store.load(user).record
            assert record is not None and record.version == version, user
            assert record.payload.startswith(SECRET) and len(record.payload) == len(SECRET) + 5000
            assert store.history(user, limit=1)[0].version == version
        assert store.save("u0", b"fits", version=acknowledged["u0"] + 1,
                          expected_version=acknowledged["u0"], ttl=60).saved  # fmt: skip
    finally:
        store.close()


# -- what nothing shows --------------------------------------------------------------------------
def test_reprs_and_errors_show_no_payload(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "fsm.db")
    try:
        store.save("u", SECRET, version=1, expected_version=0, ttl=60)
        loaded = store.load("u")
        conflict = store.save("u", SECRET, version=3, expected_version=2, ttl=60)
        shown = [repr(store), repr(AsyncSQLiteStore(store=store)), repr(loaded), repr(conflict)]
        assert repr(store) == f"SQLiteStore({str(tmp_path / 'fsm.db')!r}, synchronous='full')"
        assert all(SECRET.decode() not in text and "c2VjcmV0" not in text for text in shown)
    finally:
        store.close()
    with pytest.raises(StoreUnavailable, match="the store is closed") as closed:
        store.load("u")
    assert SECRET.decode() not in str(closed.value)


def _forked_child(store: SQLiteStore, results: Any) -> None:
    record = store.load("parent").record
    saved = store.save("child", b"from the child", version=1, expected_version=0, ttl=60)
    results.put((None if record is None else record.version, saved.saved))
    store.close()


def test_a_forked_child_opens_connections_of_its_own(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "fsm.db")  # its connection opened before the fork
    try:
        assert store.save("parent", b"p", version=1, expected_version=0, ttl=60).saved
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=_forked_child, args=(store, results), daemon=True)
        child.start()
        try:
            assert results.get(timeout=30) == (1, True)
        finally:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0
        assert store.load("child").record == Record(b"from the child", 1)  # the parent's own
        assert store.save("parent", b"q", version=2, expected_version=1, ttl=60).saved
    finally:
        store.close()


def test_a_connection_is_closed_with_the_thread_that_opened_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "fsm.db")
    try:
        threads = [threading.Thread(target=store.load, args=("u",)) for _ in range(20)]
        for thread in threads:
            thread.start()
            thread.join(timeout=10)
        gc.collect()
        alive = [closer for closer in store._connections._closers if closer.alive]
        assert len(alive) <= 2  # this thread's, and at most one not yet collected
    finally:
        store.close()
