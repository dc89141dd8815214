"""The timer benchmarks run end to end on small numbers and print their figures.

The figures are measured, not asserted: what is checked is that every figure and target
line is printed and that every timer fired exactly once (the run's exit status)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.redis_server import RedisServerMissing, redis_server_binary

ROOT = Path(__file__).resolve().parents[2]


def run(module: str, *args: str) -> str:
    try:
        redis_server_binary()
    except RedisServerMissing as exc:
        pytest.skip(str(exc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "FSM_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_timers_benchmark_prints_round_trips_drain_lag_and_ratio() -> None:
    out = run("tests.benchmarks.bench_timers", "--timers", "600", "--round-trips", "100")
    for line in (
        "firing, warm",
        "firing, cold",
        "message, cold",
        "target: a firing <= a message + 1 (cold)",
        "fired 600, each exactly once: yes",
        "firing lag p50",
        "target >= 0.8",
    ):
        assert line in out, out


def test_the_timer_memory_benchmark_prints_bytes_per_armed_conversation() -> None:
    out = run("tests.benchmarks.bench_timer_memory", "--conversations", "300")
    assert "B/conversation" in out and "target: armed - unarmed <= 100 B" in out, out
