"""Every operator command on a bot that is handling messages, on Redis standalone, Sentinel
and Cluster."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import RedisStore
from flows.credex import build_engine
from flows.credex.fake import FakeCredexApi
from fsm import FakeClock
from fsm.ops.backup import read_backup
from tests import redis_servers
from tests.ops.conftest import Ops

_ids = itertools.count(1)
URLS = {
    "redis": lambda: redis_servers.standalone().url,
    "redis-sentinel": lambda: redis_servers.sentinel().url,
    "redis-cluster": lambda: redis_servers.cluster().url,
}


@pytest.fixture(params=sorted(URLS))
def live(request: pytest.FixtureRequest) -> Iterator[Ops]:
    url = URLS[request.param]()
    namespace = f"live{next(_ids)}-{os.getpid()}"
    clock = FakeClock(time.time())
    api = FakeCredexApi(clock=clock, token_ttl=3600)
    store = RedisStore.from_url(url, namespace=namespace)
    engine = build_engine(store, api, clock=clock)
    try:
        yield Ops(request.param, store, clock, api, engine, url, namespace)
    finally:
        store.close()


def test_every_command_works_while_the_bot_handles_messages(live: Ops, tmp_path: Path) -> None:
    users = [f"26377000000{n}" for n in range(1, 5)] + [f"2637799{n:05d}" for n in range(20)]
    for user in users:
        live.say(user, "hi")
    stop = threading.Event()
    sent = [0]
    errors: list[BaseException] = []

    def chat() -> None:
        try:
            while not stop.is_set() and sent[0] < 5000:  # bounded
                for user in users[:6]:
                    live.engine.handle(user, "2" if sent[0] % 2 else "/menu")
                    sent[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    worker = threading.Thread(target=chat)
    worker.start()
    try:
        outputs = {}
        for args in (
            ["health"],
            ["ls"],
            ["check"],
            ["inspect", users[0]],
            ["history", users[0]],
            ["metrics", "--json"],
            ["migrate"],
            ["backup", "-o", str(tmp_path / "b.jsonl")],
            ["restore", str(tmp_path / "b.jsonl")],
            ["recover", "--all"],
        ):
            result = live.fsm(*args)
            assert result.exit_code == 0, (args, result.output)
            outputs[args[0]] = result
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not errors and sent[0] > 0
    assert outputs["ls"].stderr.strip() == f"{len(users)} session(s)"
    assert json.loads(outputs["metrics"].stdout)["sessions"] == len(users)
    with (tmp_path / "b.jsonl").open("rb") as lines:
        items = list(read_backup(lines))
    assert getattr(items[-1], "end", False) and len(items) == len(users) + 1
    # The bot went on: every user's versions are consecutive, nothing was lost or forked.
    for user in users[:6]:
        versions = [h.version for h in live.store.history(user)]
        assert versions == list(range(versions[0], versions[0] - len(versions), -1))
