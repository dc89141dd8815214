"""Redis URLs: which deployment a URL names and how to build a client for it, once for both
redis-py APIs (the blocking one for :class:`~adapters.redis.RedisStore`, asyncio for
:class:`~adapters.redis_async.AsyncRedisStore`), so both stores accept exactly the same URLs.

- ``redis://[:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``
- ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``): Cluster,
  discovered from any of the nodes
- ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``: the primary the
  Sentinels name for ``service``, followed across failovers

Error messages show a URL's scheme and hosts only, never its password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.backoff import NoBackoff

from adapters.redis_ops import ERRORS, describe
from fsm.errors import StoreUnavailable


@dataclass(frozen=True, slots=True)
class ClientClasses:
    """The client classes of one redis-py API. The blocking and the asyncio classes take the
    same constructor arguments, which is what lets :func:`connect` serve both (typed ``Any``
    for that reason; each store annotates the client it gets)."""

    redis: Any  # redis.Redis or redis.asyncio.Redis
    cluster: Any  # RedisCluster
    cluster_node: Any  # ClusterNode
    sentinel: Any  # Sentinel
    retry: Any  # Retry


def connect(url: str, classes: ClientClasses, **options: Any) -> Any:
    """A client of ``classes`` for ``url`` (see the module docstring for the URLs), with
    ``options`` for its connections (``max_connections``, say). The blocking Cluster client
    discovers its nodes here, and raises StoreUnavailable("connect") if none answers; the
    others connect on their first command."""
    connection: dict[str, Any] = {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "retry": classes.retry(NoBackoff(), 0),  # the store retries itself, knowing what is safe
        **options,
    }
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    password = unquote(parts.password) if parts.password else None
    ssl = scheme.startswith("rediss")
    if scheme in ("redis", "rediss", "unix"):
        return classes.redis.from_url(url, **connection)
    if scheme in ("redis+cluster", "rediss+cluster"):
        nodes = [classes.cluster_node(host, port) for host, port in hosts(parts.netloc)]
        try:
            return classes.cluster(startup_nodes=nodes, password=password, ssl=ssl, **connection)
        except ERRORS as exc:
            raise StoreUnavailable("connect", detail=describe(exc)) from exc
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError(f"a Sentinel URL names the service: {safe_url(url)}")
        sentinel = classes.sentinel(
            hosts(parts.netloc),
            sentinel_kwargs={"socket_timeout": 5.0, "retry": classes.retry(NoBackoff(), 0)},
            **connection,
        )
        db = int(path[1]) if len(path) > 1 else 0
        return sentinel.master_for(path[0], db=db, password=password, ssl=ssl)
    raise ValueError(
        f"unsupported Redis URL scheme {parts.scheme!r} in {safe_url(url)}: use redis://, "
        "rediss://, unix://, redis+cluster:// or redis+sentinel://"
    )


def hosts(netloc: str) -> list[tuple[str, int]]:
    """The ``host:port`` pairs of a URL's network location (after any credentials)."""
    out = []
    for item in netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {item!r}")
        out.append((host.strip("[]"), int(port)))
    return out


def safe_url(url: str) -> str:
    """The URL's scheme and hosts only, for error messages: never a password or a query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/..."
