"""Real ``fsm serve`` workers on the SQL stores: two processes on one SQLite file, and on one
PostgreSQL schema, each webhook body posted to both at the same moment (a re-delivery racing
the first delivery), then one worker SIGKILLed while the other goes on. Each reply is sent
once while no process dies, and none is lost after the kill."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import httpx
import pytest

from tests import postgres_servers

from .fake_graph import FakeGraph
from .test_serve import serve_env
from .workers import COUNTER, Worker, adeliver, message, numbers, report


def store_url(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'bot.db'}"
    schema = postgres_servers.fresh_schema("serve")
    return f"{postgres_servers.standalone().url}?schema={schema}"


def counting(messages: int) -> list[str]:
    return ["counting", *map(str, range(1, messages))]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_workers_on_one_sql_store_answer_each_message_once(
    kind: str, graph: FakeGraph, tmp_path: Path
) -> None:
    env = serve_env(graph, FSM_STORE=store_url(kind, tmp_path))
    a, b = (Worker(env, tmp_path, args=["--engine", COUNTER], name=f"{kind}{n}") for n in (1, 2))
    graph.latency = 0.02  # a real API takes a while to answer
    people = numbers(7, 20)
    try:

        async def both(client: httpx.AsyncClient, user: str, texts: tuple[str, ...]) -> None:
            for text in texts:
                raw = message(user, text)
                await asyncio.gather(adeliver(client, a, raw), adeliver(client, b, raw))

        async def run(texts: tuple[str, ...]) -> None:
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as client:
                await asyncio.gather(*(both(client, user, texts) for user in people))

        asyncio.run(asyncio.wait_for(run(("go", "x", "y")), 120))
        sent = {user: graph.texts(user) for user in people}
        wrong = {user: texts for user, texts in sent.items() if texts != counting(3)}
        assert not wrong, dict(itertools.islice(wrong.items(), 5)) | {
            "logs": report(graph, [a, b], lines=10)
        }

        time.sleep(1.0)  # a's deferred confirmations are written (0.2 s after each send)
        a.kill()  # b goes on alone; what a sent stays sent
        asyncio.run(asyncio.wait_for(run_alone(b, people), 120))
        wrong = {u: graph.texts(u) for u in people if graph.texts(u) != counting(5)}
        assert not wrong, dict(itertools.islice(wrong.items(), 5))
    finally:
        a.stop()
        b.stop()


async def run_alone(worker: Worker, people: list[str]) -> None:
    async with httpx.AsyncClient() as client:
        for text in ("z", "w"):
            await asyncio.gather(*(adeliver(client, worker, message(u, text)) for u in people))
