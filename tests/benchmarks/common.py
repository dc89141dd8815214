"""What the benchmark scripts share: a timing helper and a flow whose every message acts."""

from __future__ import annotations

import time
from collections.abc import Callable

from fsm import Context, Flow, Outcome, Stage, action, step


def per_call(
    fn: Callable[[], object],
    n: int = 20_000,
    rounds: int = 5,
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """Microseconds per call: the best of ``rounds`` rounds of ``n // rounds`` calls (the
    minimum is the figure least disturbed by other work on the machine). ``timer`` is wall
    time by default; ``time.process_time`` measures this process's CPU instead."""
    best = float("inf")
    for _ in range(rounds):
        start = timer()
        for _ in range(max(1, n // rounds)):
            fn()
        best = min(best, (timer() - start) / max(1, n // rounds))
    return best * 1e6


def wall_and_cpu(
    fn: Callable[[], object], n: int = 20_000, rounds: int = 20
) -> tuple[float, float]:
    """Microseconds per call as (wall time, this process's CPU time), each the best of
    ``rounds`` rounds of ``n // rounds`` calls, both read in the same rounds (a slow moment
    of a shared machine then shows in both, and the best round of each is the quiet one)."""
    wall = cpu = float("inf")
    calls = max(1, n // rounds)
    for _ in range(rounds):
        started, used = time.perf_counter(), time.process_time()
        for _ in range(calls):
            fn()
        cpu = min(cpu, (time.process_time() - used) / calls)
        wall = min(wall, (time.perf_counter() - started) / calls)
    return wall * 1e6, cpu * 1e6


class Ping(Flow):
    """Every message moves to an action step, which moves back: the action path's cost."""

    name = "ping"
    takes_first_message = True
    blocking = False  # its handlers never block: AsyncEngine runs them on the loop
    stages = (Stage("s", ("ask", "do")),)
    transitions = ()

    @step("s", "ask")
    def ask(self, ctx: Context) -> Outcome:
        return ctx.stay(step="do")

    @action("s", "do")
    def do(self, ctx: Context) -> Outcome:
        return ctx.stay("done", step="ask")


def check(label: str, value: float, limit: float, unit: str, *, at_least: bool = False) -> bool:
    """Print one target line, ``value`` against ``limit`` (``at_least``: a floor, else a
    ceiling), with "met" or "NOT MET"; returns whether it was met."""
    met = value >= limit if at_least else value <= limit
    sign = ">=" if at_least else "<="
    verdict = "met" if met else "NOT MET"
    print(f"  {label:58} {value:9.2f}{unit:<3} {sign} {limit:g}{unit:<3} {verdict}")
    return met


def targets_header(title: str) -> None:
    print(f"\ntargets: {title}")
