"""Timers and events through ``fsm serve`` as deployed: real processes on loopback, a real
clock (a reminder due 1 s after the user's message), the fake Graph API, and Redis where several
processes share the work (two workers' tickers, or ``fsm timers run`` apart from the webhook)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapters import AsyncRedisStore
from fsm.async_engine import AsyncEngine
from tests import redis_servers

from . import payloads as p
from .conftest import start_webhook
from .fake_graph import FakeGraph
from .proactive import EVENTS_SECRET, event_body, sign_event, until
from .proactive_flows import Reminder
from .test_serve import FSM, ROOT, serve_env
from .workers import Worker

ENGINE = "tests.whatsapp.proactive_flows:reminder_engine"
ALICE = "263770000001"


def reminded(text: str) -> str:
    return f"Still there? You said {text}."


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture
def redis() -> Iterator[redis_servers.RedisServer]:
    server = redis_servers.RedisServer(name="wa-timers").start()
    try:
        yield server
    finally:
        server.stop()


def env(graph: FakeGraph, **extra: str) -> dict[str, str]:
    return serve_env(
        graph, **{"FSM_EVENTS_SECRET": EVENTS_SECRET, "FSM_TIMER_TICK": "0.2", **extra}
    )


def post_event(worker: Worker, raw: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{worker.url}/events",
        content=raw,
        headers=sign_event(raw) if headers is None else headers,
        timeout=30,
    )


def test_serve_fires_a_timer_and_applies_an_event_each_reply_sent_once(
    graph: FakeGraph, tmp_path: Path, workers: list[Worker]
) -> None:
    worker = Worker(env(graph), tmp_path, args=["--engine", ENGINE], name="timers")
    workers.append(worker)
    assert worker.post(p.body([p.text(ALICE, "hi")])).status_code == 200
    until(lambda: graph.texts(ALICE) == ["noted hi", reminded("hi")], "the reminder", 15)
    raw = event_body(ALICE, "ping", data={"note": "parcel left"}, event_id="ping-1")
    assert post_event(worker, raw, {"Content-Type": "application/json"}).status_code == 401
    answer = post_event(worker, raw)
    assert answer.status_code == 200
    assert answer.json() == {"applied": True, "duplicate": False, "ignored": ""}
    assert post_event(worker, raw).json()["duplicate"] is True
    time.sleep(2)  # ten more rounds of the ticker: nothing fires twice
    assert graph.texts(ALICE) == ["noted hi", reminded("hi"), "Ping: parcel left"]
    metrics = httpx.get(f"{worker.url}/metrics").text
    assert "fsm_timers_fired_total 1.0" in metrics
    assert 'fsm_whatsapp_events_total{outcome="applied"} 1.0' in metrics
    worker.stop()
    assert worker.process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    log = worker.log.read_text()
    assert "Application shutdown complete" in log  # the ticker stopped, the lifespan ended
    assert "timers: ticker every 0.2s; POST /events: on" in log
    for secret in (EVENTS_SECRET, p.APP_SECRET, graph.token, ALICE):
        assert secret not in log


def test_serve_without_an_events_secret_answers_404_and_ticks_off_when_told(
    graph: FakeGraph, tmp_path: Path, workers: list[Worker]
) -> None:
    quiet = serve_env(graph, FSM_TIMER_TICK="off")
    worker = Worker(quiet, tmp_path, args=["--engine", ENGINE], name="no-events")
    workers.append(worker)
    assert post_event(worker, event_body(ALICE, "gift")).status_code == 404
    assert worker.post(p.body([p.text(ALICE, "hi")])).status_code == 200
    time.sleep(2)
    assert graph.texts(ALICE) == ["noted hi"]  # no ticker here
    assert "fsm_timers_due 1.0" in httpx.get(f"{worker.url}/metrics").text
    worker.stop()
    assert "timers: ticker off; POST /events: off" in worker.log.read_text()


def test_a_bad_tick_setting_is_one_line_and_exit_2(graph: FakeGraph) -> None:
    done = subprocess.run(
        [FSM, "serve", "--engine", ENGINE],
        env=serve_env(graph, FSM_TIMER_TICK="soon"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "error: FSM_TIMER_TICK must be seconds (1, 0.5) or off"


def test_two_workers_tickers_share_the_timers_each_fires_once(
    graph: FakeGraph, tmp_path: Path, workers: list[Worker], redis: redis_servers.RedisServer
) -> None:
    shared = env(graph, FSM_STORE=redis.url, FSM_TIMER_TICK="0.05")
    for n in range(2):
        workers.append(Worker(shared, tmp_path, args=["--engine", ENGINE], name=f"tick{n}"))
    users = [f"2637700002{n:02d}" for n in range(20)]
    for n, user in enumerate(users):
        assert workers[n % 2].post(p.body([p.text(user, f"m{n}")])).status_code == 200
    until(lambda: len(graph.sends()) == 40, "20 reminders", 20)
    time.sleep(1.5)
    for n, user in enumerate(users):
        assert graph.texts(user) == [f"noted m{n}", reminded(f"m{n}")]
    fired = [_sample(w, "fsm_timers_fired_total") for w in workers]
    assert sum(fired) == 20


def test_fsm_timers_run_apart_from_the_webhook_workers(
    graph: FakeGraph, tmp_path: Path, workers: list[Worker], redis: redis_servers.RedisServer
) -> None:
    webhook_env = env(graph, FSM_STORE=redis.url, FSM_TIMER_TICK="off")
    workers.append(Worker(webhook_env, tmp_path, args=["--engine", ENGINE], name="hook"))
    ticker_env = {**env(graph), "FSM_TIMER_TICK": "0.1"}
    for name in ("WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN"):
        del ticker_env[name]  # a ticker only sends
    log = tmp_path / "ticker.log"
    with log.open("wb") as out:
        ticker = subprocess.Popen(
            [FSM, "timers", "run", "--engine", ENGINE, "--store", redis.url],
            env=ticker_env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        assert workers[0].post(p.body([p.text(ALICE, "hi")])).status_code == 200
        until(lambda: graph.texts(ALICE) == ["noted hi", reminded("hi")], "the reminder", 15)
        time.sleep(1)
    finally:
        ticker.send_signal(signal.SIGTERM)
        ticker.wait(15)
    assert ticker.returncode == 0, log.read_text()
    text = log.read_text()
    assert "every 0.1s" in text and "stopped: 1 timer(s) fired" in text
    assert graph.token not in text and ALICE not in text
    assert graph.texts(ALICE) == ["noted hi", reminded("hi")]


def test_the_ticker_survives_its_store_going_away(
    graph: FakeGraph, redis: redis_servers.RedisServer
) -> None:
    """Rounds fail while Redis is down (counted), the server stays up; once Redis is back
    (empty: it keeps nothing on disk), rounds succeed again and new timers fire."""
    store = AsyncRedisStore.from_url(redis.url, namespace="wa-ticker-down")
    engine = AsyncEngine(Reminder(), store)
    with start_webhook(graph, engine) as hook:
        redis.kill()
        until(lambda: hook.metric("fsm_timer_ticks_total", outcome="failed") >= 2, "failures")
        assert hook.http.get("/healthz").status_code == 503
        redis.start()
        ok = hook.metric("fsm_timer_ticks_total", outcome="ok")
        until(lambda: hook.metric("fsm_timer_ticks_total", outcome="ok") > ok, "a round", 40)
        assert hook.post(p.body([p.text(ALICE, "back")])).status_code == 200
        until(lambda: graph.texts(ALICE) == ["noted back", reminded("back")], "reminder", 15)


def _sample(worker: Worker, name: str) -> float:
    for line in httpx.get(f"{worker.url}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed by {worker.url}")
