"""The store exporter behind ``fsm metrics --serve``: the store-wide gauges on an HTTP port.

It is I/O (a listening socket), so it lives in ``adapters/``; the figures themselves come from
:func:`fsm.ops.prometheus.store_registry`, one scan of the store per scrape.
"""

from __future__ import annotations

import threading

from prometheus_client import start_http_server

from fsm.ops.prometheus import store_registry
from fsm.store import Store


def serve_store_metrics(
    store: Store,
    host: str,
    port: int,
    *,
    expiring_within: float = 300.0,
    stop: threading.Event | None = None,
) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until ``stop`` is set (or the process is
    interrupted)."""
    registry = store_registry(store, expiring_within=expiring_within)
    server, thread = start_http_server(port, addr=host, registry=registry)
    stop = stop if stop is not None else threading.Event()
    try:
        while thread.is_alive() and not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
