"""Per-message cost and bytes per session on the SQL stores, against raw driver baselines
measured in the same run.

Run: ``.venv/bin/python -m tests.benchmarks.bench_sql [--messages N] [--users U] [--postgres]``.
Figures are measurements, not assertions: the exit status is 0 whatever they are.

- **SQLite**: an ``Engine(Counter(), SQLiteStore(path))`` handles N messages over U users
  (Counter: one step and one reply per message; every message also appends a history entry).
  *Warm*: each user's conversation is stored and was recently saved by this engine, so a
  message is one save (one write transaction). *Cold*: a second engine on a second store on
  the same file, holding no record (``recent=0``), so a message is a load and a save. The
  baselines run on the same file with the store's own connection settings (WAL, the store's
  ``synchronous``), through ``sqlite3`` directly: one ``UPDATE sessions SET payload=?,
  version=version+1 WHERE user_key=? AND version=?`` committed per iteration, with a payload of
  the session's size; and a ``SELECT`` then that ``UPDATE``.
- **Bytes per session**: U sessions of one message each (with its history entry and seen
  message id) in a new file; the file's growth after ``PRAGMA wal_checkpoint(TRUNCATE)``, over
  U, and the growth of each table with its indexes from ``dbstat`` where SQLite has it.
- **PostgreSQL** (``--postgres``; needs psycopg, ``adapters.postgres`` and the ``initdb`` and
  ``postgres`` binaries): a private server started as the tests start theirs
  (:class:`~adapters.postgres_server.PostgresServer`: a free loopback port, ``fsync=off``), the
  same cases on :class:`~adapters.postgres.PostgresStore` against raw psycopg round trips
  (``UPDATE ... WHERE version = $3``; ``SELECT`` then ``UPDATE``), and bytes per session from
  ``pg_total_relation_size`` of the store's tables (autovacuum off on those tables, so the
  figure is what the writes took, not when a vacuum ran).

Cases run in alternating rounds (a slow moment of the machine hits every case alike); every
message is timed on its own, so the figures are the median and the 95th percentile of all of
them, and messages per second is their count over their summed time (one thread: one core).
The targets (issue's): SQLite, a warm message <= 2x one raw UPDATE; PostgreSQL, a warm message
<= 1.5x one raw UPDATE round trip and a cold one <= 1.5x a raw SELECT + UPDATE (medians).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from adapters.sqlite import SQLiteOptions, SQLiteStore
from adapters.sqlite_schema import connect
from fsm import Engine
from fsm.store import SessionStore
from tests.fsm.sample_flows import Counter

#: A WhatsApp message id of realistic length (they are about 60 characters).
WAMID = "wamid.HBgMMjYzNzcwMDAwMDAxFQIAEhggQTNCNEY1RTZBN0I4QzlEMEUxRjJBM0I0"
#: Seconds the raw rows live (longer than any run).
RAW_TTL = 3600.0
SQLITE_WARM_TARGET = 2.0
POSTGRES_WARM_TARGET = POSTGRES_COLD_TARGET = 1.5

Case = Callable[[int], object]


class OutOfTime(RuntimeError):
    """The run's time limit (``--limit``) passed before its figures were measured."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """When the run must have finished: loops check it, beside their bound on count."""

    at: float

    def check(self, what: str) -> None:
        if time.monotonic() > self.at:
            raise OutOfTime(f"--limit passed while {what}")


@dataclass(frozen=True, slots=True)
class Figures:
    """One case: median and 95th percentile in microseconds, messages per second."""

    count: int
    median: float
    p95: float
    per_second: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Figures:
        ordered = sorted(samples)
        p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank
        return cls(len(ordered), statistics.median(ordered), p95, 1e6 * len(ordered) / sum(ordered))


def alternate(
    cases: dict[str, Case], count: int, rounds: int, deadline: Deadline
) -> tuple[dict[str, Figures], int]:
    """Each case called ``count`` times (its argument: the call's number), in ``rounds``
    alternating rounds, each call timed alone; stops after a round once the deadline passed.
    Returns each case's figures and the rounds run."""
    rounds = max(1, min(rounds, count))
    per_round = max(1, count // rounds)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    clock = time.perf_counter_ns
    ran = 0
    for r in range(rounds):
        for name, call in cases.items():
            found = samples[name]
            for i in range(r * per_round, (r + 1) * per_round):
                began = clock()
                call(i)
                found.append((clock() - began) / 1000)
        ran += 1
        if time.monotonic() > deadline.at:
            break
    return {name: Figures.of(found) for name, found in samples.items()}, ran


def users(prefix: int, n: int) -> list[str]:
    """``n`` phone-number keys, distinct for each ``prefix`` digit."""
    return [f"2637{prefix}{k:07d}" for k in range(n)]


def warm_up(engine: Engine, keys: Sequence[str], deadline: Deadline) -> None:
    """Each user's conversation started and counted once: stored, and at hand to ``engine``
    (unless it keeps none)."""
    for key in keys:
        engine.handle(key, "hi")
        engine.handle(key, "1")
        deadline.check("starting conversations")


def payload_of(store: SessionStore, key: str) -> bytes:
    record = store.load(key).record
    assert record is not None, f"{key} has no session"
    return record.payload


def seed_raw(
    store: SessionStore, keys: Sequence[str], payload: bytes, deadline: Deadline
) -> dict[str, int]:
    """A session of ``payload`` for each key, saved by the store: the rows the raw baselines
    update. Returns each key's version."""
    for key in keys:
        saved = store.save(key, payload, version=1, expected_version=0, ttl=RAW_TTL)
        assert saved.saved, f"{key}: {saved.status}"
        deadline.check("seeding raw rows")
    return dict.fromkeys(keys, 1)


def store_saves(store: SessionStore, keys: Sequence[str], sample: str, deadline: Deadline) -> Case:
    """``store.save`` alone, as a warm message calls it (compare-and-set on the version, a
    history entry appended), on rows of its own (``keys``), with ``sample``'s payload and
    history entry: the store's share of a warm message, without the engine's."""
    payload = payload_of(store, sample)
    entry = store.history(sample, limit=1)[0]
    versions = seed_raw(store, keys, payload, deadline)

    def save(i: int) -> None:
        key = keys[i % len(keys)]
        old = versions[key]
        saved = store.save(
            key, payload, version=old + 1, expected_version=old, ttl=RAW_TTL,
            history=msgspec.structs.replace(entry, version=old + 1),
        )  # fmt: skip
        assert saved.saved, f"{key}: {saved.status}"
        versions[key] = old + 1

    return save


# -- printing ------------------------------------------------------------------------------------
def table(rows: Sequence[tuple[str, Figures, Figures | None]]) -> None:
    """A row per case: its figures and, against its baseline, the ratio of medians and p95s."""
    print(f"  {'what':46} {'median us':>10} {'p95 us':>9} {'msg/s':>8} {'ratio':>7} {'p95':>7}")
    for what, fig, base in rows:
        ratios = "" if base is None else f" {fig.median / base.median:6.2f}x"
        ratios += "" if base is None else f" {fig.p95 / base.p95:6.2f}x"
        print(f"  {what:46} {fig.median:10.1f} {fig.p95:9.1f} {fig.per_second:8.0f}{ratios}")


def target(label: str, value: float, limit: float) -> bool:
    """Print the target line ``label`` (which states ``limit``) with the measured ratio of
    medians and MET or NOT MET; returns whether it was met."""
    verdict = "MET" if value <= limit else "NOT MET"
    print(f"  target: {label}: {value:.2f}x (medians) -> {verdict}")
    return value <= limit


# -- SQLite ----------------------------------------------------------------------------------------
def sqlite_options(synchronous: str | None) -> SQLiteOptions:
    """The store's options: its defaults, or the ``synchronous`` asked for."""
    return {} if synchronous is None else {"synchronous": synchronous}


def sqlite_times(
    folder: Path, n: int, u: int, synchronous: str | None, rounds: int, deadline: Deadline
) -> bool:
    path = folder / "times.db"
    options = sqlite_options(synchronous)
    store, cold_store = SQLiteStore(path, **options), SQLiteStore(path, **options)
    warm_keys, cold_keys, raw_keys = users(1, u), users(2, u), users(3, u)
    try:
        warm = Engine(Counter(), store, recent=max(10_000, u))
        cold = Engine(Counter(), cold_store, recent=0)  # never holds a record: load + save
        warm_up(warm, warm_keys, deadline)
        warm_up(cold, cold_keys, deadline)
        payload = payload_of(store, warm_keys[0])
        versions = seed_raw(store, raw_keys, payload, deadline)
        save = store_saves(store, users(4, u), warm_keys[0], deadline)
        with closing(connect(str(path), timeout=5.0, synchronous=store.synchronous)) as db:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            level = db.execute("PRAGMA synchronous").fetchone()[0]
            update = "UPDATE sessions SET payload = ?, version = version + 1 "
            update += "WHERE user_key = ? AND version = ?"
            select = "SELECT version, payload FROM sessions WHERE user_key = ?"

            def raw_update(i: int) -> None:
                key = raw_keys[i % u]
                assert db.execute(update, (payload, key, versions[key])).rowcount == 1
                versions[key] += 1

            def raw_select_update(i: int) -> None:
                key = raw_keys[i % u]
                version, _ = db.execute(select, (key,)).fetchone()
                assert db.execute(update, (payload, key, version)).rowcount == 1
                versions[key] = version + 1

            figures, ran = alternate(
                {
                    "raw": raw_update,
                    "warm": lambda i: warm.handle(warm_keys[i % u], "1"),
                    "save": save,
                    "raw2": raw_select_update,
                    "cold": lambda i: cold.handle(cold_keys[i % u], "1"),
                },
                n,
                rounds,
                deadline,
            )
    finally:
        store.close()
        cold_store.close()
    print(f"\nSQLite {sqlite3.sqlite_version}: journal_mode={mode}, synchronous="
          f"{('OFF', 'NORMAL', 'FULL', 'EXTRA')[level]} (store: {store.synchronous!r}), "
          f"file in {folder}")  # fmt: skip
    print(f"  Counter flow; per case {figures['warm'].count} messages over {u} users in {ran} "
          f"alternating rounds; session payload {len(payload)} B")  # fmt: skip
    table([
        ("raw UPDATE ... WHERE version=? (committed)", figures["raw"], None),
        ("engine, warm message (one save)", figures["warm"], figures["raw"]),
        ("  its store.save alone (CAS + history entry)", figures["save"], figures["raw"]),
        ("raw SELECT + UPDATE (two statements)", figures["raw2"], None),
        ("engine, cold message (load + save)", figures["cold"], figures["raw2"]),
    ])  # fmt: skip
    warm_ratio = figures["warm"].median / figures["raw"].median
    cold_ratio = figures["cold"].median / figures["raw2"].median
    met = target(
        f"a warm message <= {SQLITE_WARM_TARGET:g}x one raw UPDATE", warm_ratio, SQLITE_WARM_TARGET
    )
    print(f"  no target: a cold message / raw SELECT + UPDATE: {cold_ratio:.2f}x (medians)")
    return met


def fill(store: SessionStore, n: int, deadline: Deadline) -> None:
    """``n`` conversations of one message each, with a message id: a session, its history
    entry and a seen message id per user, as the engine writes them."""
    engine = Engine(Counter(), store, recent=0)
    for k, key in enumerate(users(7, n)):
        engine.handle(key, "hi", message_id=f"{WAMID[:-8]}{k:08d}")
        deadline.check("filling sessions")


def checkpointed_size(path: Path) -> int:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0, "the checkpoint could not finish"
    return path.stat().st_size


def dbstat(path: Path) -> dict[str, tuple[int, int]] | None:
    """Bytes of each table with its indexes, as (pages, in use), from SQLite's ``dbstat``
    (None when SQLite was built without it)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        try:
            rows = db.execute(
                "SELECT coalesce(m.tbl_name, d.name), sum(d.pgsize), sum(d.pgsize - d.unused) "
                "FROM dbstat AS d LEFT JOIN sqlite_schema AS m ON m.name = d.name "
                "GROUP BY 1 ORDER BY 1"
            ).fetchall()
        except sqlite3.OperationalError:
            return None
    return {str(name): (int(pages), int(used)) for name, pages, used in rows}


def sqlite_bytes(folder: Path, u: int, synchronous: str | None, deadline: Deadline) -> None:
    path = folder / "bytes.db"
    store = SQLiteStore(path, **sqlite_options(synchronous))
    try:
        empty, empty_stat = checkpointed_size(path), dbstat(path)
        fill(store, u, deadline)
        full, full_stat = checkpointed_size(path), dbstat(path)
    finally:
        store.close()
    print(f"\nSQLite bytes per session ({u} sessions of one message: the session, its history "
          "entry and a seen message id)")  # fmt: skip
    print(f"  file after wal_checkpoint(TRUNCATE): {empty} B empty, {full} B with {u} sessions:"
          f" {(full - empty) / u:.0f} B/session")  # fmt: skip
    if empty_stat is None or full_stat is None:
        print("  dbstat: not available in this SQLite build")
        return
    print("  dbstat, per table with its indexes (B/session):  pages   in use")
    pages = used = 0.0
    for name, (p, b) in full_stat.items():
        p0, b0 = empty_stat.get(name, (0, 0))
        if (p, b) != (p0, b0) and not name.startswith("sqlite_"):
            print(f"    {name:44} {(p - p0) / u:8.0f} {(b - b0) / u:8.0f}")
            pages, used = pages + (p - p0) / u, used + (b - b0) / u
    print(f"    {'all tables':44} {pages:8.0f} {used:8.0f}")


# -- PostgreSQL ----------------------------------------------------------------------------------
def postgres_missing() -> str | None:
    """Why the PostgreSQL part cannot run here, or None."""
    for module in ("psycopg", "psycopg_pool", "adapters.postgres"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    from adapters.postgres_server import PostgresServerMissing, postgres_binaries

    try:
        postgres_binaries()
    except PostgresServerMissing as exc:
        return str(exc)
    return None


@contextmanager
def private_server() -> Iterator[Any]:
    """A PostgreSQL of this run's own, as the tests start theirs; stopped (by PID) at the end."""
    from tests.postgres_servers import PostgresServer

    server = PostgresServer(name="bench-sql").start()
    try:
        yield server
    finally:
        server.stop()


def postgres_times(url: str, n: int, u: int, rounds: int, deadline: Deadline) -> list[bool]:
    import psycopg

    from adapters.postgres import PostgresOperations, PostgresStore

    schema = "bench"
    store = PostgresStore.from_url(url, schema=schema)
    cold_store = PostgresStore.from_url(url, schema=schema)
    warm_keys, cold_keys, raw_keys = users(1, u), users(2, u), users(3, u)
    try:
        warm = Engine(Counter(), store, recent=max(10_000, u))
        cold = Engine(Counter(), cold_store, recent=0)
        warm_up(warm, warm_keys, deadline)
        warm_up(cold, cold_keys, deadline)
        payload = payload_of(store, warm_keys[0])
        versions = seed_raw(store, raw_keys, payload, deadline)
        save = store_saves(store, users(4, u), warm_keys[0], deadline)
        entry = store.history(warm_keys[0], limit=1)[0]
        fn_keys = users(5, u)
        fn_versions = seed_raw(store, fn_keys, payload, deadline)
        ops = PostgresOperations(schema)
        with psycopg.connect(url, autocommit=True) as db:
            server_version = db.execute("SHOW server_version").fetchone()
            update = f"UPDATE {schema}.sessions SET payload = %s, version = version + 1 "
            update += "WHERE user_key = %s AND version = %s"
            select = f"SELECT version, payload FROM {schema}.sessions WHERE user_key = %s"

            def raw_update(i: int) -> None:
                key = raw_keys[i % u]
                done = db.execute(update, (payload, key.encode(), versions[key]))
                assert done.rowcount == 1
                versions[key] += 1

            def save_function(i: int) -> None:
                key = fn_keys[i % u]
                old = fn_versions[key]
                call = ops.save(
                    key, payload, version=old + 1, expected_version=old, ttl=RAW_TTL,
                    history=msgspec.structs.replace(entry, version=old + 1),
                )  # fmt: skip
                row = db.execute(call.sql, call.params).fetchone()
                assert row is not None and row[0] == "saved", row
                fn_versions[key] = old + 1

            def raw_select_update(i: int) -> None:
                key = raw_keys[i % u]
                row = db.execute(select, (key.encode(),)).fetchone()
                assert row is not None
                done = db.execute(update, (payload, key.encode(), row[0]))
                assert done.rowcount == 1
                versions[key] = row[0] + 1

            figures, ran = alternate(
                {
                    "raw": raw_update,
                    "warm": lambda i: warm.handle(warm_keys[i % u], "1"),
                    "save": save,
                    "function": save_function,
                    "raw2": raw_select_update,
                    "cold": lambda i: cold.handle(cold_keys[i % u], "1"),
                },
                n,
                rounds,
                deadline,
            )
    finally:
        store.close()
        cold_store.close()
    version = "?" if server_version is None else server_version[0]
    print(f"\nPostgreSQL {version} (a private server on 127.0.0.1, fsync=off as in the tests), "
          f"psycopg {psycopg.__version__}")  # fmt: skip
    print(f"  Counter flow; per case {figures['warm'].count} messages over {u} users in {ran} "
          f"alternating rounds; session payload {len(payload)} B")  # fmt: skip
    table([
        ("raw UPDATE ... WHERE version=$3 (1 round trip)", figures["raw"], None),
        ("engine, warm message (one save)", figures["warm"], figures["raw"]),
        ("  its store.save alone (CAS + history entry)", figures["save"], figures["raw"]),
        ("  the save function's SQL alone (no pool)", figures["function"], figures["raw"]),
        ("raw SELECT + UPDATE (2 round trips)", figures["raw2"], None),
        ("engine, cold message (load + save)", figures["cold"], figures["raw2"]),
    ])  # fmt: skip
    return [
        target(f"a warm message <= {POSTGRES_WARM_TARGET:g}x one raw UPDATE round trip",
               figures["warm"].median / figures["raw"].median, POSTGRES_WARM_TARGET),
        target(f"a cold message <= {POSTGRES_COLD_TARGET:g}x raw SELECT + UPDATE",
               figures["cold"].median / figures["raw2"].median, POSTGRES_COLD_TARGET),
    ]  # fmt: skip


def relation_sizes(db: Any, schema: str) -> dict[str, int]:
    """``pg_total_relation_size`` (heap, indexes, TOAST) of each table of ``schema``."""
    rows = db.execute(
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class AS c "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY c.relname",
        (schema,),
    ).fetchall()
    return {str(name): int(size) for name, size in rows}


def postgres_bytes(url: str, u: int, deadline: Deadline) -> None:
    import psycopg

    from adapters.postgres import PostgresStore

    schema = "bench_bytes"
    store = PostgresStore.from_url(url, schema=schema)
    try:
        store.load("nobody")  # makes the schema
        with psycopg.connect(url, autocommit=True) as db:
            for name in relation_sizes(db, schema):
                db.execute(f"ALTER TABLE {schema}.{name} SET (autovacuum_enabled = off)")
            empty = relation_sizes(db, schema)
            fill(store, u, deadline)
            full = relation_sizes(db, schema)
    finally:
        store.close()
    total = sum(full.values()) - sum(empty.values())
    print(f"\nPostgreSQL bytes per session ({u} sessions of one message: the session, its "
          "history entry and a seen message id)")  # fmt: skip
    print(f"  pg_total_relation_size of the store's tables: {sum(empty.values())} B empty, "
          f"{sum(full.values())} B with {u} sessions: {total / u:.0f} B/session")  # fmt: skip
    print("  per table with its indexes and TOAST (B/session):")
    for name, size in full.items():
        if size != empty.get(name, 0):
            print(f"    {name:44} {(size - empty.get(name, 0)) / u:8.0f}")


# -- the run ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=3000, help="messages per case")
    parser.add_argument("--users", type=int, default=1000, help="conversations per case")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds")
    parser.add_argument("--postgres", action="store_true", help="also PostgreSQL (own server)")
    parser.add_argument("--synchronous", choices=("full", "normal"), default=None,
                        help="SQLite's setting (default: the store's default)")  # fmt: skip
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite files go")
    parser.add_argument("--limit", type=float, default=300.0, help="seconds for the run, at most")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.users < 1:
        parser.error("--messages and --users must be at least 1")
    started = time.monotonic()
    deadline = Deadline(started + args.limit)
    verdicts: list[bool] = []
    try:
        with tempfile.TemporaryDirectory(prefix="fsm-bench-sql-", dir=args.dir) as name:
            folder = Path(name)
            verdicts.append(sqlite_times(folder, args.messages, args.users, args.synchronous,
                                         args.rounds, deadline))  # fmt: skip
            sqlite_bytes(folder, args.users, args.synchronous, deadline)
        if args.postgres:
            missing = postgres_missing()
            if missing is not None:
                print(f"\nPostgreSQL: skipped ({missing})")
            else:
                with private_server() as server:
                    verdicts += postgres_times(server.url, args.messages, args.users,
                                               args.rounds, deadline)  # fmt: skip
                    postgres_bytes(server.url, args.users, deadline)
    except OutOfTime as exc:
        print(f"\nstopped: {exc} ({args.limit:g} s)", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"\n{sum(verdicts)} of {len(verdicts)} targets met ({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
