"""SQLiteStore across real processes: several workers of one host on one file.

Eight processes (spawned, each with its own store and connections, none shared) open a new file
at the same moment (the first creates the tables, the others find them) and increment one
user's counter by compare-and-set: load, save with the expected version, and on a conflict
retry from the record the refusal carries. Every version from 1 to 400 is produced exactly once
and no increment is lost: the payload keeps each process's count. Every loop is bounded in
attempts and in time, and the parent kills children that overrun.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import time
from pathlib import Path
from typing import Any

from adapters.sqlite import SQLiteStore
from fsm.records import HistoryEntry, Record, SaveStatus

PROCESSES = 8
SAVES = 50
USER = "+44 7700 900123"
DEADLINE = 60.0  # seconds any child may run
MAX_ATTEMPTS = 20 * PROCESSES * SAVES  # far more than a fair run needs, still a bound


def increment(path: str, me: int, ready: Any, start: Any, results: Any) -> None:
    """One worker process: report (me, versions it produced, conflicts, error or "")."""
    ready.put(me)
    if not start.wait(timeout=DEADLINE):  # every worker imported and ready: go together
        results.put((me, [], 0, "never started"))
        return
    produced: list[int] = []
    try:
        conflicts = _increments(path, me, produced)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put((me, produced, 0, f"{type(exc).__name__}: {exc}"))
        return
    results.put((me, produced, conflicts, ""))


def _increments(path: str, me: int, produced: list[int]) -> int:
    """``SAVES`` increments of this worker's count, each a compare-and-set; the conflicts."""
    store = SQLiteStore(path, timeout=30.0)  # the first open of a new file, all at once
    conflicts = 0
    deadline = time.monotonic() + DEADLINE
    try:
        current = store.load(USER).record
        for _ in range(MAX_ATTEMPTS):
            if len(produced) == SAVES or time.monotonic() > deadline:
                break
            version = 0 if current is None else current.version
            counts = {} if current is None else json.loads(current.payload)
            counts[str(me)] = counts.get(str(me), 0) + 1
            time.sleep(0.0005)  # a handler's work: widens the window a lost update needs
            result = store.save(
                USER, json.dumps(counts).encode(), version=version + 1,
                expected_version=version, ttl=3600, history=_entry(version + 1, me),
                message_id=f"p{me}-{len(produced)}",
            )  # fmt: skip
            if result.saved:
                produced.append(version + 1)
                current = store.load(USER).record
                continue
            assert result.status is SaveStatus.CONFLICT, result.status
            conflicts += 1
            current = result.current  # the retry needs no second read
    finally:
        store.close()
    return conflicts


def _entry(version: int, me: int) -> HistoryEntry:
    return HistoryEntry(
        version=version, from_stage="s", to_stage="s", event=f"p{me}", update_from="test",
        at=time.time(),
    )  # fmt: skip


def _run_workers(path: str) -> tuple[dict[int, list[int]], int, float]:
    """Start the workers together; (versions by worker, conflicts, seconds they ran)."""
    context = multiprocessing.get_context("spawn")
    # A ready queue and an event, not a multiprocessing.Barrier: spawned children were seen
    # to hang in Barrier.wait after the parent had passed it.
    ready, start, results = context.Queue(), context.Event(), context.Queue()
    workers = [
        context.Process(target=increment, args=(path, me, ready, start, results), daemon=True)
        for me in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    produced: dict[int, list[int]] = {}
    refused, errors, started = 0, [], time.monotonic()
    try:
        for _ in workers:
            ready.get(timeout=DEADLINE)
        start.set()
        started = time.monotonic()
        for _ in workers:
            me, versions, conflicts, error = results.get(timeout=DEADLINE + 30)
            produced[me], refused = versions, refused + conflicts
            errors += [f"worker {me}: {error}"] if error else []
    except queue.Empty:
        errors.append(f"only {len(produced)} of {PROCESSES} workers reported")
    finally:
        elapsed = time.monotonic() - started
        give_up = time.monotonic() + 10
        for worker in workers:
            worker.join(timeout=max(0.1, give_up - time.monotonic()))
            if worker.is_alive():
                worker.kill()
    assert not errors, errors
    assert all(worker.exitcode == 0 for worker in workers)
    return produced, refused, elapsed


def test_processes_incrementing_one_user_lose_no_update(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")  # not created yet: the workers race to create it
    produced, refused, elapsed = _run_workers(path)
    assert {me: len(versions) for me, versions in produced.items()} == {
        me: SAVES for me in range(PROCESSES)
    }
    every = sorted(v for versions in produced.values() for v in versions)
    total = PROCESSES * SAVES
    assert every == list(range(1, total + 1))  # gapless, each version produced once
    assert refused > 0  # they did race: some saves were refused, and retried
    store = SQLiteStore(path)
    try:
        record = store.load(USER).record
        assert record is not None and record.version == total
        assert json.loads(record.payload) == {str(me): SAVES for me in range(PROCESSES)}
        assert [h.version for h in store.history(USER)] == list(range(total, total - 50, -1))
        assert all(store.load(USER, message_id=f"p{me}-{SAVES - 1}").seen for me in produced)
        assert store.load(USER).record == Record(record.payload, total)
    finally:
        store.close()
    assert elapsed < DEADLINE
