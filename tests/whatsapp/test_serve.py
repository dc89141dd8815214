"""``fsm serve`` as users run it: a real process, the reference bot, a fake Graph API, and
Redis for the fault and load tests (real redis-server processes of the tests' own)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from adapters import AsyncRedisStore, RedisStore
from flows.credex.fake import FakeCredexApi
from flows.credex.fake_server import DEV_CLIENT_KEY, rsa_key
from flows.credex.fake_server import serving as credex_serving
from fsm.async_engine import AsyncEngine
from tests import redis_servers
from tests.fsm.sample_flows import Counter
from tests.support import wait_http

from . import payloads as p
from .conftest import start_webhook, stored
from .fake_graph import Answer, FakeGraph, body_text

ROOT = Path(__file__).parents[2]
FSM = str(Path(sys.executable).with_name("fsm"))
ALICE = "263770000001"


def serve_env(graph: FakeGraph, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "FSM_"))}
    env.update(
        WHATSAPP_ACCESS_TOKEN=graph.token,
        WHATSAPP_APP_SECRET=p.APP_SECRET,
        WHATSAPP_VERIFY_TOKEN=p.VERIFY_TOKEN,
        WHATSAPP_PHONE_NUMBER_ID=graph.phone_number_id,
        WHATSAPP_API_URL=graph.url,
        WHATSAPP_MARK_READ="0",
    )
    env.update(extra)
    return env


class Served:
    """An ``fsm serve`` process on a free loopback port, stopped (or killed) by PID."""

    def __init__(self, env: dict[str, str], tmp: Path, port: int | None = None) -> None:
        self.port = port or redis_servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [FSM, "serve", "--port", str(self.port)],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_http(f"{self.url}/healthz", self.process, log=self.log)

    def post(self, raw: bytes, timeout: float = 30) -> httpx.Response:
        return httpx.post(
            f"{self.url}/webhook", content=raw, headers=p.signed(raw), timeout=timeout
        )

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for server in started:
        server.stop()


def refused(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``fsm serve`` with ``env``, expected to refuse to start."""
    return subprocess.run(
        [FSM, "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_a_missing_setting_is_one_line_and_exit_2(graph: FakeGraph) -> None:
    env = serve_env(graph)
    del env["WHATSAPP_APP_SECRET"]
    done = refused(env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: missing setting: WHATSAPP_APP_SECRET (see docs/whatsapp.md)"
    ]
    assert graph.token not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ({"CREDEX_API_URL": "https://credex.example"}, "missing setting: CREDEX_CLIENT_API_KEY"),
        (
            {
                "CREDEX_API_URL": "https://credex.example",
                "CREDEX_CLIENT_API_KEY": "client-key-value",
                "CREDEX_JWT_KEY": "shared-secret-value-of-32-bytes!!",
                "CREDEX_JWT_ALGORITHMS": "RS256",
            },
            "CREDEX_JWT_KEY: no usable key for RS256",
        ),
    ],
)
def test_a_bad_credex_setting_is_one_line_and_exit_2(
    graph: FakeGraph, extra: dict[str, str], line: str
) -> None:
    done = refused(serve_env(graph, **extra))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {line}"), done.stderr
    assert "client-key-value" not in done.stderr and "shared-secret-value" not in done.stderr


def test_the_reference_bot_runs_end_to_end_over_http(
    graph: FakeGraph, tmp_path: Path, served: list[Served]
) -> None:
    """Webhook in, the Credex API over HTTP (RS256 tokens verified with its JWKS), the Graph
    API out: every hop a real HTTP request on loopback."""
    with credex_serving(FakeCredexApi(private_key=rsa_key())) as credex:
        env = serve_env(
            graph,
            CREDEX_API_URL=credex.url,
            CREDEX_CLIENT_API_KEY=DEV_CLIENT_KEY,
            CREDEX_JWKS_URL=f"{credex.url}/.well-known/jwks.json",
        )
        server = Served(env, tmp_path)
        served.append(server)
        for message in (
            p.text(ALICE, "hi"),
            p.list_reply(ALICE, "offer"),
            p.text(ALICE, "25"),
            p.text(ALICE, "bob"),
            p.button_reply(ALICE, "confirm"),
        ):
            assert server.post(p.body([message])).status_code == 200
        assert "Offer of 25.00 USD sent to @bob." in graph.texts(ALICE)[-2]
        calls = [r["call"] for r in credex.requests]
        assert calls == [
            "login",
            "getAccountByHandle",
            "createCredex",
            "getMemberDashboardByPhone",
        ]
        assert credex.seen("createCredex")[0]["idempotency_key"]
        server.stop()
    assert DEV_CLIENT_KEY not in server.log.read_text()


def test_the_reference_bot_serves_whatsapp_on_the_memory_store(
    graph: FakeGraph, tmp_path: Path, served: list[Served]
) -> None:
    server = Served(serve_env(graph), tmp_path)
    served.append(server)
    params = {"hub.mode": "subscribe", "hub.verify_token": p.VERIFY_TOKEN, "hub.challenge": "77"}
    assert httpx.get(f"{server.url}/webhook", params=params).text == "77"

    assert server.post(p.body([p.text(ALICE, "hi")])).status_code == 200
    menu = graph.sends()[-1].body
    assert menu["type"] == "interactive" and menu["interactive"]["type"] == "list"
    rows = {r["title"]: r["id"] for r in menu["interactive"]["action"]["sections"][0]["rows"]}
    accept = next(row_id for title, row_id in rows.items() if title.startswith("Accept offers"))
    assert server.post(p.body([p.list_reply(ALICE, accept)])).status_code == 200
    assert body_text(graph.sends()[-1].body) == "Which offer do you want to accept?"
    server.stop()
    log = server.log.read_text()
    assert graph.token not in log and p.APP_SECRET not in log and p.VERIFY_TOKEN not in log


def test_killed_after_the_save_before_the_send_the_redelivery_sends_once(
    graph: FakeGraph, tmp_path: Path, served: list[Served]
) -> None:
    redis = redis_servers.standalone()
    namespace = f"wa-kill-{uuid.uuid4().hex[:8]}"
    env = serve_env(graph, FSM_STORE=redis.url, FSM_NAMESPACE=namespace)
    first = Served(env, tmp_path)
    served.append(first)
    [started] = [line for line in first.log.read_text().splitlines() if "fsm serve: " in line]
    assert f"store {redis.url.rsplit('/', 1)[0]}, namespace {namespace!r}" in started
    graph.plan(Answer(delay=3.0, drop=True))  # the first send hangs: kill the server then
    raw = p.body([p.text(ALICE, "hi")])
    poster = threading.Thread(target=lambda: _ignore_errors(first.post, raw), daemon=True)
    poster.start()
    deadline = time.monotonic() + 20
    while not graph.sends(accepted=False):
        assert time.monotonic() < deadline, first.log.read_text()
        time.sleep(0.01)
    first.kill()  # saved (the send started only after the save), nothing accepted
    poster.join(10)

    store = RedisStore.from_url(redis.url, namespace=namespace)
    saved = stored(store, ALICE)
    assert saved.version == 1 and len(saved.outbox) == 1
    assert graph.sends() == []

    second = Served(env, tmp_path, port=first.port)  # a restarted server, the same Redis
    served.append(second)
    # Meta re-delivers (no 200 was answered), again after each 503: the killed worker's send
    # lease keeps another from sending until it lapses (SEND_LEASE), then it is taken over.
    deadline = time.monotonic() + 60
    while (status := second.post(raw).status_code) == 503:
        assert time.monotonic() < deadline, second.log.read_text()
    assert status == 200
    graph.wait_sends(1)
    assert [body_text(r.body) for r in graph.sends()] == [saved.outbox[0].reply.body]
    while (after := stored(store, ALICE)).outbox:  # confirmed a moment later
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert after.version == 2  # confirmed, not applied again
    events = [h.event for h in store.history(ALICE)]
    assert events.count("sent") == 1 and len(events) == 2
    # And once more: nothing is sent again.
    assert second.post(raw).status_code == 200
    assert len(graph.sends()) == 1


def _ignore_errors(post: Callable[[bytes], object], raw: bytes) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the server was killed mid-request
        post(raw)


def test_100_users_x_10_messages_concurrently_on_redis(graph: FakeGraph) -> None:
    redis = redis_servers.standalone()
    namespace = f"wa-load-{uuid.uuid4().hex[:8]}"
    store = AsyncRedisStore.from_url(redis.url, namespace=namespace)
    engine = AsyncEngine(Counter(), store)
    users = [f"2637800{n:05d}" for n in range(100)]
    bodies = [p.body([p.text(u, "go" if i == 0 else "x")]) for u in users for i in range(10)]

    async def post_all(url: str) -> list[int]:
        # 50 clients at once, each posting the next body as soon as its last one answered;
        # shuffled, so each user's messages race each other as well as other users'.
        order = list(range(len(bodies)))
        random.Random(7).shuffle(order)
        statuses = [0] * len(bodies)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def client_loop() -> None:
                while order:
                    n = order.pop()
                    answer = await client.post(
                        "/webhook", content=bodies[n], headers=p.signed(bodies[n])
                    )
                    statuses[n] = answer.status_code

            await asyncio.gather(*(client_loop() for _ in range(50)))
        return statuses

    with start_webhook(graph, engine) as hook:
        started = time.perf_counter()
        statuses = asyncio.run(post_all(hook.url))
        took = time.perf_counter() - started
    assert statuses == [200] * 1000, sorted(set(statuses))
    expected = ["counting", *map(str, range(1, 10))]
    sync = RedisStore.from_url(redis.url, namespace=namespace)
    for user in users:
        assert graph.texts(user) == expected, user  # each once, in the flow's order
        snap = stored(sync, user)
        assert snap.data == {"count": 9} and snap.outbox == ()
    assert len(graph.sends()) == 1000
    print(f"\n100 users x 10 messages on Redis: {took:.2f} s, {1000 / took:.0f} messages/s")


def test_503_while_the_store_is_down_then_applied_once_it_is_back(
    graph: FakeGraph, tmp_path: Path
) -> None:
    redis = redis_servers.RedisServer(name="wa-down").start()
    try:
        store = AsyncRedisStore.from_url(redis.url, namespace="wa-down")
        engine = AsyncEngine(Counter(), store)
        raw = p.body([p.text(ALICE, "go")])
        with start_webhook(graph, engine) as hook:
            assert hook.http.get("/healthz").status_code == 200
            redis.kill()  # the store crashes
            answer = hook.post(raw)
            assert answer.status_code == 503 and "Traceback" not in answer.text
            assert hook.http.get("/healthz").status_code == 503
            assert graph.sends(accepted=False) == []
            assert hook.metric("fsm_whatsapp_messages_total", outcome="unavailable") == 1
            redis.start()  # back, on the same port (empty: it keeps nothing on disk)
            assert hook.post(raw).status_code == 200  # Meta's re-delivery
            assert hook.http.get("/healthz").status_code == 200
        assert graph.texts() == ["counting"]
        sync = RedisStore.from_url(redis.url, namespace="wa-down")
        assert stored(sync, ALICE).data == {"count": 0}
    finally:
        redis.stop()
