"""A private ``redis-server`` for tests: a real server on a free loopback port, in a temp dir
of its own, keeping nothing on disk, stopped by its PID.

The pytest plugin's ``fsm_redis_server`` fixture (:mod:`adapters.pytest_plugin`) starts one per
test session; this repository's own tests start theirs with it too. Nothing here talks to a
Redis it did not start.

>>> server = RedisServer(name="mybot").start()       # doctest: +SKIP
>>> store = RedisStore.from_url(server.url)          # doctest: +SKIP
>>> server.stop()                                    # doctest: +SKIP

The binary is ``$FSM_REDIS_SERVER`` when that is set (a path, or a name looked up on
``PATH``), else ``redis-server`` on ``PATH``; :func:`redis_server_binary` raises
:class:`RedisServerMissing` (a :class:`FileNotFoundError`) saying how to install it when there
is none.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

__all__ = [
    "BINARY_ENV",
    "RedisServer",
    "RedisServerMissing",
    "free_port",
    "redis_server_binary",
]

#: The environment variable naming the ``redis-server`` binary to run.
BINARY_ENV = "FSM_REDIS_SERVER"
_DEBIAN = "/usr/bin/redis-server"


class RedisServerMissing(FileNotFoundError):
    """No ``redis-server`` binary to run; the message says how to get one."""


def redis_server_binary(environ: Mapping[str, str] | None = None) -> str:
    """The ``redis-server`` to run: ``$FSM_REDIS_SERVER`` if set, else the one on ``PATH``
    (or Debian's ``/usr/bin/redis-server``); :class:`RedisServerMissing` if there is none."""
    environ = os.environ if environ is None else environ
    named = environ.get(BINARY_ENV, "").strip()
    if named:
        found = shutil.which(named)
        if found is None:
            raise RedisServerMissing(f"{BINARY_ENV}={named}: no such executable")
        return found
    found = shutil.which("redis-server")
    if found is None and os.access(_DEBIAN, os.X_OK):
        found = _DEBIAN
    if found is None:
        raise RedisServerMissing(
            "redis-server is not installed (apt-get install redis-server, brew install redis), "
            f"or set {BINARY_ENV} to its path"
        )
    return found


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, bus: bool = False) -> int:
    """A free loopback port; with ``bus``, one below 55536 whose +10000 is free too (a Redis
    Cluster node also listens on its port + 10000)."""
    if not bus:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(1000):
        port = random.randint(20000, 45000)
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """One redis-server process on 127.0.0.1, in a temp dir, stopped by PID.

    ``args`` are extra ``redis-server`` arguments; ``client_options`` are what a client needs
    to reach it (TLS settings, say); ``binary`` is the ``redis-server`` to run (default:
    :func:`redis_server_binary`). Nothing is saved to disk (``--save ""``), and :meth:`stop`
    removes the temp dir."""

    def __init__(
        self,
        *args: str,
        name: str = "redis",
        port: int | None = None,
        client_options: dict[str, Any] | None = None,
        binary: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"fsm-{name}-"))
        self.args = list(args)
        self.client_options = client_options or {}  # e.g. TLS settings to reach it
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *, config: Sequence[str] = ()) -> RedisServer:
        """Start it (``config``: a config file and options that go first) and wait until it
        answers PING; a server that never answers is stopped and the error raised."""
        try:
            binary = self.binary or redis_server_binary()
        except RedisServerMissing:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        command = [binary, *config, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.dir), "--save", "", "--protected-mode", "no"]
        command += ["--logfile", str(self.dir / "redis.log"), *self.args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()  # a server that never answered leaves no process behind
            raise
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        """A blocking client of this server (close it when done)."""
        options = {**self.client_options, **kwargs}
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **options)

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log = self.dir / "redis.log"
                text = log.read_text() if log.exists() else ""
                raise RuntimeError(
                    f"redis-server exited ({self.process.returncode}): {text[-2000:]}"
                )
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would, and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close_pipe()

    def stop(self) -> None:
        """SIGTERM (SIGKILL if it does not exit within 10 s), then remove its temp dir."""
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipe()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _close_pipe(self) -> None:
        if self.process is not None and self.process.poll() is not None and self.process.stderr:
            self.process.stderr.close()  # a stopped server's stderr, read by nobody now

    def __repr__(self) -> str:
        return f"RedisServer({self.url!r}, pid={self.process.pid if self.process else None})"
