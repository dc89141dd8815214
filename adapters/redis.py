"""RedisStore: the production store, on standalone Redis, Sentinel or Cluster (redis-py).

Each operation is one atomic Lua script on the keys of one user (one Cluster slot; see
:mod:`adapters.redis_keys` for the layout and :mod:`adapters.redis_scripts` for the scripts), so
a message costs one round trip for the compare-and-set, plus one read when the engine does not
already hold the current record. A conflict reply carries the current record, so a retry needs
no second read; the lock can be taken and the session read in one round trip, and a save can
release the lock in the same step.

Connection loss and timeouts are retried a few times, then raised as
:class:`~fsm.errors.StoreUnavailable` naming the operation. A retried write is applied once: the
compare-and-set refuses a second copy, and a save whose first attempt landed (its reply was
lost) is recognised by its exact bytes.

>>> store = RedisStore.from_url("redis://127.0.0.1:6379/0", namespace="mybot")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from adapters.base import (
    HistoryEntry,
    Loaded,
    LockInfo,
    QuarantineEntry,
    Record,
    SaveResult,
    SaveStatus,
    SessionView,
    Store,
    check_save_arguments,
    decode_history,
    encode_history,
)
from adapters.redis_keys import KeyLayout
from adapters.redis_scripts import (
    EXTEND,
    LOAD,
    LOCK_AND_LOAD,
    LOCK_INFO,
    QUARANTINE,
    RELEASE,
    SAVE,
)
from fsm.errors import StoreUnavailable

T = TypeVar("T")
Client = redis.Redis | RedisCluster

#: Errors worth another attempt: the command may not have reached the server, or its reply
#: did not come back.
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError)
_STATUS = {
    b"saved": SaveStatus.SAVED,
    b"duplicate": SaveStatus.DUPLICATE,
    b"locked": SaveStatus.LOCKED,
    b"conflict": SaveStatus.CONFLICT,
}


class _Quarantined(msgspec.Struct, array_like=True):
    id: str
    user_key: str
    raw: bytes
    reason: str
    at: float


_quarantine_encoder = msgspec.msgpack.Encoder()
_quarantine_decoder = msgspec.msgpack.Decoder(_Quarantined)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


_PREFIX = re.compile(rb"^([1-9][0-9]{0,14})\.([0-9a-f]{8}):")
_TAG = 8  # hex digits of a write's tag; history entries are stored behind theirs


def split_value(value: bytes) -> Record:
    """A session value as a record: ``b"<version>.<tag>:<payload>"``; bytes without that
    prefix (not written by this store) are version 0 with the whole value as payload, so the
    engine quarantines them byte for byte. The scripts read values the same way."""
    match = _PREFIX.match(value)
    if match is None:
        return Record(value, 0)
    return Record(value[match.end() :], int(match[1]), match[2].decode())


class RedisStore(Store):
    """The :class:`~adapters.base.Store` contract on Redis. Build it with :meth:`from_url` or
    from a ready redis-py client (``redis.Redis``, a Sentinel ``master_for`` client or
    ``redis.cluster.RedisCluster``); clients must not decode responses.

    Limits are per user: ``history_limit`` entries kept ``history_ttl`` seconds after the last
    append, ``dedupe_limit`` message ids each remembered ``dedupe_ttl`` seconds, and
    ``quarantine_limit`` quarantined records (oldest dropped first).
    """

    def __init__(
        self,
        client: Client,
        *,
        namespace: str = "fsm",
        history_limit: int = 50,
        history_ttl: float = 7 * 24 * 3600,
        dedupe_limit: int = 256,
        dedupe_ttl: float = 24 * 3600,
        quarantine_limit: int = 100,
        retries: int = 2,
    ) -> None:
        for name, value in [
            ("history_limit", history_limit),
            ("history_ttl", history_ttl),
            ("dedupe_limit", dedupe_limit),
            ("dedupe_ttl", dedupe_ttl),
            ("quarantine_limit", quarantine_limit),
        ]:
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.client = client
        self.layout = KeyLayout(namespace)
        self.history_limit = history_limit
        self.history_ttl = history_ttl
        self.dedupe_limit = dedupe_limit
        self.dedupe_ttl = dedupe_ttl
        self.quarantine_limit = quarantine_limit
        self.retries = retries
        self._load = client.register_script(LOAD)
        self._lock_and_load = client.register_script(LOCK_AND_LOAD)
        self._save = client.register_script(SAVE)
        self._release = client.register_script(RELEASE)
        self._extend = client.register_script(EXTEND)
        self._lock_info = client.register_script(LOCK_INFO)
        self._quarantine = client.register_script(QUARANTINE)
        self._ids = itertools.count(1)

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "fsm", **options: Any) -> RedisStore:
        """A store from a URL (``options`` go to :class:`RedisStore`):

        - ``redis://[:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``
        - ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``): Cluster,
          discovered from any of the nodes
        - ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``: the primary
          the Sentinels name for ``service``, followed across failovers
        """
        connection: dict[str, Any] = {
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
            "retry": Retry(NoBackoff(), 0),  # RedisStore retries itself, knowing what is safe
        }
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        client: Client
        if scheme in ("redis", "rediss", "unix"):
            client = redis.Redis.from_url(url, **connection)
        elif scheme in ("redis+cluster", "rediss+cluster"):
            nodes = [
                ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in _hosts(parts.netloc)
            ]
            try:  # a Cluster client discovers the nodes now: it fails here if none answers
                client = RedisCluster(
                    startup_nodes=nodes,
                    password=unquote(parts.password) if parts.password else None,
                    ssl=scheme.startswith("rediss"),
                    **connection,
                )
            except (redis.RedisError, RedisClusterException) as exc:
                raise StoreUnavailable("connect", detail=_describe(exc)) from exc
        elif scheme in ("redis+sentinel", "rediss+sentinel"):
            path = [p for p in parts.path.split("/") if p]
            if not path:
                raise ValueError(f"a Sentinel URL names the service: {_safe(url)}")
            password = unquote(parts.password) if parts.password else None
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                _hosts(parts.netloc),
                sentinel_kwargs={"socket_timeout": 5.0, "retry": Retry(NoBackoff(), 0)},
                **connection,
            )
            client = sentinel.master_for(  # type: ignore[no-untyped-call]
                path[0],
                db=int(path[1]) if len(path) > 1 else 0,
                password=password,
                ssl=scheme.startswith("rediss"),
            )
        else:
            raise ValueError(
                f"unsupported Redis URL scheme {parts.scheme!r} in {_safe(url)}: use redis://, "
                "rediss://, unix://, redis+cluster:// or redis+sentinel://"
            )
        return cls(client, namespace=namespace, **options)

    def __repr__(self) -> str:
        return (
            f"RedisStore(namespace={self.layout.namespace!r}, client={type(self.client).__name__})"
        )

    # -- plumbing --------------------------------------------------------------------------
    def _call(self, operation: str, user_key: str | None, fn: Callable[[bool], T]) -> T:
        """Run ``fn(retried)``; transient failures are retried, then every Redis error is
        raised as StoreUnavailable naming ``operation``."""
        for attempt in range(self.retries + 1):
            try:
                return fn(attempt > 0)
            except _TRANSIENT as exc:
                if attempt == self.retries:
                    raise StoreUnavailable(
                        operation, user_key=user_key, detail=_describe(exc)
                    ) from exc
                time.sleep(0.05 * 2**attempt)
            except (redis.RedisError, RedisClusterException) as exc:
                raise StoreUnavailable(operation, user_key=user_key, detail=_describe(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _loaded(self, reply: Any) -> Loaded:
        value, seen, locked = reply
        return Loaded(None if value is None else split_value(value), bool(seen), bool(locked))

    # -- sessions --------------------------------------------------------------------------
    def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        session, _, seen, lock, _ = self.layout.keys(user_key)
        args: list[Any] = [message_id or "", _ms(self.dedupe_ttl)]
        reply = self._call("load", user_key, lambda _: self._load([session, seen, lock], args))
        return self._loaded(reply)

    def save(
        self,
        user_key: str,
        payload: bytes,
        *,
        version: int,
        expected_version: int,
        ttl: float,
        history: HistoryEntry | None = None,
        message_id: str | None = None,
        owner: str | None = None,
        release: bool = False,
        expected_tag: str = "",
    ) -> SaveResult:
        check_save_arguments(ttl, version, expected_version, owner, release)
        session, hist, seen, lock, _ = self.layout.keys(user_key)
        tag = secrets.token_hex(_TAG // 2)
        value = b"%d.%s:" % (version, tag.encode()) + payload
        args: list[Any] = [
            expected_version,
            value,
            _ms(ttl),
            tag.encode() + encode_history(history) if history is not None else b"",
            self.history_limit,
            _ms(self.history_ttl),
            message_id or "",
            self.dedupe_limit,
            _ms(self.dedupe_ttl),
            owner or "",
            "1" if release else "0",
            expected_tag,
        ]

        def attempt(retried: bool) -> SaveResult:
            # On a retry the script first looks for this very write (its tagged value or
            # history entry): if the first attempt landed and only its reply was lost, it is
            # SAVED, never applied twice nor mistaken for someone else's.
            reply = self._save([session, hist, seen, lock], [*args, "1" if retried else "0"])
            status, current = reply
            if _STATUS[status] is SaveStatus.SAVED:
                return SaveResult(SaveStatus.SAVED, tag=tag)
            return SaveResult(_STATUS[status], None if current is None else split_value(current))

        return self._call("save", user_key, attempt)

    def delete(self, user_key: str) -> bool:
        session = self.layout.session(user_key)
        return bool(self._call("delete", user_key, lambda _: self.client.delete(session)))

    def ttl(self, user_key: str) -> float | None:
        session = self.layout.session(user_key)
        left = self._call("ttl", user_key, lambda _: self.client.pttl(session))
        return None if left is None or left < 0 else left / 1000

    def scan(self, *, batch: int = 500) -> Iterator[str]:
        if batch <= 0:
            raise ValueError(f"batch must be > 0, got {batch}")
        pattern = self.layout.session_pattern
        seen: set[bytes] = set()
        try:
            # SCAN, never KEYS; on Cluster, redis-py walks every primary. Not retried: a
            # cursor broken midway would silently skip keys.
            for key in self.client.scan_iter(match=pattern, count=batch):
                if key in seen:  # SCAN may return a key twice while the keyspace rehashes
                    continue
                seen.add(key)
                yield self.layout.user_of(key)
        except (redis.RedisError, RedisClusterException) as exc:
            raise StoreUnavailable("scan", detail=_describe(exc)) from exc

    # -- history ---------------------------------------------------------------------------
    def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        if limit == 0:
            return []
        _, hist, _, _, _ = self.layout.keys(user_key)
        end = -1 if limit is None else limit - 1
        raw: list[bytes] = self._call(
            "history",
            user_key,
            lambda _: self.client.lrange(hist, 0, end),  # type: ignore[arg-type, return-value]
        )
        return [decode_history(item[_TAG:]) for item in raw]

    # -- lease lock ------------------------------------------------------------------------
    def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        _, _, _, lock, _ = self.layout.keys(user_key)

        def attempt(retried: bool) -> bool:
            if self.client.set(lock, owner, nx=True, px=_ms(ttl)):
                return True
            # A retry after a lost reply finds the lock already ours.
            return retried and self.client.get(lock) == owner.encode()

        try:
            return bool(self._call("acquire_lock", user_key, attempt))
        except StoreUnavailable:
            self._forget_lock(user_key, owner)
            raise

    def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        session, _, seen, lock, _ = self.layout.keys(user_key)
        args: list[Any] = [owner, _ms(ttl), message_id or "", _ms(self.dedupe_ttl)]

        def attempt(retried: bool) -> Loaded | None:
            reply = self._lock_and_load([session, seen, lock], args)
            if reply is not None:
                return self._loaded(reply)
            if retried and self.client.get(lock) == owner.encode():
                loaded = self.load(user_key, message_id=message_id)
                return Loaded(loaded.record, loaded.seen, locked=True)
            return None

        try:
            return self._call("lock_and_load", user_key, attempt)
        except StoreUnavailable:
            self._forget_lock(user_key, owner)
            raise

    def _forget_lock(self, user_key: str, owner: str) -> None:
        """After a lock attempt whose outcome is unknown: free the lock if it is ours, so a
        lost reply does not lock the user out for the lease's TTL. Best effort: the TTL
        frees it anyway if Redis stays away."""
        _, _, _, lock, _ = self.layout.keys(user_key)
        with contextlib.suppress(redis.RedisError, RedisClusterException):
            self._release([lock], [owner])

    def release_lock(self, user_key: str, owner: str) -> bool:
        _, _, _, lock, _ = self.layout.keys(user_key)
        return bool(self._call("release_lock", user_key, lambda _: self._release([lock], [owner])))

    def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        _, _, _, lock, _ = self.layout.keys(user_key)
        args: list[Any] = [owner, _ms(ttl)]
        return bool(self._call("extend_lock", user_key, lambda _: self._extend([lock], args)))

    def lock_info(self, user_key: str) -> LockInfo | None:
        _, _, _, lock, _ = self.layout.keys(user_key)
        owner, left = self._call("lock_info", user_key, lambda _: self._lock_info([lock]))
        if owner is None or left < 0:
            return None
        return LockInfo(owner.decode(), left / 1000)

    # -- quarantine ------------------------------------------------------------------------
    def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        session, _, _, _, qkey = self.layout.keys(user_key)
        now = time.time()
        entry_id = f"{int(now * 1000):013d}-{next(self._ids):06d}-{secrets.token_hex(3)}"
        entry = _quarantine_encoder.encode(_Quarantined(entry_id, user_key, raw, reason, now))
        args: list[Any] = [raw, entry, self.quarantine_limit]
        moved = self._call(
            "quarantine", user_key, lambda _: self._quarantine([session, qkey], args)
        )
        return entry_id if moved else None

    def quarantined(self, user_key: str | None = None) -> Iterator[QuarantineEntry]:
        entries: list[_Quarantined] = []
        pattern = self.layout.quarantine_pattern

        def collect(_: bool) -> None:
            entries.clear()
            keys: Iterable[Any] = (
                [self.layout.keys(user_key)[4]]
                if user_key is not None
                else self.client.scan_iter(match=pattern, count=500)
            )
            for key in keys:
                items: list[bytes] = self.client.lrange(key, 0, -1)  # type: ignore[assignment]
                entries.extend(_quarantine_decoder.decode(item) for item in items)

        self._call("quarantined", user_key, collect)
        entries.sort(key=lambda e: (e.at, e.id))
        for e in entries:
            yield QuarantineEntry(e.id, e.user_key, e.raw, e.reason, e.at)

    def remove_quarantined(self, user_key: str, entry_id: str) -> QuarantineEntry | None:
        qkey = self.layout.keys(user_key)[4]

        def remove(_: bool) -> QuarantineEntry | None:
            items: list[bytes] = self.client.lrange(qkey, 0, -1)  # type: ignore[assignment]
            for item in items:
                e = _quarantine_decoder.decode(item)
                if e.id == entry_id:
                    # LREM of the exact bytes: atomic, and a second remover finds nothing.
                    if not self.client.lrem(qkey, 1, item):  # type: ignore[arg-type]
                        return None
                    return QuarantineEntry(e.id, e.user_key, e.raw, e.reason, e.at)
            return None

        return self._call("remove_quarantined", user_key, remove)

    # -- operations ------------------------------------------------------------------------
    def session_view(self, user_key: str) -> SessionView | None:
        views = self._call("session_view", user_key, lambda _: self._views([user_key]))
        return views[0] if views else None

    def _views(self, user_keys: list[str]) -> list[SessionView]:
        """Session, TTL and lock of each user in one pipelined round trip (per Cluster node:
        redis-py splits a non-transactional pipeline by slot)."""
        if not isinstance(self.client, RedisCluster):
            return self._views_standalone(user_keys)
        pipe = self.client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for user_key in user_keys:
            session, _, _, lock, _ = self.layout.keys(user_key)
            pipe.get(session)
            pipe.pttl(session)
            pipe.get(lock)
            pipe.pttl(lock)
        # One key of the wrong type must not hide every other session: errors come back per
        # command, and connection errors are raised all the same.
        replies = pipe.execute(raise_on_error=False)
        views = []
        for i, user_key in enumerate(user_keys):
            value, ttl_ms, holder, lock_ms = replies[4 * i : 4 * i + 4]
            if isinstance(value, redis.ResponseError) and str(value).startswith("WRONGTYPE"):
                views.append(_not_a_session(user_key, ttl_ms, "WRONGTYPE"))
                continue
            # Anything else (CLUSTERDOWN, TRYAGAIN, a lost node) is the store's trouble, not
            # the session's: raised, so the caller sees StoreUnavailable.
            failed = next(
                (r for r in (value, ttl_ms, holder, lock_ms) if isinstance(r, Exception)), None
            )
            if failed is not None:
                raise failed
            if value is None:
                continue  # expired or deleted since the scan saw it
            lease = (
                None if holder is None or lock_ms < 0 else LockInfo(holder.decode(), lock_ms / 1000)
            )
            ttl = None if ttl_ms < 0 else ttl_ms / 1000
            views.append(SessionView(user_key, split_value(value), ttl, lease))
        return views

    def _views_standalone(self, user_keys: list[str]) -> list[SessionView]:
        """:meth:`_views` with two MGETs and a PTTL per session (N + 2 commands, not 4N); the
        lock's TTL is read only for the few users whose lock is held."""
        keys = [self.layout.keys(user_key) for user_key in user_keys]
        # MULTI/EXEC (same round trip): the value and the TTL are read at one instant, so a key
        # replaced between two reads is never mistaken for one of another type.
        pipe = self.client.pipeline(transaction=True)
        pipe.mget([k[0] for k in keys])
        pipe.mget([k[3] for k in keys])
        for k in keys:
            pipe.pttl(k[0])
        values, holders, *ttls = pipe.execute()
        held = [i for i, holder in enumerate(holders) if holder is not None]
        lock_ttls: dict[int, int] = {}
        if held:
            pipe = self.client.pipeline(transaction=False)
            for i in held:
                pipe.pttl(keys[i][3])
            lock_ttls = dict(zip(held, pipe.execute(), strict=True))
        views = []
        for i, user_key in enumerate(user_keys):
            value, ttl_ms = values[i], ttls[i]
            if value is None:
                if ttl_ms >= -1:  # the key exists, but MGET saw no string: another type
                    views.append(_not_a_session(user_key, ttl_ms, "WRONGTYPE"))
                continue  # expired or deleted since the scan saw it
            lock_ms = lock_ttls.get(i, -2)
            holder = holders[i]
            lease = (
                None if holder is None or lock_ms < 0 else LockInfo(holder.decode(), lock_ms / 1000)
            )
            views.append(
                SessionView(
                    user_key, split_value(value), None if ttl_ms < 0 else ttl_ms / 1000, lease
                )
            )
        return views

    def sessions(self, *, batch: int = 500) -> Iterator[SessionView]:
        def views(keys: list[str]) -> list[SessionView]:
            return self._call("sessions", None, lambda _: self._views(keys))

        pending: list[str] = []
        for user_key in self.scan(batch=batch):
            pending.append(user_key)
            if len(pending) >= batch:
                yield from views(pending)
                pending = []
        if pending:
            yield from views(pending)

    def server_stats(self) -> dict[str, int | float]:
        def read(_: bool) -> dict[str, int | float]:
            if isinstance(self.client, RedisCluster):
                per_node: dict[str, Any] = self.client.info(target_nodes=RedisCluster.PRIMARIES)
                # One primary: redis-py returns its INFO itself, not a dict per node.
                infos = [per_node] if "redis_version" in per_node else list(per_node.values())
            else:
                infos = [self.client.info()]
            totals: dict[str, int | float] = {}
            for name in ("expired_keys", "evicted_keys", "used_memory", "keyspace_hits"):
                values = [info[name] for info in infos if isinstance(info.get(name), int | float)]
                if values:
                    totals[name] = sum(values)
            return totals

        return self._call("server_stats", None, read)

    def script_cache(self) -> tuple[int, int] | None:
        scripts = [
            self._load,
            self._lock_and_load,
            self._save,
            self._release,
            self._extend,
            self._lock_info,
            self._quarantine,
        ]

        def check(_: bool) -> tuple[int, int]:
            # On Cluster a script counts as cached only if every primary has it.
            cached: list[bool] = self.client.script_exists(*(s.sha for s in scripts))
            for script, present in zip(scripts, cached, strict=True):
                if not present:
                    self.client.script_load(script.script)
            return sum(cached), len(scripts)

        return self._call("script_cache", None, check)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.client.close()


def _not_a_session(user_key: str, ttl_ms: object, error: str) -> SessionView:
    ttl = ttl_ms / 1000 if isinstance(ttl_ms, int) and ttl_ms >= 0 else None
    return SessionView(
        user_key,
        Record(b"", 0),
        ttl,
        None,
        error=f"{error}: the key holds another Redis type, not a session value",
    )


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hosts = netloc.rsplit("@", 1)[-1]
    out = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {item!r}")
        out.append((host.strip("[]"), int(port)))
    return out


def _safe(url: str) -> str:
    """The URL's scheme and hosts only, for error messages: never a password or a query."""
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{hosts}/..."


def _describe(exc: BaseException) -> str:
    """One line naming the error; long driver messages (a Sentinel's repr of its whole
    configuration) are cut, so error output stays readable."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    text = text.split(" : <", 1)[0]  # redis-py appends a client's repr to some messages
    return text if len(text) <= 300 else text[:297] + "..."
