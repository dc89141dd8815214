"""A ticker process for :mod:`tests.timers.test_tickers_redis`: fires due timers of the
``Pinger`` flow on one Redis until killed or its deadline, and records each reply it was
handed in a Redis list (``delivered``), as a transport would send it.

    python -m tests.timers.ticker_worker REDIS_URL NAMESPACE DEADLINE_EPOCH
"""

from __future__ import annotations

import sys
import time

import redis

from adapters import RedisStore
from fsm import Context, Engine, Flow, Outcome, Result, Stage, on_enter, step, timeout


class Pinger(Flow):
    """A conversation armed on arrival: ``ping`` fires 2 s later and moves it to ``done``."""

    name = "pinger"
    stages = (Stage("s", steps=("wait", "done")),)
    transitions = ()

    @on_enter("s", "wait")
    def waiting(self, ctx: Context) -> list[str]:
        return ["waiting"]

    @step("s", "wait")
    def wait(self, ctx: Context) -> Outcome:
        return ctx.stay()

    @step("s", "done")
    def done(self, ctx: Context) -> Outcome:
        return ctx.stay()

    @timeout("s", "wait", after=2.0)
    def ping(self, ctx: Context) -> Outcome:
        return ctx.stay("pinged", step="done")


def engine(url: str, namespace: str) -> Engine:
    built = Engine(Pinger(), RedisStore.from_url(url, namespace=namespace), outbox=True)
    built.claim_hold = 2.0  # a killed ticker's claims come back quickly
    return built


def main(url: str, namespace: str, deadline: float) -> None:
    ticker = engine(url, namespace)
    side = redis.Redis.from_url(url)

    def delivered(user: str, result: Result) -> None:
        side.rpush(f"{namespace}:delivered", *[f"{user}:{o.id}" for o in result.outbox])

    while time.time() < deadline:
        if ticker.fire_due(limit=25, on_result=delivered) == 0:
            time.sleep(0.02)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
