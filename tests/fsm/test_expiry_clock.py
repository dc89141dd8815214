"""Time in tests means the same on every store: the engine decides a session's expiry by its
own clock, so ``! clock +31m`` (and ``chat.advance``) expires a conversation on Redis, whose
own expiry runs on the server's clock, exactly as on the memory store."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from adapters import AsyncRedisStore, MemoryStore, RedisStore
from fsm import AsyncEngine, Engine, FakeClock
from fsm.blocking import BlockingEngine
from fsm.testing import Conversation
from fsm.transcript import TranscriptError
from tests import redis_servers
from tests.fsm.sample_flows import Counter

TTL = 30 * 60

TRANSCRIPT = """
> go
< counting
> +
< 1
! clock +29m
> +
< 2
! clock +31m
> +
< {expired}
= counting.count
> +
< 1
"""


@pytest.fixture(params=["memory", "redis-sync", "redis-async"])
def chat(request: pytest.FixtureRequest) -> Iterator[Conversation]:
    clock = FakeClock()
    namespace = f"expiry-{secrets.token_hex(4)}"
    engine: Engine | BlockingEngine
    if request.param == "memory":
        engine = Engine(Counter(), MemoryStore(clock=clock), clock=clock, session_ttl=TTL)
    elif request.param == "redis-sync":
        store = RedisStore.from_url(redis_servers.standalone().url, namespace=namespace)
        engine = Engine(Counter(), store, clock=clock, session_ttl=TTL)
    else:
        aio = AsyncRedisStore.from_url(redis_servers.standalone().url, namespace=namespace)
        engine = BlockingEngine(AsyncEngine(Counter(), aio, clock=clock, session_ttl=TTL))
    with Conversation(engine, "u1", clock=clock) as conversation:
        yield conversation


def test_the_same_transcript_expires_the_session_on_every_store(chat: Conversation) -> None:
    chat.run(TRANSCRIPT.format(expired=chat.engine.expired_notice))
    assert chat.snapshot is not None and chat.snapshot.data == {"count": 1}


def test_an_expired_session_continues_its_version_chain_over_the_stored_one(
    chat: Conversation,
) -> None:
    chat.run("> go\n> +\n")
    before = chat.snapshot
    assert before is not None
    chat.advance("31m")
    turn = chat.say("go").expect(chat.engine.expired_notice, "counting")
    assert turn.snapshot.version == before.version + 1  # saved over it by compare-and-set
    assert turn.result.snapshot.data == {"count": 0}


def test_moving_a_clock_the_engine_does_not_run_on_is_an_error() -> None:
    engine = Engine(Counter(), MemoryStore(), clock=FakeClock())
    chat = Conversation(engine, "u1", clock=FakeClock())
    with pytest.raises(RuntimeError, match="engine runs on another clock"):
        chat.advance("31m")
    with pytest.raises(TranscriptError, match="engine runs on another clock"):
        chat.run("> go\n! clock +31m\n")
