"""Per-message cost on the memory store (prints figures; not collected by pytest).

Run: .venv/bin/python -m tests.benchmarks.bench_memory

Each figure is the best of its rounds (five; twenty for the menu step, whose wall and CPU
time, ``time.process_time``, are read in the same rounds). The target is in CPU.
"""

from __future__ import annotations

from adapters import MemoryStore
from flows.credex import build_engine
from fsm import Engine
from tests.benchmarks.common import Ping, check, per_call, targets_header, wall_and_cpu
from tests.fsm.sample_flows import Counter

#: The reference menu step's CPU per message on the memory store (issue 14).
MENU_CPU_TARGET_US = 20.0


def main() -> None:
    bob = "263770000002"
    credex = build_engine()
    credex.handle(bob, "hi")
    menu, menu_cpu = wall_and_cpu(lambda: credex.handle(bob, "9"))  # an invalid choice: stays
    counter = Engine(Counter(), MemoryStore())
    counter.handle("u", "go")
    stay = per_call(lambda: counter.handle("u", "+1"))
    machine = Counter.spec.machine
    fire = per_call(lambda: machine.fire("idle", "begin", token_preserved=True, token_valid=True))
    acting = Engine(Ping(), MemoryStore())
    acting.handle("u", "x")
    act = per_call(lambda: acting.handle("u", "x"))
    alice = build_engine()
    alice.handle("263770000001", "hi")
    record = alice.store.load("263770000001").record
    assert record is not None
    print(f"credex menu step        {menu:7.1f} us/message  ({1e6 / menu:,.0f} messages/s)")
    print(f"  CPU                   {menu_cpu:7.1f} us/message")
    print(f"counter stay step       {stay:7.1f} us/message")
    print(f"transitions trigger     {fire:7.1f} us/move")
    print(f"message + action        {act:7.1f} us/message (2 saves and the lease)")
    print(f"Alice's session bytes   {len(record.payload):7d}")
    targets_header("memory store")
    check("reference menu step, CPU per message", menu_cpu, MENU_CPU_TARGET_US, "us")


if __name__ == "__main__":
    main()
