"""A reply made from bytes across a SIGKILL between its save and its send, with real ``fsm
serve`` workers on one real Redis and the fake Graph API: the file was uploaded before the
save, so the worker that takes over sends it by the same media id and uploads nothing."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from pathlib import Path

import httpx

from tests import redis_servers

from .fake_graph import Answer, FakeGraph
from .test_serve import serve_env
from .workers import Worker, deliver, message, numbers

RECEIPTS = "tests.whatsapp.exactly_once_flows:receipts_engine"


def test_a_file_saved_but_not_sent_when_its_worker_dies_is_not_uploaded_again(
    graph: FakeGraph, tmp_path: Path
) -> None:
    env = serve_env(
        graph,
        FSM_STORE=redis_servers.standalone().url,
        FSM_NAMESPACE=f"mk-{uuid.uuid4().hex[:8]}",
    )
    a = Worker(env, tmp_path, args=["--engine", RECEIPTS], name="mk-a")
    b = Worker(env, tmp_path, args=["--engine", RECEIPTS], name="mk-b")
    try:
        [user] = numbers(8, 1)
        graph.plan(Answer(delay=5.0))  # the document's send takes its time
        raw = message(user, "order 7")
        poster = threading.Thread(target=lambda: _post(a, raw), daemon=True)
        poster.start()
        deadline = time.monotonic() + 20
        while not [r for r in graph.sends(accepted=False) if r.body.get("to") == user]:
            assert time.monotonic() < deadline, "the receipt was never sent"
            time.sleep(0.01)
        [upload] = graph.uploads  # uploaded before the save: the send is under way
        a.kill()  # saved, its send in flight: the reply stays in the outbox, by media id
        poster.join(30)
        deliver(b, raw)  # Meta re-delivers what got no 200
        documents = [
            r.body["document"]
            for r in graph.sends(accepted=False)
            if r.body.get("to") == user and "document" in r.body
        ]
        assert graph.uploads == [upload], "the file was uploaded again"
        assert documents and all(d["id"] == upload.id for d in documents)
        accepted = [r for r in graph.sends() if r.body.get("to") == user]
        assert len(accepted) >= 1  # sent; at most the one in flight at the kill went twice
    finally:
        for worker in (a, b):
            worker.stop()


def _post(worker: Worker, raw: bytes) -> None:
    with contextlib.suppress(httpx.HTTPError):  # killed mid-request
        worker.post(raw, timeout=30)
