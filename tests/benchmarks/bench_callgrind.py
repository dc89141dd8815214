"""The engine's CPU beyond the raw client's, per warm message, in instructions (callgrind).

Timers on a shared VM move by 10-20% from run to run; instruction counts do not. Each case
runs in a Python process under ``valgrind --tool=callgrind`` twice, with ``SMALL`` and ``LARGE``
messages after the same warm-up; the difference of the two totals over ``LARGE - SMALL`` is
the instructions one message costs, start-up and imports excluded. The redis-server (started
here, on a free loopback port) runs outside valgrind: only the worker's instructions count.

Cases (sync, one conversation, the reference bot's menu step as in ``bench_redis``):

- ``raw``: one ``EVALSHA`` of the floor script through redis-py (the stores' own ``Lua.run``);
- ``warm``: ``Engine.handle`` on a ``RedisStore``, the record warm (one ``EVALSHA``);
- ``memory``: ``Engine.handle`` on the memory store (the engine without a network client).

``warm - raw`` is the engine's CPU beyond the raw client's (issue 31's target: <= 30 us per
warm message); the timed CPU per message of the same cases (outside valgrind) converts
instructions to microseconds on this machine.

Run: ``.venv/bin/python -m tests.benchmarks.bench_callgrind`` (needs ``valgrind``; about two
minutes). Figures are printed, not asserted: the exit status is 0 whatever they are.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.redis_servers import RedisServer

SMALL, LARGE = 200, 1200
CASES = ("raw", "warm", "memory")
ROOT = Path(__file__).resolve().parents[2]


def run_case(case: str, url: str, count: int) -> None:
    """In the measured process: warm up, then ``count`` messages of ``case``."""
    from adapters import MemoryStore
    from adapters.redis import BLOCKING, RedisStore
    from adapters.redis_lua import Lua
    from adapters.redis_url import connect
    from flows.credex import build_engine
    from flows.credex.fake import FakeCredexApi
    from tests.benchmarks.bench_redis import BOB, FLOOR_SCRIPT

    if case == "raw":
        client, lua = connect(url, BLOCKING), Lua(FLOOR_SCRIPT)
        for _ in range(50):
            lua.run(client, ["floor"], ["x" * 500])
        for _ in range(count):
            lua.run(client, ["floor"], ["x" * 500])
        return
    store = MemoryStore() if case == "memory" else RedisStore.from_url(url, namespace="cg")
    engine = build_engine(store, FakeCredexApi())
    engine.handle(BOB, "hi")
    for _ in range(50):
        engine.handle(BOB, "9")
    for _ in range(count):
        engine.handle(BOB, "9")


def instructions(case: str, url: str, count: int, out: Path) -> int:
    """Total instructions (Ir) of a process running ``count`` messages of ``case``."""
    target = out / f"{case}-{count}.out"
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={target}",
        sys.executable, "-m", "tests.benchmarks.bench_callgrind", "--run", case, url, str(count),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(command, check=True, cwd=ROOT, env=env, capture_output=True, timeout=600)
    summary = re.search(rb"^(?:summary|totals): (\d+)", target.read_bytes(), re.MULTILINE)
    if summary is None:
        raise RuntimeError(f"no totals in {target}")
    return int(summary.group(1))


def cpu_us(case: str, url: str, count: int = 3000) -> float:
    """CPU microseconds per message of ``case``, timed in a process of its own."""
    code = (
        "import sys, time; from tests.benchmarks.bench_callgrind import run_case; "
        f"run_case({case!r}, {url!r}, 200); t = time.process_time(); "
        f"run_case({case!r}, {url!r}, {count}); print(time.process_time() - t)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1]) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", nargs=3, metavar=("CASE", "URL", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        case, url, count = args.run
        run_case(case, url, int(count))
        return
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind): nothing measured")
        return
    began = time.monotonic()
    server = RedisServer(name="bench-callgrind").start()
    try:
        with tempfile.TemporaryDirectory(prefix="fsm-callgrind-") as tmp:
            per: dict[str, float] = {}
            for case in CASES:
                small = instructions(case, server.url, SMALL, Path(tmp))
                large = instructions(case, server.url, LARGE, Path(tmp))
                per[case] = (large - small) / (LARGE - SMALL)
                print(f"  {case}: {per[case]:,.0f} instructions per message", flush=True)
        timed = {case: cpu_us(case, server.url) for case in CASES}
    finally:
        server.stop()
    rate = per["raw"] / timed["raw"]  # instructions per CPU microsecond, on this machine
    print(f"\nper warm message (callgrind: {LARGE - SMALL} messages, start-up excluded)")
    print(f"  {'what':44} {'instructions':>13} {'CPU us (timed)':>15}")
    for label, case in [
        ("raw EVALSHA through redis-py", "raw"),
        ("Engine.handle on RedisStore, warm", "warm"),
        ("Engine.handle on the memory store", "memory"),
    ]:
        print(f"  {label:44} {per[case]:13,.0f} {timed[case]:15.1f}")
    beyond = per["warm"] - per["raw"]
    label, timed_beyond = "the engine beyond the raw client", timed["warm"] - timed["raw"]
    print(f"  {label:44} {beyond:13,.0f} {timed_beyond:15.1f}")
    print(f"  ({rate:,.0f} instructions per CPU us on this machine: {beyond / rate:.1f} us)")
    verdict = "met" if beyond / rate <= 30 else "NOT MET"
    print(f"target: the engine's CPU beyond the raw client <= 30 us per warm message: {verdict}")
    print(f"({time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
