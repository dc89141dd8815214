"""PostgresStore beyond the shared contract (tests/adapters/test_store_contract.py runs that on
both PostgreSQL stores): the schema made and migrated on first use, URLs, reprs that never show
a password, expiry swept in bounded batches, a retried write applied once, and the engine (with
its timers) running on it. Each test works in a schema of its own on the session's server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from adapters.postgres import PostgresStore, parse_url  # noqa: E402
from adapters.postgres_async import AsyncPostgresStore  # noqa: E402
from adapters.postgres_schema import LATEST, MIGRATIONS, Migration, quote  # noqa: E402
from adapters.redis_server import free_port  # noqa: E402
from fsm import (  # noqa: E402
    AsyncEngine,
    Context,
    Engine,
    FakeClock,
    Flow,
    Outcome,
    Stage,
    on_enter,
    step,
    timeout,
)
from fsm.errors import StoreUnavailable  # noqa: E402
from fsm.records import HistoryEntry, Record, SaveStatus  # noqa: E402
from tests import postgres_servers  # noqa: E402
from tests.fsm.sample_flows import Counter  # noqa: E402


@pytest.fixture
def url() -> str:
    return postgres_servers.standalone().url


@pytest.fixture
def schema() -> str:
    return postgres_servers.fresh_schema("store")


@pytest.fixture
def admin(url: str) -> Iterator[Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def store(url: str, schema: str) -> Iterator[PostgresStore]:
    clock = FakeClock()
    with_clock = PostgresStore.from_url(url, schema=schema, clock=clock)
    try:
        yield with_clock
    finally:
        with_clock.close()


def _applied(admin: Any, schema: str) -> list[tuple[int, str]]:
    rows = admin.execute(
        f"SELECT version, description FROM {quote(schema)}.fsm_schema ORDER BY version"
    ).fetchall()
    return [(int(v), str(d)) for v, d in rows]


def _tables(admin: Any, schema: str) -> set[str]:
    rows = admin.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
    ).fetchall()
    return {str(r[0]) for r in rows}


def entry(version: int) -> HistoryEntry:
    return HistoryEntry(
        version=version, from_stage="a", to_stage="b", event="e", update_from="t", at=1.0
    )


# -- the schema --------------------------------------------------------------------------------
def test_the_schema_is_made_on_first_use_and_recorded(url: str, schema: str, admin: Any) -> None:
    store = PostgresStore.from_url(url, schema=schema)
    try:
        assert _tables(admin, schema) == set()  # nothing is made before the first call
        assert store.load("u").record is None
        tables = {"fsm_schema", "sessions", "history", "seen", "quarantine", "timers", "counters"}
        tables |= {"limit_counted", "limit_waiting"}  # the WhatsApp messaging limit's count
        assert _tables(admin, schema) == tables
        assert _applied(admin, schema) == [(m.version, m.description) for m in MIGRATIONS]
        assert MIGRATIONS[-1].version == LATEST
    finally:
        store.close()


def test_a_second_store_on_the_same_database_continues(url: str, schema: str, admin: Any) -> None:
    first = PostgresStore.from_url(url, schema=schema)
    for version in (1, 2, 3):
        saved = first.save(
            "u", b"v%d" % version, version=version, expected_version=version - 1, ttl=60,
            history=entry(version), message_id=f"m{version}",
        )  # fmt: skip
        assert saved.saved
    applied = admin.execute(
        f"SELECT version, applied_at FROM {quote(schema)}.fsm_schema"
    ).fetchall()
    second = PostgresStore.from_url(f"{url}?schema={schema}")
    try:
        loaded = second.load("u", message_id="m3")
        assert loaded.record == Record(b"v3", 3) and loaded.seen
        assert loaded.record.tag  # the tag of the write that stored it comes back
        stale = second.save("u", b"x", version=3, expected_version=2, ttl=60)
        assert stale.status is SaveStatus.CONFLICT and stale.current == Record(b"v3", 3)
        assert second.save("u", b"v4", version=4, expected_version=3, ttl=60).saved
        assert first.load("u").record == Record(b"v4", 4)
        assert [h.version for h in second.history("u")] == [3, 2, 1]
        # Nothing was migrated again.
        after = admin.execute(f"SELECT version, applied_at FROM {quote(schema)}.fsm_schema")
        assert after.fetchall() == applied
    finally:
        first.close()
        second.close()


def test_an_older_schema_is_migrated_forward(url: str, schema: str, admin: Any) -> None:
    """A schema at migration 1 (as a release with one migration left it) gets the rest."""
    s = quote(schema)
    admin.execute(f"CREATE SCHEMA {s}")
    admin.execute(
        f"CREATE TABLE {s}.fsm_schema (version integer PRIMARY KEY, description text NOT NULL, "
        "applied_at timestamptz NOT NULL DEFAULT now())"
    )
    first: Migration = MIGRATIONS[0]
    admin.execute(first.for_schema(s))
    admin.execute(f"INSERT INTO {s}.fsm_schema VALUES (1, %s)", [first.description])
    store = PostgresStore.from_url(url, schema=schema)
    try:
        assert store.save("u", b"x", version=1, expected_version=0, ttl=60).saved
        assert [v for v, _ in _applied(admin, schema)] == [m.version for m in MIGRATIONS]
    finally:
        store.close()


def test_stores_starting_together_migrate_once(url: str, schema: str, admin: Any) -> None:
    stores = [PostgresStore.from_url(url, schema=schema) for _ in range(4)]
    start = threading.Barrier(len(stores))
    failures: list[BaseException] = []

    def first_call(store: PostgresStore) -> None:
        start.wait()
        try:
            store.load("u")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=first_call, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for store in stores:
        store.close()
    assert failures == []
    assert [v for v, _ in _applied(admin, schema)] == [m.version for m in MIGRATIONS]


# -- URLs and reprs ------------------------------------------------------------------------------
def test_urls_name_the_server_and_the_schema() -> None:
    target = parse_url("postgresql://bot:pw@db.internal:6432/botdb?schema=bot_fsm&sslmode=require")
    assert (target.schema, target.where) == ("bot_fsm", "db.internal:6432/botdb")
    assert "schema" not in target.conninfo and "sslmode=require" in target.conninfo
    assert parse_url("postgres://db/x").schema == "fsm"  # the default schema
    assert parse_url("postgres://db/x").where == "db:5432/x"
    assert parse_url("postgresql://db/x", schema="other").schema == "other"
    assert parse_url("postgresql://db/x?schema=same", schema="same").schema == "same"
    with pytest.raises(ValueError, match="named twice"):
        parse_url("postgresql://db/x?schema=one", schema="two")
    for bad in ("1abc", "a-b", 'a"b', "x" * 64, ""):
        with pytest.raises(ValueError, match="schema name"):
            parse_url(f"postgresql://db/x?schema={bad}")
    with pytest.raises(ValueError, match="postgresql://"):
        parse_url("mysql://u:secret@db/x")


def test_no_password_in_reprs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cret-Passw0rd"
    port = free_port()  # nothing listens there
    url = f"postgresql://fsm:{secret}@127.0.0.1:{port}/postgres?schema=nowhere"
    assert secret not in repr(parse_url(url))
    store = PostgresStore.from_url(url, pool_timeout=0.3, retries=0, connect_timeout=2)
    astore = AsyncPostgresStore.from_url(url, pool_timeout=0.3, retries=0)
    try:
        assert repr(store) == f"PostgresStore(schema='nowhere', server='127.0.0.1:{port}/postgres')"
        assert secret not in repr(astore) and "127.0.0.1" in repr(astore)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            store.load("263770000016")
        assert time.monotonic() - started < 5

        async def load_then_close() -> BaseException:
            try:
                await astore.load("263770000016")
            except StoreUnavailable as exc:
                return exc
            finally:
                await astore.aclose()
            raise AssertionError("no StoreUnavailable")

        for error in (info.value, asyncio.run(load_then_close())):
            assert isinstance(error, StoreUnavailable) and error.operation == "schema"
            assert secret not in str(error) and "263770000016" not in str(error)
        assert secret not in caplog.text
    finally:
        store.close()


def test_a_password_protected_role(url: str, schema: str, admin: Any) -> None:
    secret = "pw-" + schema
    admin.execute(f"CREATE ROLE \"{schema}\" LOGIN SUPERUSER PASSWORD '{secret}'")
    role_url = url.replace("fsm@", f"{schema}:{secret}@")
    store = PostgresStore.from_url(role_url, schema=schema)
    try:
        assert store.save("u", b"x", version=1, expected_version=0, ttl=60).saved
        assert secret not in repr(store)
    finally:
        store.close()


# -- expiry ------------------------------------------------------------------------------------
def test_expired_rows_are_swept_in_bounded_batches(url: str, schema: str, admin: Any) -> None:
    clock = FakeClock()
    store = PostgresStore.from_url(
        url, schema=schema, clock=clock, sweep_batch=10, sweep_interval=1e9, dedupe_ttl=50
    )
    try:
        for n in range(25):
            assert store.save(f"gone{n}", b"x", version=1, expected_version=0, ttl=5).saved
        store.save("held", b"x", version=1, expected_version=0, ttl=5)
        assert store.acquire_lock("held", "me", 1000)
        store.save("ids", b"x", version=1, expected_version=0, ttl=1000, message_id="m1")
        clock.advance(10)
        assert [store.load(f"gone{n}").record for n in range(25)] == [None] * 25
        assert store.server_stats()["expired_keys"] == 26  # noticed at once, swept or not
        removed = []
        for _ in range(10):  # bounded: each sweep takes at most a batch per table
            removed.append(store.sweep())
            if removed[-1] == 0:
                break
        assert removed[-1] == 0 and all(n <= 30 for n in removed)
        count = admin.execute(f"SELECT count(*) FROM {quote(schema)}.sessions").fetchone()
        assert count == (2,)  # "held" (its lease) and "ids" remain; their sessions' bytes do not
        assert store.server_stats()["expired_keys"] == 26  # the count survives the sweep
        assert store.lock_info("held") is not None and store.load("held").record is None
        clock.advance(50)
        assert not store.load("ids", message_id="m1").seen
        store.sweep()
        seen = admin.execute(f"SELECT count(*) FROM {quote(schema)}.seen").fetchone()
        assert seen == (0,)
    finally:
        store.close()


def test_a_save_sweeps_at_most_once_per_interval(url: str, schema: str, admin: Any) -> None:
    clock = FakeClock()
    store = PostgresStore.from_url(url, schema=schema, clock=clock, sweep_interval=30)
    try:
        for n in range(5):
            store.save(f"u{n}", b"x", version=1, expected_version=0, ttl=5)
        clock.advance(31)
        store.save("trigger", b"x", version=1, expected_version=0, ttl=100)
        count = admin.execute(f"SELECT count(*) FROM {quote(schema)}.sessions").fetchone()
        assert count == (1,)
    finally:
        store.close()


def test_the_dedupe_window_keeps_the_last_1000_message_ids(store: PostgresStore) -> None:
    for version in range(1, 1002):
        result = store.save(
            "u", b"x", version=version, expected_version=version - 1, ttl=60,
            message_id=f"wamid.{version:060d}",
        )  # fmt: skip
        assert result.saved
    assert not store.load("u", message_id=f"wamid.{1:060d}").seen
    assert all(store.load("u", message_id=f"wamid.{n:060d}").seen for n in (2, 500, 1001))


# -- a retried write ---------------------------------------------------------------------------
def test_a_retried_save_whose_first_attempt_landed_is_saved_once(store: PostgresStore) -> None:
    """As after a reply lost on a broken connection: the retry finds its own write."""
    assert store.save("u", b"one", version=1, expected_version=0, ttl=60).saved
    call = store._ops.save(
        "u", b"two", version=2, expected_version=1, ttl=60, history=entry(2), message_id="m"
    )
    assert store._run(call).saved  # the first attempt: it lands (its reply "lost")
    assert call.retried and call.params_for(1)["retried"]
    again = store._execute(call, call.params_for(1))  # the retry: not a duplicate, not a conflict
    assert again.saved and again.tag == store.load("u").record.tag  # type: ignore[union-attr]
    assert store.history("u") == [entry(2)]
    # With a lease asked for: the retry takes it, or says it could not (unleased).
    call = store._ops.save("u", b"3", version=3, expected_version=2, ttl=60, owner="a", lease=30)
    assert store._run(call).saved
    assert store.release_lock("u", "a") and store.acquire_lock("u", "b", 30)
    unleased = store._execute(call, call.params_for(1))
    assert unleased.saved and unleased.unleased
    # A lock attempt that landed: the retry finds the lease already its own.
    lock = store._ops.acquire_lock("v", "me", 30)
    assert store._run(lock) and store._execute(lock, lock.params_for(1))
    assert not store._run(store._ops.acquire_lock("v", "me", 30))  # never re-entrant otherwise


# -- the engine on it ----------------------------------------------------------------------------
class Reminder(Flow):
    name = "reminder"
    stages = (Stage("a", ("x",)),)
    transitions = ()

    @on_enter("a", "x")
    def prompt(self, ctx: Context) -> list[str]:
        return ["?"]

    @step("a", "x")
    def x(self, ctx: Context) -> Outcome:
        return ctx.stay("ok")

    @timeout("a", "x", after=60)
    def nudge(self, ctx: Context) -> Outcome:
        return ctx.stay("still there?")


def test_the_engine_runs_on_it(store: PostgresStore) -> None:
    engine = Engine(Counter(), store, recent=0)
    engine.handle("+263770000016", "go", message_id="m0")
    for n in range(1, 6):
        result = engine.handle("+263770000016", "+1", message_id=f"m{n}")
        assert result.texts == [str(n)] and result.snapshot.version == n + 1
    again = engine.handle("+263770000016", "+1", message_id="m3")
    assert again.duplicate and again.snapshot.version == 6
    assert [h.version for h in store.history("+263770000016")] == [6, 5, 4, 3, 2, 1]


def test_the_engine_fires_timers_from_the_index(url: str, schema: str) -> None:
    clock = FakeClock()
    store = PostgresStore.from_url(url, schema=schema, clock=clock)
    try:
        engine = Engine(Reminder(), store, clock=clock)
        engine.handle("u", "hi", message_id="m1")
        assert [d.user_key for d in store.indexed_due()] == ["u"]
        assert engine.fire_due() == 0
        clock.advance(61)
        said: list[list[str]] = []
        assert engine.fire_due(on_result=lambda user, r: said.append(r.texts)) == 1
        assert said == [["still there?"]]
    finally:
        store.close()


def test_the_async_engine_runs_on_the_async_store(url: str, schema: str) -> None:
    async def conversation() -> list[int]:
        store = AsyncPostgresStore.from_url(url, schema=schema)
        try:
            engine = AsyncEngine(Counter(), store, recent=0)
            versions = []
            for n, text in enumerate(["go", "+1", "+1"]):
                result = await engine.handle("u", text, message_id=f"m{n}")
                versions.append(result.snapshot.version)
            return versions
        finally:
            await store.aclose()

    assert asyncio.run(conversation()) == [1, 2, 3]
    sync = PostgresStore.from_url(url, schema=schema)
    try:
        assert sync.load("u").record.version == 3  # type: ignore[union-attr]
    finally:
        sync.close()


def test_without_binaries_the_reason_says_how_to_get_them(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters import postgres_server

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(postgres_server.BINARY_ENV, raising=False)
    monkeypatch.setattr(postgres_server, "_DEBIAN", str(tmp_path))
    with pytest.raises(postgres_server.PostgresServerMissing, match="scripts/dev setup"):
        postgres_server.postgres_binaries()
    monkeypatch.setenv(postgres_server.BINARY_ENV, str(tmp_path))
    with pytest.raises(postgres_server.PostgresServerMissing, match=postgres_server.BINARY_ENV):
        postgres_server.postgres_binaries()
