"""The benchmark of ``fsm serve``'s store writes per message (tests/benchmarks/
bench_serve_writes.py) runs end to end on a few users and prints its figures.

Its targets are measured, not asserted here: the run exits 0 whether they are met or not, and
1 only when a reply is missing. What is checked is that every figure and target line is
printed, and that the counting holds together (each message saved at least once, one reply
each, the slow log and commandstats agreeing).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.redis_server import RedisServerMissing, redis_server_binary

ROOT = Path(__file__).parents[2]
TARGETS = (
    "writes/message <= 1.1",
    "round trips/message <= 1.2",
    "versions +1 per applied message",
    "history without bookkeeping entries",
)


def test_the_serve_writes_benchmark_prints_its_figures() -> None:
    try:
        redis_server_binary()
    except RedisServerMissing as exc:
        pytest.skip(str(exc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "FSM_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [
            sys.executable, "-m", "tests.benchmarks.bench_serve_writes",
            "--users", "10", "--messages", "10",
            "--paced-users", "3", "--paced-messages", "3", "--pace", "0.2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr

    for target in TARGETS:  # once for the fast users, once for the paced ones
        found = re.findall(rf"^  {re.escape(target)}: (?:MET|NOT MET) \(\d+\.\d\d", out, re.M)
        assert len(found) == 2, (target, out)
    assert "replies sent (the fake Graph API's count): 100, expected 100" in out
    assert "replies sent (the fake Graph API's count): 9, expected 9" in out
    assert "applied (the server's /metrics): 100" in out
    assert out.count("counting check: the slow log and commandstats agree") == 3, out

    # Fast users, paced users, the bare engine: every message saved at least once.
    writes = re.findall(r"^  store writes +(\d+) +\d+\.\d\d per message$", out, re.M)
    assert len(writes) == 3, out
    assert all(int(n) >= least for n, least in zip(writes, (100, 9, 100), strict=True)), writes
    assert re.search(r"^fsm serve vs the bare engine: writes/message \d+\.\d\dx", out, re.M)
