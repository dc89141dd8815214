"""What the Redis store adds to the contract: layout, slots, round trips, scripts, bad bytes.

Every test runs against a real redis-server started by the tests (tests/redis_servers.py).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from adapters.redis import RedisStore, split_value
from adapters.redis_keys import KeyLayout
from flows.credex import build_engine
from flows.credex.fake import FakeCredexApi
from fsm import SCHEMA_VERSION, Engine, FakeClock, decode_snapshot
from fsm.errors import SchemaTooNew, StoreUnavailable
from fsm.records import HistoryEntry, Record, SaveStatus
from tests import redis_servers
from tests.fsm.sample_flows import Counter

_names = itertools.count(1)
NASTY = ["", "{", "}", "{}", "a}b{c", "fsm:{x}:s", "*", "?", "[a]", "a b", "a\nb", "a\x00b",
         "ü", "日本", "🙂", "%7B", "%", "u", "~", "a:b:c", " " * 3, "x" * 300]  # fmt: skip


def _namespace() -> str:
    return f"t{next(_names)}-{os.getpid()}"


@pytest.fixture
def server() -> redis_servers.RedisServer:
    return redis_servers.standalone()


@pytest.fixture
def store(server: redis_servers.RedisServer) -> Iterator[RedisStore]:
    s = RedisStore.from_url(server.url, namespace=_namespace())
    yield s
    s.close()


# -- layout ----------------------------------------------------------------------------------
@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_every_key_of_a_user_is_in_one_slot_and_maps_back(user: str) -> None:
    layout = KeyLayout("bot")
    keys = layout.keys(user)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert layout.user_of(layout.session(user)) == user
    for key in keys:
        tag = key[key.index("{") + 1 : key.index("}")]
        assert tag and "{" not in tag and "}" not in tag  # the tag is exactly the escaped id
        assert not any(c in key.split("{", 1)[1] for c in "* ?[]\n")


@given(st.text(max_size=20), st.text(max_size=20))
@settings(max_examples=300, deadline=None)
def test_distinct_users_never_share_a_key(a: str, b: str) -> None:
    layout = KeyLayout("bot")
    if a != b:
        assert not set(layout.keys(a)) & set(layout.keys(b))


def test_namespaces_are_checked_and_isolate_bots(server: redis_servers.RedisServer) -> None:
    for bad in ("", "a{b", "a:b", "a*", "x" * 65, "sp ace"):
        with pytest.raises(ValueError, match="namespace"):
            KeyLayout(bad)
    one = RedisStore.from_url(server.url, namespace=_namespace())
    two = RedisStore.from_url(server.url, namespace=_namespace())
    one.save("u", b"one", version=1, expected_version=0, ttl=60)
    assert two.load("u").record is None and list(two.scan()) == []
    assert list(one.scan()) == ["u"]


def test_adversarial_ids_on_the_cluster(
    server: redis_servers.RedisServer,
) -> None:
    cluster = redis_servers.cluster()
    store = RedisStore.from_url(cluster.url, namespace=_namespace())
    for n, user in enumerate(NASTY):
        assert store.save(user, b"%d" % n, version=1, expected_version=0, ttl=60).saved
        assert store.acquire_lock(user, f"o{n}", 60)
        assert store.quarantine(user, b"%d" % n, "test") is not None  # a 2-key script
    assert sorted(e.user_key for e in store.quarantined()) == sorted(NASTY)
    for n, user in enumerate(NASTY):
        store.save(user, b"again %d" % n, version=2, expected_version=0, ttl=60, owner=f"o{n}")
    assert sorted(store.scan()) == sorted(NASTY)  # across all three primaries, no collision
    assert {store.load(u).record.payload for u in NASTY} == {  # type: ignore[union-attr]
        b"again %d" % n for n in range(len(NASTY))
    }


# -- the stored value ------------------------------------------------------------------------
def test_the_version_is_readable_without_decoding(store: RedisStore) -> None:
    saved = store.save("u", b"\x93msgpack", version=7, expected_version=0, ttl=60)
    raw = store.client.get(store.layout.session("u"))
    assert raw == b"7.%s:\x93msgpack" % saved.tag.encode()  # version, then the write's tag
    record = store.load("u").record
    assert record is not None and (record.version, record.tag) == (7, saved.tag)
    assert split_value(b"12.0123abcd:x") == Record(b"x", 12, "0123abcd")
    foreign = [b"", b"x", b"0.0123abcd:x", b"12:x", b"1.0123abcX:x", b"01.0123abcd:x",
               b"1" * 16 + b".0123abcd:x", b"\xff\x00"]  # fmt: skip
    for value in foreign:
        assert split_value(value).version == 0 and split_value(value).payload == value


def test_a_save_expecting_nothing_never_overwrites_foreign_bytes(store: RedisStore) -> None:
    store.client.set(store.layout.session("u"), b'{"stage": "MENU"}')
    refused = store.save("u", b"new", version=1, expected_version=0, ttl=60)
    assert refused.status.value == "conflict"
    assert refused.current == Record(b'{"stage": "MENU"}', 0)  # for the engine to quarantine


def test_the_same_version_written_by_another_write_is_a_conflict(store: RedisStore) -> None:
    first = store.save("u", b"mine", version=3, expected_version=0, ttl=60)
    store.client.delete(store.layout.session("u"))  # a failover lost it...
    store.save("u", b"theirs", version=3, expected_version=0, ttl=60)  # ...another wrote v3
    stale = store.save("u", b"x", version=4, expected_version=3, ttl=60, expected_tag=first.tag)
    assert stale.status.value == "conflict" and stale.current.payload == b"theirs"  # type: ignore[union-attr]


class _CountingRedis(redis.Redis):
    """A redis-py client that counts its round trips (one per command it sends)."""

    sent = 0

    def execute_command(self, *args: object, **options: object) -> object:
        self.sent += 1
        return super().execute_command(*args, **options)


def test_round_trips_per_message(server: redis_servers.RedisServer) -> None:
    client = _CountingRedis(host="127.0.0.1", port=server.port)
    store = RedisStore(client, namespace=_namespace())
    bob = "263770000002"
    first = build_engine(store, FakeCredexApi())
    first.handle(bob, "hi")  # scripts loaded, session created

    def cost(engine: Engine, text: str) -> int:
        before = client.sent
        engine.handle(bob, text)
        return client.sent - before

    assert cost(first, "9") == 1  # warm: this process saved the last version, no read
    assert cost(build_engine(store, FakeCredexApi()), "9") == 2  # cold: read, then write
    assert cost(first, "9") == 2  # stale: refused write whose reply is the state, then write
    carol = "263770000003"
    first.handle(carol, "hi")
    first.handle(carol, "Upgrade membership")
    before = client.sent
    result = first.handle(carol, "Confirm")  # the upgrade is an action
    assert "tier 3 member" in result.texts[0]
    # The pending state is saved with the lease taken in the same script (1), the action
    # runs with no read (nobody writes while we hold the lease), and its outcome is saved
    # with the lease released in the same script (1).
    assert client.sent - before == 2
    assert store.lock_info(carol) is None


def test_script_flush_between_calls_is_invisible(store: RedisStore) -> None:
    assert store.save("u", b"one", version=1, expected_version=0, ttl=60).saved
    store.client.script_flush()
    assert store.load("u").record is not None  # NOSCRIPT: reloaded and run, transparently
    store.client.script_flush()
    assert store.save("u", b"two", version=2, expected_version=1, ttl=60).saved
    store.client.script_flush()
    assert store.lock_and_load("u", "o", 60) is not None
    store.client.script_flush()
    assert store.release_lock("u", "o")


def test_an_unreachable_server_raises_store_unavailable_naming_the_operation() -> None:
    server = redis_servers.RedisServer(name="gone").start()
    store = RedisStore.from_url(server.url, namespace="gone", retries=1)
    store.save("u", b"secret-token-bytes", version=1, expected_version=0, ttl=60)
    server.kill()
    try:
        for operation, call in [
            ("load", lambda: store.load("u")),
            ("save", lambda: store.save("u", b"x", version=2, expected_version=1, ttl=60)),
            ("lock_and_load", lambda: store.lock_and_load("u", "o", 5)),
            ("history", lambda: store.history("u")),
        ]:
            with pytest.raises(StoreUnavailable) as info:
                call()
            assert info.value.operation == operation and info.value.user_key == "u"
            assert "secret-token-bytes" not in str(info.value)
        with pytest.raises(StoreUnavailable):
            list(store.scan())
    finally:
        server.stop()


# -- bytes written by something else ------------------------------------------------------------
def _newer_schema(valid: bytes) -> bytes:
    fields = msgspec.msgpack.decode(valid)
    fields[8] = SCHEMA_VERSION + 1  # the schema slot: one deploy ahead
    return msgspec.msgpack.encode(fields)


def _corruptions(valid: bytes) -> list[bytes]:
    rng = random.Random(7)
    flipped = bytearray(valid)
    flipped[len(flipped) // 2] ^= 0x40
    return [
        bytes(rng.getrandbits(8) for _ in range(64)),  # random
        valid[: len(valid) // 2],  # truncated
        bytes(flipped),  # a bit flipped
        _newer_schema(valid),  # a newer schema than ours
        b"\xdb\xff\xff\xff\xf0" + b"x" * 10,  # a str8/32 length prefix far past the end
        b"",
    ]


def test_foreign_bytes_are_quarantined_byte_for_byte_and_the_user_restarts(
    server: redis_servers.RedisServer,
) -> None:
    store = RedisStore.from_url(server.url, namespace=_namespace(), quarantine_limit=3)
    clock = FakeClock()
    engine = Engine(Counter(), store, clock=clock, recent=0)
    engine.handle("u", "go")
    record = store.load("u").record
    assert record is not None
    key = store.layout.session("u")
    kept: list[bytes] = []
    newer = _newer_schema(record.payload)
    for raw in _corruptions(record.payload):
        with_prefix = random.choice([raw, b"5.0123abcd:" + raw])  # with or without our prefix
        store.client.set(key, with_prefix)
        if raw == newer:  # not corrupt: written by newer code, so refused, untouched
            with pytest.raises(SchemaTooNew):
                engine.handle("u", "+1")
            assert store.client.get(key) == with_prefix
            store.client.delete(key)
            engine.handle("u", "go")
            continue
        try:
            result = engine.handle("u", "+1")
        except Exception as exc:  # noqa: BLE001 - the test reports what it was
            pytest.fail(f"{type(exc).__name__}: {exc} for {raw[:20]!r}")
        assert result.texts[0] == engine.reset_notice
        assert decode_snapshot(store.load("u").record.payload).stage == "counting"  # type: ignore[union-attr]
        kept.append(split_value(with_prefix).payload)
    entries = [e.raw for e in store.quarantined()]
    assert entries == kept[-3:]  # byte for byte, and bounded per user (oldest dropped)
    assert store.client.llen(store.layout.keys("u")[4]) == 3


def test_a_json_session_from_the_old_bot_is_quarantined(store: RedisStore) -> None:
    engine = Engine(Counter(), store, recent=0)
    store.client.set(store.layout.session("u"), b'{"stage": "MENU", "jwt": "eyJ..."}')
    result = engine.handle("u", "go")
    assert result.texts[0] == engine.reset_notice
    [entry] = store.quarantined()
    assert entry.raw == b'{"stage": "MENU", "jwt": "eyJ..."}'
    assert "eyJ" not in repr(entry)


def test_redis_errors_never_leak_raw(store: RedisStore) -> None:
    store.client.set(store.layout.keys("u")[2], b"not a sorted set")  # wrong type for seen ids
    with pytest.raises(StoreUnavailable) as info:
        store.load("u", message_id="m")
    assert isinstance(info.value.__cause__, redis.ResponseError)


class _LosesOneReply(redis.Redis):
    """Runs the next command of a kind, then loses its reply, as a dropped connection would."""

    lose: str | None = None

    def execute_command(self, *args: object, **options: object) -> object:
        result = super().execute_command(*args, **options)
        name = args[0] if args[0] != "EVALSHA" else f"EVALSHA:{str(args[1])[:8]}"
        if self.lose is not None and str(name).startswith(self.lose):
            self.lose = None
            raise redis.ConnectionError("reply lost")
        return result


def test_a_write_whose_reply_was_lost_is_applied_once(server: redis_servers.RedisServer) -> None:
    client = _LosesOneReply(host="127.0.0.1", port=server.port)
    store = RedisStore(client, namespace=_namespace())
    store.save("u", b"one", version=1, expected_version=0, ttl=60)
    client.lose = f"EVALSHA:{store._scripts['save'].sha[:8]}"
    history = HistoryEntry(
        version=2, from_stage="a", to_stage="b", event="e", update_from="t", at=1
    )
    result = store.save(
        "u", b"two", version=2, expected_version=1, ttl=60, history=history, message_id="m1"
    )
    assert result.saved  # the retry found its own bytes: not a conflict, not a duplicate
    assert store.load("u").record.payload == b"two"  # type: ignore[union-attr]
    assert store.history("u") == [history]  # appended once
    assert client.zcard(store.layout.keys("u")[2]) == 1  # the message id recorded once

    client.lose = "SET"  # the lock's SET NX landed, its reply did not
    assert store.acquire_lock("u", "me", 60)  # the retry recognises its own token
    assert store.lock_info("u").owner == "me"  # type: ignore[union-attr]


def test_a_version_that_went_back_on_redis_is_reported(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(Counter(), store)
    engine.handle("u", "go")
    engine.handle("u", "+1")
    older = store.client.get(store.layout.session("u"))
    engine.handle("u", "+1")
    engine.handle("u", "+1")
    store.client.set(store.layout.session("u"), older)  # as a promoted replica that lagged
    result = engine.handle("u", "+1")
    assert engine.stats["version_regressions"] == 1 and "went back from 4 to 2" in caplog.text
    assert result.snapshot.version == 3


def test_a_unix_socket_url() -> None:
    server = redis_servers.RedisServer(name="unix")
    sock = server.dir / "redis.sock"
    server.args += ["--unixsocket", str(sock), "--unixsocketperm", "700"]
    server.start()
    try:
        store = RedisStore.from_url(f"unix://{sock}?db=0", namespace="unix")
        assert store.save("u", b"x", version=1, expected_version=0, ttl=60).saved
        assert store.load("u").record is not None
        store.close()
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
def test_bad_urls_are_refused_clearly(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        RedisStore.from_url(url)


def test_a_password_never_shows_in_a_url_error() -> None:
    with pytest.raises(ValueError) as info:
        RedisStore.from_url("ftp://user:hunter2@host/x")
    assert "hunter2" not in str(info.value)


def test_a_retried_save_overtaken_by_another_writer_is_still_applied_once(
    server: redis_servers.RedisServer,
) -> None:
    namespace = _namespace()
    other = RedisStore.from_url(server.url, namespace=namespace)

    class Overtaken(_LosesOneReply):
        def execute_command(self, *args: object, **options: object) -> object:
            try:
                return super().execute_command(*args, **options)
            except redis.ConnectionError:  # before our retry, someone else writes on top
                other.save("u", b"three", version=3, expected_version=2, ttl=60)
                raise

    client = Overtaken(host="127.0.0.1", port=server.port)
    store = RedisStore(client, namespace=namespace)
    store.save("u", b"one", version=1, expected_version=0, ttl=60)
    client.lose = f"EVALSHA:{store._scripts['save'].sha[:8]}"
    history = HistoryEntry(
        version=2, from_stage="a", to_stage="b", event="e", update_from="t", at=1.0
    )
    result = store.save("u", b"two", version=2, expected_version=1, ttl=60, history=history)
    assert result.saved  # found by its tagged history entry: not a conflict to re-apply
    assert store.load("u").record == Record(b"three", 3)


def test_after_a_failover_a_cached_version_cannot_overwrite_another_write(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = Engine(Counter(), store), Engine(Counter(), store, recent=0)
    a.handle("u", "go")
    a.handle("u", "+1")
    v2 = store.client.get(store.layout.session("u"))
    a.handle("u", "+1")  # a holds version 3 (count 2)
    store.client.set(store.layout.session("u"), v2)  # failover: version 3 lost
    b.handle("u", "stop")  # b writes another version 3 (stage idle)
    result = a.handle("u", "go")  # a's cached version 3 is not b's version 3
    assert a.stats["version_regressions"] == 1 and "went back" in caplog.text
    assert result.snapshot.version == 4 and result.snapshot.stage == "counting"
    assert result.snapshot.data == {"count": 0}  # applied to b's state (idle -> go), not a's


def test_a_lock_whose_reply_was_lost_for_good_is_released(
    server: redis_servers.RedisServer,
) -> None:
    client = _LosesOneReply(host="127.0.0.1", port=server.port)
    store = RedisStore(client, namespace=_namespace(), retries=0)
    store.lock_and_load("warm", "o", 5)  # the script is loaded
    client.lose = f"EVALSHA:{store._scripts['lock_and_load'].sha[:8]}"
    with pytest.raises(StoreUnavailable):
        store.lock_and_load("u", "me", 30)  # it landed; its reply did not
    assert store.lock_info("u") is None  # not left holding the user for 30 s


def test_a_tls_url(tmp_path: Path) -> None:
    server, cert = redis_servers.tls_server(tmp_path)
    port = server.port
    server.start()
    try:
        store = RedisStore.from_url(
            f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", namespace="t"
        )
        assert store.save("u", b"over tls", version=1, expected_version=0, ttl=60).saved
        assert store.load("u").record == Record(b"over tls", 1)
        store.close()
        plain = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", namespace="t", retries=0)
        with pytest.raises(StoreUnavailable):  # the server speaks TLS only
            plain.load("u")
    finally:
        server.stop()


def test_history_entries_are_stored_as_arrays_and_older_maps_still_read(
    store: RedisStore,
) -> None:
    """An entry is stored as an array of its fields (no field names: about half the bytes per
    entry, for every entry of every user); entries that releases before it stored as maps, with
    their names, are read alike, newest first."""
    old = HistoryEntry(
        version=1, from_stage="init", to_stage="menu", event="show_menu",
        update_from="old-worker:1", at=1.5, from_step="greeting", to_step="dashboard",
    )  # fmt: skip
    key = store.layout.keys("u")[1]
    store.client.lpush(key, b"0" * 8 + msgspec.msgpack.encode(old))  # a map, as written before
    new = msgspec.structs.replace(old, version=2, from_stage="menu", event="", update_from="w:2")

    saved = store.save("u", b"2", version=2, expected_version=0, ttl=60, history=new)
    assert saved.saved
    stored = store.client.lindex(key, 0)
    assert isinstance(stored, bytes) and stored[8] == 0x98  # a fixarray of the 8 fields
    assert len(stored) < len(b"0" * 8 + msgspec.msgpack.encode(new)) - 60
    assert store.history("u") == [new, old]


class _LosesAndMeddles(_LosesOneReply):
    """Loses the reply of one command, as _LosesOneReply, and runs ``meddle`` in that gap
    (another worker acting between the first attempt and its retry)."""

    meddle: Callable[[], object] | None = None

    def execute_command(self, *args: object, **options: object) -> object:
        lose = self.lose
        try:
            return super().execute_command(*args, **options)
        except redis.ConnectionError:
            if lose is not None and self.meddle is not None:
                self.meddle()
            raise


@pytest.mark.parametrize(
    ("meddling", "leased"),
    [
        pytest.param("nothing", True, id="lease-still-ours"),
        pytest.param("lease-lapsed", True, id="lease-free-again"),
        pytest.param("lease-taken", False, id="lease-taken-meanwhile"),
        pytest.param("state-moved", False, id="state-moved-on"),
    ],
)
def test_a_retried_save_that_took_the_lease_says_whether_it_still_holds_it(
    server: redis_servers.RedisServer, meddling: str, leased: bool
) -> None:
    """A save with ``lease`` whose reply was lost is retried. If its first attempt landed, the
    retry is SAVED, and says ``unleased`` when the caller cannot have the lease now (another
    worker took it after it lapsed, or the state moved on): the engine then locks and reloads
    before running the action, never acting without the lease."""
    client = _LosesAndMeddles(host="127.0.0.1", port=server.port)
    other = redis.Redis(host="127.0.0.1", port=server.port)
    store = RedisStore(client, namespace=_namespace())
    session, _, _, lock, _ = store.layout.keys("u")
    store.save("u", b"one", version=1, expected_version=0, ttl=60)

    def meddle() -> None:
        if meddling == "lease-lapsed":
            other.delete(lock)
        elif meddling == "lease-taken":
            other.set(lock, "B", px=60_000)
        elif meddling == "state-moved":
            other.delete(lock)
            other.set(session, b"3.0123abcd:three")

    client.meddle = meddle
    client.lose = f"EVALSHA:{store._scripts['save'].sha[:8]}"
    history = HistoryEntry(version=2, from_stage="a", to_stage="b", event="e", update_from="t",
                           at=1)  # fmt: skip
    result = store.save("u", b"two", version=2, expected_version=1, ttl=60, owner="A",
                        lease=30, history=history)  # fmt: skip
    assert result.saved and result.unleased is not leased
    holder = store.lock_info("u")
    if leased:
        assert holder is not None and holder.owner == "A"
    else:
        assert holder is None or holder.owner == "B"
    assert store.history("u") == [history]  # applied once either way


#: A WhatsApp message id of a realistic length (they run 60 to 80 characters).
WAMID = "wamid.HBgMMjYzNzcwMDAwMDAxFQIAEhggQTNCNEY1RTZBN0I4QzlEMEUxRjJBM0I0QzVENkU3AA=="


def _digest(message_id: str) -> bytes:
    return hashlib.sha1(message_id.encode()).hexdigest()[:16].encode()


def test_seen_message_ids_are_kept_as_digests_so_the_set_stays_compact(
    server: redis_servers.RedisServer,
) -> None:
    """An id over 64 bytes would turn the user's whole sorted set into a skiplist; a digest
    of 16 hex digits keeps it a listpack, and a re-delivery is still a duplicate."""
    store = RedisStore.from_url(server.url, namespace=_namespace())
    assert store.save("u", b"1", version=1, expected_version=0, ttl=60, message_id=WAMID).saved
    seen = store.layout.keys("u")[2]
    assert store.client.zrange(seen, 0, -1) == [_digest(WAMID)]
    assert store.client.object("encoding", seen) == b"listpack"
    assert store.load("u", message_id=WAMID).seen
    assert not store.load("u", message_id=WAMID + "x").seen
    again = store.save("u", b"2", version=2, expected_version=1, ttl=60, message_id=WAMID)
    assert again.status is SaveStatus.DUPLICATE
    store.close()


def test_each_seen_id_scores_above_the_last_so_trimming_drops_the_oldest(
    server: redis_servers.RedisServer,
) -> None:
    """Ids that come within one millisecond would tie on the time, and a tie is ordered by
    the member's bytes (a digest's: random), so the trim by rank could drop a newer id: every
    id scores above the newest one already there."""
    store = RedisStore.from_url(server.url, namespace=_namespace(), dedupe_limit=2)
    seen = store.layout.keys("u")[2]
    ahead = store.client.time()[0] * 1000 + 60_000  # a clock step back, or ties: the same
    store.client.zadd(seen, {"first": ahead})
    for version, mid in enumerate(("m1", "m2", "m3"), start=1):
        saved = store.save("u", b"x", version=version, expected_version=version - 1, ttl=60,
                           message_id=mid)  # fmt: skip
        assert saved.saved
    scores = store.client.zrange(seen, 0, -1, withscores=True)
    assert scores == [(_digest("m2"), ahead + 2), (_digest("m3"), ahead + 3)]
    assert not store.load("u", message_id="m1").seen  # the oldest went first
    assert store.load("u", message_id="m2").seen and store.load("u", message_id="m3").seen
    store.close()


def test_ids_an_earlier_release_kept_as_they_came_are_still_seen(
    server: redis_servers.RedisServer,
) -> None:
    """Release 0.1.0 kept each id as it came: such ids (until they expire) are found by loads,
    locked loads and saves alike, so a re-delivery after the upgrade is not applied twice."""
    store = RedisStore.from_url(server.url, namespace=_namespace())
    assert store.save("u", b"1", version=1, expected_version=0, ttl=60).saved
    now_ms = store.client.time()[0] * 1000
    store.client.zadd(store.layout.keys("u")[2], {WAMID: now_ms})  # as release 0.1.0 wrote it
    assert store.load("u", message_id=WAMID).seen
    locked = store.lock_and_load("u", "owner", 30, message_id=WAMID)
    assert locked is not None and locked.seen
    assert store.release_lock("u", "owner")
    again = store.save("u", b"2", version=2, expected_version=1, ttl=60, message_id=WAMID)
    assert again.status is SaveStatus.DUPLICATE
    store.close()


def test_the_legacy_format_writes_what_earlier_workers_read(
    server: redis_servers.RedisServer,
) -> None:
    """``legacy_format=True`` writes history entries as maps, which earlier releases decode
    with a plain ``Decoder(HistoryEntry)``, and message ids as they came, which is all they
    look for: for a rolling deploy or a rollback."""
    store = RedisStore.from_url(server.url, namespace=_namespace(), legacy_format=True)
    entry = HistoryEntry(version=1, from_stage="a", to_stage="b", event="e", update_from="w",
                         at=1.0)  # fmt: skip
    saved = store.save("u", b"1", version=1, expected_version=0, ttl=60, history=entry,
                       message_id=WAMID)  # fmt: skip
    assert saved.saved
    stored = store.client.lindex(store.layout.keys("u")[1], 0)
    assert isinstance(stored, bytes)
    assert msgspec.msgpack.Decoder(HistoryEntry).decode(stored[8:]) == entry  # the old reader
    assert store.history("u") == [entry]
    assert store.client.zrange(store.layout.keys("u")[2], 0, -1) == [WAMID.encode()]
    assert store.load("u", message_id=WAMID).seen
    store.close()


def test_the_environment_can_ask_for_the_legacy_format_everywhere(
    server: redis_servers.RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FSM_LEGACY_FORMAT=1`` sets ``legacy_format=True`` for every store built without the
    option (``fsm serve`` and the CLI build theirs from a URL); a bad value is an error
    naming the variable."""
    entry = HistoryEntry(version=1, from_stage="a", to_stage="b", event="e", update_from="w",
                         at=1.0)  # fmt: skip
    for value, first_byte, member in (
        ("1", 0x88, WAMID.encode()),
        ("on", 0x88, WAMID.encode()),
        ("0", 0x98, _digest(WAMID)),
        ("", 0x98, _digest(WAMID)),
    ):
        monkeypatch.setenv("FSM_LEGACY_FORMAT", value)
        store = RedisStore.from_url(server.url, namespace=_namespace())
        saved = store.save("u", b"1", version=1, expected_version=0, ttl=60, history=entry,
                           message_id=WAMID)  # fmt: skip
        assert saved.saved
        stored = store.client.lindex(store.layout.keys("u")[1], 0)
        assert isinstance(stored, bytes) and stored[8] == first_byte, value  # map or array
        assert store.client.zrange(store.layout.keys("u")[2], 0, -1) == [member], value
        assert store.history("u") == [entry]
        store.close()
    monkeypatch.setenv("FSM_LEGACY_FORMAT", "maybe")
    with pytest.raises(ValueError, match="FSM_LEGACY_FORMAT"):
        RedisStore.from_url(server.url, namespace=_namespace())
