from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import postgres_servers, redis_servers


@pytest.fixture(scope="session", autouse=True)
def _stop_servers() -> Iterator[None]:
    """Every redis-server and PostgreSQL cluster a test started is stopped by PID when the
    session ends."""
    yield
    redis_servers.stop_all()
    postgres_servers.stop_all()
