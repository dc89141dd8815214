from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import redis_servers


@pytest.fixture(scope="session", autouse=True)
def _stop_redis_servers() -> Iterator[None]:
    """Every redis-server a test started is stopped by PID when the session ends."""
    yield
    redis_servers.stop_all()
