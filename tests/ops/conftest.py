"""Fixtures for the operator's toolkit: the Credex bot on a store, and `fsm` run against it.

Every test here runs on the memory store (the CLI gets it in-process through ``obj``) and on a
real redis-server that the suite starts (the CLI gets ``--store URL --namespace NS``, exactly as
an operator types it); some also on a real 3-primary Cluster.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner, Result

from adapters import MemoryStore, RedisStore, Store
from flows.credex import build_engine
from flows.credex.fake import FakeCredexApi
from fsm import Engine, FakeClock, Snapshot
from fsm.cli import main
from fsm.snapshot import decode_snapshot
from tests import redis_servers

ALICE = "263770000001"
BOB = "263770000002"
CAROL = "263770000003"
DAVE = "263770000004"
STRANGER = "263779999999"

_namespaces = itertools.count(1)


@dataclass
class Ops:
    """The bot on one store, and the ``fsm`` command pointed at that store."""

    kind: str
    store: Store
    clock: FakeClock
    api: FakeCredexApi
    engine: Engine
    url: str | None = None
    namespace: str | None = None

    def fsm(self, *args: str) -> Result:
        """Run ``fsm ARGS`` in-process against this store; output is kept apart per stream."""
        obj: dict[str, Any] = {"clock": self.clock}
        if self.url is None:
            obj["store"] = self.store
            argv = list(args)
        else:
            argv = [*args, "--store", self.url, "--namespace", str(self.namespace)]
        # A namespace of the test's own: the operator names the flow (as FSM_FLOW would), for
        # an empty or all-broken namespace does not tell (tests/test_cli_other_bots.py).
        env = {"FSM_FLOW": "flows.credex.flow:CredexBot"}
        return CliRunner().invoke(main, argv, obj=obj, env=env, catch_exceptions=False)

    def say(self, user: str, *texts: str) -> Snapshot:
        snap = None
        for text in texts:
            snap = self.engine.handle(user, text).snapshot
        assert snap is not None
        return snap

    def snapshot(self, user: str) -> Snapshot:
        record = self.store.load(user).record
        assert record is not None
        return decode_snapshot(record.payload)

    def put(self, user: str, payload: bytes, *, version: int = 1, ttl: float = 600.0) -> None:
        """Store bytes as the user's session (whatever they are), replacing any."""
        current = self.store.load(user).record
        expected = current.version if current is not None else 0
        if current is not None and version <= expected:
            version = expected + 1
        result = self.store.save(
            user,
            payload,
            version=version,
            expected_version=expected,
            ttl=ttl,
            expected_tag=current.tag if current is not None else "",
        )
        assert result.saved, result


def make_ops(kind: str) -> Iterator[Ops]:
    clock = FakeClock(time.time())
    api = FakeCredexApi(clock=clock, token_ttl=3600)
    url = namespace = None
    store: Store
    if kind == "memory":
        store = MemoryStore(clock=clock)
    else:
        url = (redis_servers.standalone() if kind == "redis" else redis_servers.cluster()).url
        namespace = f"ops{next(_namespaces)}-{os.getpid()}"
        store = RedisStore.from_url(url, namespace=namespace)
    engine = build_engine(store, api, clock=clock, session_ttl=1800)
    try:
        yield Ops(kind, store, clock, api, engine, url, namespace)
    finally:
        store.close()


@pytest.fixture(params=["memory", "redis"])
def ops(request: pytest.FixtureRequest) -> Iterator[Ops]:
    yield from make_ops(request.param)


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def ops_all(request: pytest.FixtureRequest) -> Iterator[Ops]:
    """Also on a Cluster: for the commands that scan (ls, backup, migrate)."""
    yield from make_ops(request.param)


def schema_1(snapshot: Snapshot, **changes: Any) -> bytes:
    """``snapshot`` encoded as schema 1 wrote it: a msgpack map with the field names."""
    fields = {name: getattr(snapshot, name) for name in snapshot.__struct_fields__}
    fields.update(changes)
    for slot in ("auth", "resume"):
        if fields[slot] is not None:
            value = fields[slot]
            fields[slot] = {n: getattr(value, n) for n in value.__struct_fields__}
    fields["schema"] = 1
    return msgspec.msgpack.encode(fields)
