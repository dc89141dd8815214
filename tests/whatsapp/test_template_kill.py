"""A template reply across a SIGKILL between its save and its send, with real ``fsm serve``
workers on one real Redis, the fake Graph API and signed ``POST /events``: the event is saved
with its reply pending, the worker dies before the template goes out, the event is posted
again to another worker, and the template is sent exactly once, its user counted once in the
messaging limit the workers share."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import httpx
from redis.asyncio import Redis

from adapters.whatsapp.limits_redis import RedisMessagingLimit
from tests import redis_servers

from .fake_graph import Answer, FakeGraph
from .proactive import EVENTS_SECRET, event_body, sign_event
from .test_serve import serve_env
from .workers import Worker, numbers

OFFERS = "tests.whatsapp.exactly_once_flows:offers_engine"


def post_event(worker: Worker, raw: bytes, timeout: float = 30) -> int:
    response = httpx.post(
        f"{worker.url}/events", content=raw, headers=sign_event(raw), timeout=timeout
    )
    return response.status_code


def test_a_template_saved_but_not_sent_when_its_worker_dies_is_sent_once(
    graph: FakeGraph, tmp_path: Path
) -> None:
    server, namespace = redis_servers.standalone(), f"tk-{uuid.uuid4().hex[:8]}"
    env = serve_env(
        graph,
        FSM_STORE=server.url,
        FSM_NAMESPACE=namespace,
        FSM_EVENTS_SECRET=EVENTS_SECRET,
        WHATSAPP_MESSAGING_LIMIT="5",
    )
    a = Worker(env, tmp_path, args=["--engine", OFFERS], name="tk-a")
    b = Worker(env, tmp_path, args=["--engine", OFFERS], name="tk-b")
    try:
        [user] = numbers(7, 1)
        graph.close_window(user)  # the user last wrote long ago: Meta wants a template
        graph.plan(Answer(delay=5.0))  # the first send (the free-form try) takes its time
        raw = event_body(user, "offer", data={"amount": "$5"}, event_id="offer-1")
        first: dict[str, object] = {}

        def post() -> None:
            try:
                first["status"] = post_event(a, raw)
            except httpx.HTTPError as exc:
                first["status"] = type(exc).__name__

        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        deadline = time.monotonic() + 20
        while not [r for r in graph.sends(accepted=False) if r.body.get("to") == user]:
            assert time.monotonic() < deadline, "the event's reply was never tried"
            time.sleep(0.01)
        a.kill()  # saved (the reply pending in the outbox), its template not sent yet
        poster.join(30)
        assert graph.templates(user) == []

        statuses = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # Meta's way: post again until answered 200
            statuses.append(post_event(b, raw))
            if statuses[-1] == 200:
                break
            time.sleep(0.5)
        assert statuses[-1] == 200, statuses
        time.sleep(1.0)  # both workers' tickers have had their rounds
        templates = [r for r in graph.sends(accepted=False) if r.body.get("type") == "template"]
        assert [(r.body["to"], r.answered) for r in templates] == [(user, 200)], (
            f"the template went out {len(templates)} times: {statuses}"
        )
        assert post_event(b, raw) == 200 and len(graph.templates(user)) == 1  # posted again
        assert asyncio.run(counted(server.url, namespace)) == (1, 0)
    finally:
        for worker in (a, b):
            worker.stop()


async def counted(url: str, namespace: str) -> tuple[int, int]:
    client = Redis.from_url(url)
    try:
        return await RedisMessagingLimit(client, 5, namespace=namespace).counts(time.time())
    finally:
        await client.aclose()
