"""The SQL stores' benchmark runs end to end on small numbers and prints its figures.

The figures are measured, not asserted: what is checked is that every figure and target line
is printed and that the run exits with status 0 (whatever the figures)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.postgres_server import PostgresServerMissing, postgres_binaries

ROOT = Path(__file__).resolve().parents[2]
SMALL = ("--messages", "300", "--users", "30")

SQLITE_LINES = (
    "SQLite ",
    "journal_mode=wal, synchronous=FULL",
    "raw UPDATE ... WHERE version=? (committed)",
    "engine, warm message (one save)",
    "its store.save alone (CAS + history entry)",
    "raw SELECT + UPDATE (two statements)",
    "engine, cold message (load + save)",
    "median us",
    "p95 us",
    "msg/s",
    "target: a warm message <= 2x one raw UPDATE: ",
    "no target: a cold message / raw SELECT + UPDATE: ",
    "SQLite bytes per session (30 sessions",
    "file after wal_checkpoint(TRUNCATE): ",
    " B/session",
)
DBSTAT_LINES = ("dbstat, per table with its indexes", "    sessions ", "    all tables ")
POSTGRES_LINES = (
    "PostgreSQL ",
    "raw UPDATE ... WHERE version=$3 (1 round trip)",
    "raw SELECT + UPDATE (2 round trips)",
    "target: a warm message <= 1.5x one raw UPDATE round trip: ",
    "target: a cold message <= 1.5x raw SELECT + UPDATE: ",
    "PostgreSQL bytes per session (30 sessions",
    "pg_total_relation_size of the store's tables: ",
    "per table with its indexes and TOAST",
)


def run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "FSM_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.bench_sql", *SMALL, "--limit", "200", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def check_lines(out: str, lines: tuple[str, ...]) -> None:
    for line in lines:
        assert line in out, f"{line!r} not printed:\n{out}"
    for verdict_line in (row for row in out.splitlines() if row.lstrip().startswith("target: ")):
        assert verdict_line.endswith(("-> MET", "-> NOT MET")), out


def test_the_sql_benchmark_prints_sqlite_ratios_targets_and_bytes_per_session() -> None:
    out = run()
    check_lines(out, SQLITE_LINES)
    if "dbstat: not available" not in out:
        check_lines(out, DBSTAT_LINES)
    assert "PostgreSQL" not in out, out
    assert "of 1 targets met" in out, out


def test_the_sql_benchmark_prints_postgres_figures_on_a_private_server() -> None:
    for module in ("psycopg", "psycopg_pool", "adapters.postgres"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    try:
        postgres_binaries()
    except PostgresServerMissing as exc:
        pytest.skip(f"no PostgreSQL server to run: {exc}")
    out = run("--postgres")
    check_lines(out, SQLITE_LINES + POSTGRES_LINES)
    assert "PostgreSQL: skipped" not in out, out
    assert out.count("its store.save alone") == 2, out
    assert "of 3 targets met" in out, out
