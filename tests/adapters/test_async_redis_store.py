"""What AsyncRedisStore adds to the contract (which it runs in full, in test_store_contract.py):
every URL kind, side by side with a sync RedisStore, faults, and cancellation.

Every test runs against real redis-servers (tests/redis_servers.py), each inside its own
``asyncio.run``; the cancellation tests put a real, slow TCP proxy between client and server.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster

from adapters import AsyncRedisStore, RedisStore
from fsm.errors import StoreUnavailable
from fsm.records import HistoryEntry, Loaded, Record, SaveStatus
from tests import redis_servers

T = TypeVar("T")
_names = itertools.count(1)
DEPLOYMENTS: dict[str, Callable[[], str]] = {
    "standalone": lambda: redis_servers.standalone().url,
    "cluster": lambda: redis_servers.cluster().url,
    "sentinel": lambda: redis_servers.sentinel().url,
}


def _namespace() -> str:
    return f"async{next(_names)}-{os.getpid()}"


def entry(version: int) -> HistoryEntry:
    return HistoryEntry(
        version=version, from_stage="a", to_stage="b", event="e", update_from="t", at=1.0
    )


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


# -- URLs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_from_url_on_every_deployment(deployment: str) -> None:
    url, namespace = DEPLOYMENTS[deployment](), _namespace()
    client = "RedisCluster" if deployment == "cluster" else "Redis"

    async def main() -> None:
        store = AsyncRedisStore.from_url(url, namespace=namespace)
        assert repr(store) == f"AsyncRedisStore(namespace={namespace!r}, client={client})"
        try:
            saved = await store.save("u", b"async", version=1, expected_version=0, ttl=60)
            assert saved.saved and saved.tag
            loaded = await store.load("u")
            assert loaded == Loaded(Record(b"async", 1)) and loaded.record.tag == saved.tag  # type: ignore[union-attr]
            locked = await store.lock_and_load("u", "me", 5)
            assert locked == Loaded(Record(b"async", 1), seen=False, locked=True)
            assert await store.release_lock("u", "me")
        finally:
            await store.aclose()

    run(main)
    sync = RedisStore.from_url(url, namespace=namespace)  # the same URL, the same data
    assert sync.load("u").record == Record(b"async", 1)
    sync.close()


def test_a_tls_url(tmp_path: Path) -> None:
    server, cert = redis_servers.tls_server(tmp_path)
    server.start()

    async def main() -> None:
        url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={cert}"
        store = AsyncRedisStore.from_url(url, namespace="t")
        assert (await store.save("u", b"over tls", version=1, expected_version=0, ttl=60)).saved
        assert (await store.load("u")).record == Record(b"over tls", 1)
        await store.aclose()
        plain = AsyncRedisStore.from_url(f"redis://127.0.0.1:{server.port}/0", retries=0)
        with pytest.raises(StoreUnavailable):  # the server speaks TLS only
            await plain.load("u")
        await plain.aclose()

    try:
        run(main)
        assert RedisStore.from_url(  # what the async store wrote, the sync one reads
            f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={cert}", namespace="t"
        ).load("u").record == Record(b"over tls", 1)
    finally:
        server.stop()


def test_a_unix_socket_url() -> None:
    server = redis_servers.RedisServer(name="unix")
    sock = server.dir / "redis.sock"
    server.args += ["--unixsocket", str(sock), "--unixsocketperm", "700"]
    server.start()

    async def main() -> None:
        store = AsyncRedisStore.from_url(f"unix://{sock}?db=0", namespace="unix")
        assert (await store.save("u", b"x", version=1, expected_version=0, ttl=60)).saved
        assert (await store.load("u")).record == Record(b"x", 1)
        await store.aclose()

    try:
        run(main)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://localhost", "unsupported Redis URL scheme 'http'"),
        ("redis+sentinel://127.0.0.1:26379", "names the service"),
        ("redis+cluster://nohostport", "expected host:port"),
    ],
)
def test_bad_urls_are_refused_as_by_the_sync_store(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        AsyncRedisStore.from_url(url)
    with pytest.raises(ValueError, match=problem):
        RedisStore.from_url(url)


# -- side by side with a sync RedisStore -----------------------------------------------------
@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_sync_and_async_stores_share_sessions_ids_history_and_locks(deployment: str) -> None:
    url, namespace = DEPLOYMENTS[deployment](), _namespace()
    sync = RedisStore.from_url(url, namespace=namespace)

    async def main() -> None:
        astore = AsyncRedisStore.from_url(url, namespace=namespace)
        try:
            await _interleave(sync, astore)
        finally:
            await astore.aclose()

    try:
        run(main)
    finally:
        sync.close()


async def _interleave(sync: RedisStore, astore: AsyncRedisStore) -> None:
    tag = ""
    for version in range(1, 11):  # odd versions written by the async store, even by the sync
        options: dict[str, Any] = dict(
            version=version, expected_version=version - 1, ttl=60, history=entry(version),
            message_id=f"m{version}", expected_tag=tag,
        )  # fmt: skip
        if version % 2:
            result = await astore.save("u", b"v%d" % version, **options)
        else:
            result = sync.save("u", b"v%d" % version, **options)
        assert result.saved, version  # the version (and the other's tag) continue the chain
        tag = result.tag
    assert sync.load("u").record == (await astore.load("u")).record == Record(b"v10", 10)
    assert [h.version for h in await astore.history("u")] == list(range(10, 0, -1))
    assert await astore.history("u") == sync.history("u")
    # Message ids: one applied by either store is a duplicate for the other.
    again = dict(version=11, expected_version=10, ttl=60)
    assert (await astore.save("u", b"x", message_id="m4", **again)).status is SaveStatus.DUPLICATE
    assert sync.save("u", b"x", message_id="m3", **again).status is SaveStatus.DUPLICATE
    assert (await astore.load("u", message_id="m2")).seen and sync.load("u", message_id="m1").seen
    # The lease: taken by one, it refuses the other, until its owner (from either) frees it.
    assert sync.acquire_lock("u", "sync-worker", 30)
    assert not await astore.acquire_lock("u", "async-worker", 30)
    assert await astore.lock_and_load("u", "async-worker", 30) is None
    locked = await astore.save("u", b"x", owner="async-worker", **again)
    assert locked.status is SaveStatus.LOCKED and locked.current == Record(b"v10", 10)
    info = await astore.lock_info("u")
    assert info is not None and info.owner == "sync-worker" and 0 < info.ttl <= 30
    assert (await astore.load("u")).locked
    assert await astore.release_lock("u", "sync-worker")
    assert await astore.lock_and_load("u", "async-worker", 30) == Loaded(
        Record(b"v10", 10), seen=False, locked=True
    )
    assert not sync.acquire_lock("u", "sync-worker", 30)
    done = await astore.save("u", b"v11", owner="async-worker", release=True, **again)
    assert done.saved and sync.lock_info("u") is None
    # TTL, quarantine and delete, seen from the other side.
    assert 59 < (await astore.ttl("u") or 0) <= 60
    qid = await astore.quarantine("u", b"v11", "test")
    assert [e.id for e in sync.quarantined("u")] == [qid] and sync.load("u").record is None
    sync.save("u", b"back", version=12, expected_version=0, ttl=60)
    assert await astore.delete("u") and sync.load("u").record is None


# -- faults ----------------------------------------------------------------------------------
def test_an_unreachable_server_raises_store_unavailable_without_the_password() -> None:
    server = redis_servers.RedisServer(
        "--requirepass", "hunter2", name="gone", client_options={"password": "hunter2"}
    ).start()
    url = f"redis://:hunter2@127.0.0.1:{server.port}/0"

    async def main() -> None:
        store = AsyncRedisStore.from_url(url, namespace="gone", retries=1)
        await store.save("u", b"secret-token-bytes", version=1, expected_version=0, ttl=60)
        server.kill()
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "load": lambda: store.load("u"),
            "save": lambda: store.save("u", b"x", version=2, expected_version=1, ttl=60),
            "lock_and_load": lambda: store.lock_and_load("u", "o", 5),
            "acquire_lock": lambda: store.acquire_lock("u", "o", 5),
            "history": lambda: store.history("u"),
            "quarantine": lambda: store.quarantine("u", b"raw", "bad"),
        }
        for operation, call in calls.items():
            with pytest.raises(StoreUnavailable) as info:
                await call()
            assert info.value.operation == operation and info.value.user_key == "u"
            assert "hunter2" not in str(info.value) and "secret-token" not in str(info.value)
            assert isinstance(info.value.__cause__, redis.ConnectionError)
        assert "hunter2" not in repr(store)
        await store.aclose()

    try:
        run(main)
    finally:
        server.stop()
    for bad in ("redis+cluster://:hunter2@127.0.0.1:1", "redis+sentinel://:hunter2@127.0.0.1:1/m"):

        async def nothing_listens(url: str = bad) -> None:
            store = AsyncRedisStore.from_url(url, retries=0)
            with pytest.raises(StoreUnavailable) as info:
                await store.load("u")
            assert "hunter2" not in str(info.value)
            await store.aclose()

        asyncio.run(nothing_listens())


def test_more_concurrent_calls_than_connections_wait_their_turn() -> None:
    # redis-py's asyncio pool refuses a command when every connection is busy: the store
    # queues it instead (no retries here, so a refusal would show).
    server = redis_servers.RedisServer(name="pool").start()

    async def writer(store: AsyncRedisStore, user: str) -> None:
        for version in range(1, 6):
            saved = await store.save(user, b"x", version=version, expected_version=version - 1,
                                     ttl=60)  # fmt: skip
            assert saved.saved

    async def main() -> int:
        store = AsyncRedisStore.from_url(server.url, max_connections=4, retries=0)
        try:
            await asyncio.gather(*(writer(store, f"u{n}") for n in range(64)))
            with server.client() as probe:  # itself one of the server's clients
                return int(probe.info("clients")["connected_clients"]) - 1
        finally:
            await store.aclose()

    try:
        assert 1 <= run(main) <= 4
    finally:
        server.stop()
    with pytest.raises(ValueError, match="max_connections"):
        AsyncRedisStore.from_url(server.url, max_connections=0)


def test_a_fresh_cluster_store_takes_concurrent_first_calls() -> None:
    # redis-py's async Cluster client, left to discover its nodes on the first commands,
    # fails some of them when they arrive together ("Connection closed by server"): the store
    # discovers first. No retries here, so a single spurious failure would show.
    url = redis_servers.cluster().url

    async def worker(store: AsyncRedisStore, me: int) -> int:
        won = 0
        for n in range(15):
            won += await store.acquire_lock(f"hot{n}", f"o{me}", 5)
            assert (await store.load(f"hot{n}")).locked
        return won

    async def main() -> None:
        for _ in range(4):
            store = AsyncRedisStore.from_url(url, namespace=_namespace(), retries=0)
            try:
                assert sum(await asyncio.gather(*(worker(store, me) for me in range(8)))) == 15
            finally:
                await store.aclose()

    run(main)


class _LosesOneReply(redis.asyncio.Redis):
    """Runs the next command of a kind, then loses its reply, as a dropped connection would."""

    lose: str | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        result = await super().execute_command(*args, **options)
        name = args[0] if args[0] != "EVALSHA" else f"EVALSHA:{str(args[1])[:8]}"
        if self.lose is not None and str(name).startswith(self.lose):
            self.lose = None
            raise redis.ConnectionError("reply lost")
        return result


def test_a_write_or_lock_whose_reply_was_lost_is_applied_once() -> None:
    server, namespace = redis_servers.standalone(), _namespace()
    sync = RedisStore.from_url(server.url, namespace=namespace)

    async def main() -> None:
        client = _LosesOneReply(host="127.0.0.1", port=server.port)
        store = AsyncRedisStore(client, namespace=namespace)
        await store.save("u", b"one", version=1, expected_version=0, ttl=60)
        client.lose = f"EVALSHA:{store._scripts['save'].sha[:8]}"
        result = await store.save(
            "u", b"two", version=2, expected_version=1, ttl=60, history=entry(2), message_id="m"
        )
        assert result.saved  # the retry found its own bytes: not a conflict, not a duplicate
        assert sync.load("u").record == Record(b"two", 2) and sync.history("u") == [entry(2)]
        client.lose = "SET"  # the lock's SET NX landed, its reply did not
        assert await store.acquire_lock("u", "me", 60)  # the retry recognises its own token
        store = AsyncRedisStore(client, namespace=namespace, retries=0)
        client.lose = f"EVALSHA:{store._scripts['lock_and_load'].sha[:8]}"
        with pytest.raises(StoreUnavailable):
            await store.lock_and_load("v", "me", 30)  # it landed; its reply did not
        assert await store.lock_info("v") is None  # not left holding the user for 30 s
        await client.aclose()

    try:
        run(main)
    finally:
        sync.close()


# -- cancellation ----------------------------------------------------------------------------
DELAY = 0.0005  # seconds the proxy holds each chunk, each way


class SlowProxy:
    """A TCP proxy to a redis-server that holds every chunk ``DELAY`` seconds each way, so that
    a cancellation often lands while a command or its reply is on the wire: the window of
    CVE-2023-28858/28859 (redis-py #2624, #2665), where a reused connection served the reply
    of a cancelled command to the next one."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._sessions: list[asyncio.Task[Any]] = []

    async def start(self) -> SlowProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._sessions.append(asyncio.current_task())  # type: ignore[arg-type]
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(DELAY)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()  # one side closed: the other learns it, as through a real proxy

    async def aclose(self) -> None:
        """Stop listening, close every connection and wait for their pipes to end."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._sessions, return_exceptions=True)


async def _interrupted(call: Coroutine[Any, Any, T], rng: random.Random) -> tuple[bool, T | None]:
    """Run ``call``, cut short at a random point: by ``asyncio.timeout`` after a random delay,
    or by ``task.cancel()`` after a random number of event-loop turns; up to a few times what
    the call takes through the proxy, most often early, where the call is still connecting or
    sending. (True, None) if it was cut short, else (False, its result)."""
    if rng.random() < 0.5:
        try:
            async with asyncio.timeout(24 * DELAY * rng.random() ** 2):
                return False, await call
        except TimeoutError:
            return True, None
    task = asyncio.ensure_future(call)
    for _ in range(int(600 * rng.random() ** 2)):
        if task.done():
            break
        await asyncio.sleep(0)
    task.cancel()
    try:
        return False, await task
    except asyncio.CancelledError:
        return True, None


async def _canary_holds(store: AsyncRedisStore) -> None:
    """The reused connection answers each call with that call's own reply."""
    assert await store.load("canary", message_id="c1") == Loaded(Record(b"canary", 1), True)
    info = await store.lock_info("canary-lock")
    assert info is not None and info.owner == "canary-owner"
    assert await store.history("canary") == [entry(1)]
    assert await store.ttl("nobody") is None


async def _cancellation_rounds(
    store: AsyncRedisStore, sync: RedisStore, rounds: int
) -> Counter[str]:
    rng, seen = random.Random(2023_28858), Counter[str]()
    await store.save("canary", b"canary", version=1, expected_version=0, ttl=600,
                     history=entry(1), message_id="c1")  # fmt: skip
    assert await store.acquire_lock("canary-lock", "canary-owner", 600)
    version = 0
    for n in range(rounds):
        before = sync.load("u").record
        if n % 3 == 0:  # cold: the next call connects first, a window of its own to cut
            await store.client.aclose()
        if rng.random() < 0.7:
            write = dict(version=version + 1, expected_version=version, ttl=600,
                         history=entry(version + 1), message_id=f"m{n}")  # fmt: skip
            cut, result = await _interrupted(store.save("u", b"v%d" % n, **write), rng)
            await asyncio.sleep(10 * DELAY)  # whatever was on the wire has arrived by now
            await _canary_holds(store)
            after = sync.load("u").record
            assert after in (before, Record(b"v%d" % n, version + 1))  # old or new, whole
            landed = after != before
            assert cut or (result is not None and result.saved and landed)
            seen["save"] += not cut
            if cut:  # the message re-delivered is applied exactly once
                seen["save cut after it landed" if landed else "save cut before it landed"] += 1
                redo = await store.save("u", b"v%d" % n, **write)
                assert redo.status is (SaveStatus.DUPLICATE if landed else SaveStatus.SAVED)
            version += 1
            history = [h.version for h in sync.history("u", limit=5)]
            assert history == list(range(version, max(0, version - 5), -1))  # no gap, no twice
        else:
            owner = f"o{n}"
            cut, loaded = await _interrupted(store.lock_and_load("u", owner, 5.0), rng)
            await asyncio.sleep(10 * DELAY)
            await _canary_holds(store)
            lease = sync.lock_info("u")
            assert cut or loaded == Loaded(before, seen=False, locked=True)
            assert lease is None or (lease.owner == owner and lease.ttl <= 5.0)
            assert lease is not None or cut
            seen["lock cut, lock taken" if cut and lease else "lock cut" if cut else "lock"] += 1
            sync.release_lock("u", owner)
            assert sync.load("u").record == before
    return seen


def test_cancellation_never_leaves_a_wrong_reply_nor_half_a_write() -> None:
    server, namespace = redis_servers.standalone(), _namespace()
    sync = RedisStore.from_url(server.url, namespace=namespace)

    async def main() -> Counter[str]:
        proxy = await SlowProxy(server.port).start()
        # A command at a time, so a cut can stop a command on the wire; the auto-pipelined
        # store's own rounds are in test_redis_pipeline.py.
        store = AsyncRedisStore.from_url(
            f"redis://127.0.0.1:{proxy.port}/0", namespace=namespace, pipeline=False
        )
        try:
            return await _cancellation_rounds(store, sync, rounds=150)
        finally:
            await store.aclose()
            await proxy.aclose()

    try:
        seen = run(main)
    finally:
        sync.close()
    # The rounds reached every window: cut before and after the server applied the command.
    assert seen["save cut before it landed"] >= 5 and seen["save cut after it landed"] >= 5, seen
    assert seen["lock cut, lock taken"] >= 2 and seen["save"] >= 5 and seen["lock"] >= 3, seen


def test_cancellation_on_the_cluster() -> None:
    cluster, namespace = redis_servers.cluster(), _namespace()
    sync = RedisStore.from_url(cluster.url, namespace=namespace)

    async def main() -> Counter[str]:
        proxies = [await SlowProxy(node.port).start() for node in cluster.nodes]
        via = {proxy.target: proxy.port for proxy in proxies}
        client = RedisCluster(  # every node reached through its proxy, redirects included
            startup_nodes=[ClusterNode("127.0.0.1", proxy.port) for proxy in proxies],
            address_remap=lambda address: (address[0], via.get(address[1], address[1])),
        )
        store = AsyncRedisStore(client, namespace=namespace)
        try:
            return await _cancellation_rounds(store, sync, rounds=100)
        finally:
            await store.aclose()
            for proxy in proxies:
                await proxy.aclose()

    try:
        seen = run(main)
    finally:
        sync.close()
    assert seen["save cut before it landed"] >= 3 and seen["save cut after it landed"] >= 3, seen
