"""Metrics (`fsm metrics`, collect_metrics, the Prometheus export) and health (`fsm health`),
and what every command does when the store cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters import RedisStore
from flows.credex import build_engine
from flows.credex.fake import FakeCredexApi
from fsm.ops.health import health_check
from fsm.ops.metrics import collect_metrics
from fsm.ops.prometheus import engine_registry
from tests import redis_servers
from tests.ops.conftest import ALICE, BOB, CAROL, DAVE, STRANGER, Ops, make_ops


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_collect_metrics_counts_what_is_stored(ops: Ops) -> None:
    ops.say(ALICE, "hi", "1")
    ops.say(BOB, "hi")
    ops.say(CAROL, "hi")
    ops.say(STRANGER, "hi")
    ops.put(DAVE, b"\xc1", ttl=60.0)
    ops.store.acquire_lock(BOB, "w", 30.0)
    assert ops.fsm("recover", DAVE).exit_code == 0  # one quarantined entry
    m = collect_metrics(ops.store, expiring_within=120)
    assert m.sessions == 5
    assert m.by_stage == {"credex": 1, "init": 1, "menu": 2, "registration": 1}
    assert (m.locked, m.quarantined, m.unreadable) == (1, 1, 0)
    assert m.expiring_soon == 1  # the recovered session kept its 60 s
    assert m.average_ttl is not None and 1000 < m.average_ttl < 1800
    assert m.expired_since_start is not None
    info = json.loads(ops.fsm("metrics", "--json", "--expiring-within", "2m").stdout)
    assert info["sessions"] == 5 and info["by_stage"]["menu"] == 2 and info["expiring_soon"] == 1
    text = ops.fsm("metrics").stdout
    assert "sessions              5" in text and "  menu                2" in text


def test_fsm_metrics_prometheus_output_parses(ops: Ops) -> None:
    ops.say(ALICE, "hi")
    ops.say(STRANGER, "hi")
    result = ops.fsm("metrics", "--prometheus")
    assert result.exit_code == 0
    samples = _samples(result.stdout)
    assert samples[("fsm_sessions", ())] == 2
    assert samples[("fsm_sessions_by_stage", (("stage", "menu"),))] == 1
    assert samples[("fsm_sessions_by_stage", (("stage", "registration"),))] == 1
    assert samples[("fsm_quarantined", ())] == 0


def test_expired_since_start_comes_from_the_server() -> None:
    # A server of its own: on the shared one, keys other tests left expire meanwhile.
    server = redis_servers.RedisServer(name="expiry").start()
    store = RedisStore.from_url(server.url, namespace="expiry")
    try:
        before = collect_metrics(store).expired_since_start
        assert before is not None
        for n in range(3):
            store.save(f"gone{n}", b"x", version=1, expected_version=0, ttl=0.05)
        time.sleep(0.2)
        for n in range(3):
            store.load(f"gone{n}")  # touching them makes Redis expire them now
        assert collect_metrics(store).expired_since_start == before + 3  # type: ignore[operator]
    finally:
        store.close()
        server.stop()


def test_engine_counters_are_exported(ops: Ops) -> None:
    registry = engine_registry(ops.engine)
    ops.say(ALICE, "hi", "1", "/menu")
    ops.engine.handle(BOB, "hi", message_id="m-1")
    ops.engine.handle(BOB, "hi", message_id="m-1")  # re-delivered: a dedupe hit
    samples = _samples(generate_latest(registry).decode())
    stats = ops.engine.stats
    assert samples[("fsm_messages_applied_total", ())] == stats["applied"] == 4
    assert samples[("fsm_dedupe_hits_total", ())] == stats["duplicates"] == 1
    moved = (("from_stage", "menu"), ("to_stage", "credex"))
    assert samples[("fsm_transitions_total", moved)] == 1
    saves = samples[("fsm_store_seconds_count", (("operation", "save"),))]
    assert saves == sum(h.count for op, h in stats.latencies().items() if op == "save") >= 4
    assert samples[("fsm_store_seconds_bucket", (("le", "+Inf"), ("operation", "save")))] == saves
    assert samples[("fsm_store_seconds_sum", (("operation", "save"),))] > 0


class _CountingRedis(redis.Redis):
    """A redis-py client that counts the commands it sends (one round trip each)."""

    sent = 0

    def execute_command(self, *args: object, **options: object) -> object:
        self.sent += 1
        return super().execute_command(*args, **options)


def test_counting_adds_no_redis_round_trip() -> None:
    server = redis_servers.standalone()
    client = _CountingRedis(host="127.0.0.1", port=server.port)
    store = RedisStore(client, namespace=f"count-{os.getpid()}")
    engine = build_engine(store, FakeCredexApi())
    registry = engine_registry(engine)
    engine.handle(BOB, "hi")
    before = client.sent
    engine.handle(BOB, "9")  # a warm message: one compare-and-set script
    scraped = generate_latest(registry).decode()  # and a scrape: read in-process
    assert client.sent - before == 1
    assert 'fsm_store_seconds_count{operation="save"} 2.0' in scraped
    store.close()


def test_health_is_green_on_a_working_store(ops: Ops) -> None:
    report = health_check(ops.store)
    assert report.healthy, report.as_dict()
    assert [c.name for c in report.checks] == ["connection", "state", "lock", "scripts", "latency"]
    result = ops.fsm("health", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["healthy"] is True
    assert "healthy" in ops.fsm("health").stdout
    assert list(ops.store.sessions()) == [] or all(
        not v.user_key.startswith("\x00") for v in ops.store.sessions()
    )  # the probe cleaned up after itself
    assert ops.fsm("ls", "--json").stdout == ""


def test_health_reloads_a_flushed_script_cache() -> None:
    for ops in make_ops("redis"):
        assert isinstance(ops.store, RedisStore)
        ops.store.client.script_flush()
        report = health_check(ops.store)
        scripts = next(c for c in report.checks if c.name == "scripts")
        assert report.healthy and "were loaded again" in scripts.detail
        total = len(ops.store._scripts)  # every script of the store: sessions and timers
        assert total >= 7 and ops.store.script_cache() == (total, total)


def test_health_fails_on_a_slow_store(ops: Ops) -> None:
    result = ops.fsm("health", "--max-latency", "0ms")
    assert result.exit_code == 1 and "UNHEALTHY" in result.stdout
    assert "FAIL  latency" in result.stdout


def test_health_of_a_dead_server_is_unhealthy_exit_1() -> None:
    server = redis_servers.RedisServer(name="dead").start()
    server.kill()
    proc = _fsm("health", "--json", "--store", server.url)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["healthy"] is False and report["checks"][0]["name"] == "connection"
    assert "Connection refused" in report["checks"][0]["detail"]


def _fsm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSM_")}
    return subprocess.run(
        [sys.executable, "-m", "fsm.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=Path(__file__).parents[2],
    )


@pytest.mark.parametrize(
    "command",
    [
        ["inspect", ALICE],
        ["history", ALICE],
        ["ls"],
        ["check"],
        ["recover", ALICE],
        ["recover", "--all"],
        ["quarantine", "ls"],
        ["quarantine", "show", "1-1"],
        ["quarantine", "restore", "1-1"],
        ["migrate"],
        ["backup", "-o", "{tmp}/fsm-never-written.jsonl"],
        ["metrics"],
    ],
)
def test_an_unreachable_server_is_a_clear_error_with_status_2(
    command: list[str], tmp_path: Path
) -> None:
    port = redis_servers.free_port()
    command = [arg.format(tmp=tmp_path) for arg in command]
    proc = _fsm(*command, "--store", f"redis://:s3cret-pass@127.0.0.1:{port}/0")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: cannot reach the store at redis://127.0.0.1:{port}: ConnectionError: Error 111 "
        f"connecting to 127.0.0.1:{port}. Connection refused."
    )
    assert "s3cret" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "fsm-never-written.jsonl").exists()


def test_restore_to_an_unreachable_server_is_status_2(tmp_path: Path) -> None:
    backup = tmp_path / "b.jsonl"
    backup.write_text(
        '{"format": "convo-fsm-backup", "format_version": 1}\n{"end": true, "sessions": 0}\n'
    )
    proc = _fsm("restore", str(backup), "--store", f"redis://127.0.0.1:{redis_servers.free_port()}")
    assert proc.returncode == 2 and "cannot reach the store" in proc.stderr


def test_a_missing_store_is_a_usage_error() -> None:
    proc = _fsm("ls")
    assert proc.returncode == 2 and "--store URL or FSM_STORE" in proc.stderr
    memory = _fsm("ls", "--store", "memory")
    assert memory.returncode == 2 and "obj={'store': store}" in memory.stderr
    bad = _fsm("ls", "--store", "http://example.invalid")
    assert bad.returncode == 2 and "not a store URL" in bad.stderr


def test_the_real_command_against_a_real_server(tmp_path: Path) -> None:
    for ops in make_ops("redis"):
        ops.say(ALICE, "hi")
        args = ["--store", ops.url or "", "--namespace", ops.namespace or ""]
        listed = _fsm("ls", *args)
        assert listed.returncode == 0 and ALICE in listed.stdout
        shown = _fsm("inspect", ALICE, *args)
        assert shown.returncode == 0 and "menu.dashboard" in shown.stdout
        assert "eyJ" not in shown.stdout + shown.stderr
        out = tmp_path / "b.jsonl"
        assert _fsm("backup", "-o", str(out), *args).returncode == 0
        assert _fsm("health", *args).returncode == 0


def test_the_bot_can_mount_its_counters_as_a_wsgi_endpoint() -> None:
    from wsgiref.util import setup_testing_defaults

    from prometheus_client import make_wsgi_app

    engine = build_engine()
    engine.handle(ALICE, "hi")
    app = make_wsgi_app(engine_registry(engine))
    environ: dict[str, object] = {"PATH_INFO": "/metrics"}
    setup_testing_defaults(environ)
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))  # type: ignore[arg-type]
    assert statuses == ["200 OK"]
    samples = _samples(body.decode())
    assert samples[("fsm_messages_applied_total", ())] == 1
    assert samples[("fsm_transitions_total", (("from_stage", "init"), ("to_stage", "menu")))] == 1


def test_long_scans_report_progress_on_stderr() -> None:
    for ops in make_ops("memory"):
        for n in range(1000):
            ops.store.save(f"p{n}", b"x", version=1, expected_version=0, ttl=600)
        for command, line in (
            (["check"], "... checking sessions: 1000"),
            (["metrics", "--json"], "... sessions counted: 1000"),
            (["migrate", "--dry-run"], "... sessions scanned: 1000"),
        ):
            result = ops.fsm(*command)
            assert line in result.stderr.splitlines(), (command, result.stderr[-300:])
            assert line not in result.stdout  # stdout stays clean for --json and pipes


def test_metrics_text_keeps_its_columns(ops: Ops) -> None:
    ops.say(ALICE, "hi")
    text = ops.fsm("metrics", "--expiring-within", "10m").stdout
    assert "expiring within 10m00s 0" in text
    assert "expiring within 5m00s 0" in ops.fsm("metrics").stdout  # the column of the rest


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    for ops in make_ops("redis"):
        assert isinstance(ops.store, RedisStore)
        pipe = ops.store.client.pipeline(transaction=False)
        for n in range(3000):
            pipe.set(ops.store.layout.session(f"2637{n:08d}"), b"1.0000abcd:x", px=600_000)
        pipe.execute()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FSM_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "fsm.cli", "ls", "--store", ops.url or "", "--namespace",
             ops.namespace or "", "--flow", "flows.credex.flow:CredexBot"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=Path(__file__).parents[2],
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"USER")  # then the reader goes away: `| head -1`
        proc.stdout.close()
        code = proc.wait(timeout=60)
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert code == 141 and "Traceback" not in err and "Broken pipe" not in err, err
