"""A private PostgreSQL server for tests: a real ``postgres`` on a free loopback port, in a temp
dir of its own (a cluster made by ``initdb``), tuned for speed, stopped by its PID.

This repository's tests start one per test session (``tests/postgres_servers.py``) and give
each test a schema of its own. Nothing here talks to a server it did not start: never the
shared one on 5432.

>>> server = PostgresServer(name="mybot").start()     # doctest: +SKIP
>>> store = PostgresStore.from_url(server.url)        # doctest: +SKIP
>>> server.stop()                                     # doctest: +SKIP

The binaries (``initdb``, ``postgres``) come from ``$FSM_POSTGRES_BIN`` when that is set (their
directory), else from ``PATH``, else from Debian's ``/usr/lib/postgresql/<version>/bin``;
:func:`postgres_binaries` raises :class:`PostgresServerMissing` (a :class:`FileNotFoundError`)
saying how to get them when there are none.

PostgreSQL refuses to run as root. Run as root, the server runs as the ``postgres`` user (else
``nobody``), in a directory that user owns, made in the temp dir or, when that user cannot
enter the temp dir (a private 0700 ``TMPDIR``), in the nearest parent of it that they can.

Speed over durability: ``fsync=off`` and ``full_page_writes=off`` (a crash of the machine may
lose the cluster, which is thrown away anyway) but ``synchronous_commit`` stays on, so a commit
acknowledged to a client survives a crash of the server (:meth:`PostgresServer.crash`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.redis_server import free_port

__all__ = [
    "BINARY_ENV",
    "PostgresServer",
    "PostgresServerMissing",
    "postgres_binaries",
]

#: The environment variable naming the directory that holds ``initdb`` and ``postgres``.
BINARY_ENV = "FSM_POSTGRES_BIN"
_DEBIAN = "/usr/lib/postgresql"
#: The role initdb makes the superuser; the tests connect as it (trust authentication).
ROLE = "fsm"
#: Server settings for a throwaway test cluster.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "max_wal_size": "256MB",
    "log_min_messages": "warning",
}


class PostgresServerMissing(FileNotFoundError):
    """No PostgreSQL binaries to run; the message says how to get them."""


@dataclass(frozen=True, slots=True)
class Binaries:
    initdb: str
    postgres: str


def postgres_binaries(environ: Mapping[str, str] | None = None) -> Binaries:
    """``initdb`` and ``postgres`` from ``$FSM_POSTGRES_BIN``, ``PATH`` or Debian's versioned
    directories (the newest); :class:`PostgresServerMissing` if there are none."""
    environ = os.environ if environ is None else environ
    named = environ.get(BINARY_ENV, "").strip()
    if named:
        found = _pair(Path(named))
        if found is None:
            raise PostgresServerMissing(f"{BINARY_ENV}={named}: no initdb and postgres there")
        return found
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return Binaries(initdb, postgres)
    versions = sorted(Path(_DEBIAN).glob("*/bin"), key=_major, reverse=True)
    for directory in versions:
        found = _pair(directory)
        if found is not None:
            return found
    raise PostgresServerMissing(
        "PostgreSQL's server binaries (initdb, postgres) are not installed: run scripts/dev "
        f"setup, or apt-get install postgresql, or set {BINARY_ENV} to their directory"
    )


def _major(directory: Path) -> int:
    name = directory.parent.name
    return int(name) if name.isdigit() else 0


def _pair(directory: Path) -> Binaries | None:
    initdb, postgres = directory / "initdb", directory / "postgres"
    if os.access(initdb, os.X_OK) and os.access(postgres, os.X_OK):
        return Binaries(str(initdb), str(postgres))
    return None


@dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged user the server runs as (None: as this process's own user)."""

    uid: int
    gid: int


def _run_as() -> RunAs | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(entry.pw_uid, entry.pw_gid)
    raise PostgresServerMissing("running as root, and no postgres or nobody user to run as")


def _user_options(user: RunAs | None) -> dict[str, Any]:
    """Popen's arguments to run a child as ``user`` (its own groups only)."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def _can_enter(directory: Path, user: RunAs | None) -> bool:
    if user is None:
        return os.access(directory, os.W_OK | os.X_OK)
    probe = subprocess.run(["test", "-x", str(directory)], check=False, **_user_options(user))
    return bool(probe.returncode == 0)


def _server_dir(name: str, user: RunAs | None) -> Path:
    """A fresh directory the server's user owns, in the temp dir or the nearest parent of it
    that the user can enter."""
    temp = Path(tempfile.gettempdir()).resolve()
    for base in (temp, *temp.parents):
        if _can_enter(base, user) and os.access(base, os.W_OK):
            directory = Path(tempfile.mkdtemp(prefix=f"fsm-{name}-", dir=base))
            if user is not None:
                os.chown(directory, user.uid, user.gid)
            return directory
    raise RuntimeError(f"no directory near {temp} that the server's user can enter")


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1, in a temp dir, stopped by PID.

    ``settings`` are extra server settings (``{"statement_timeout": "1s"}``); the cluster is
    made on the first :meth:`start`, and :meth:`stop` removes it."""

    def __init__(
        self,
        *,
        name: str = "postgres",
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        binaries: Binaries | None = None,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.settings = {**SETTINGS, **(settings or {})}
        self.binaries = binaries
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._user: RunAs | None = None

    @property
    def url(self) -> str:
        """``postgresql://fsm@127.0.0.1:PORT/postgres`` (trust authentication: no password)."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30.0) -> PostgresServer:
        """Make the cluster (the first time), start the server and wait until it accepts
        connections; a server that never does is stopped and the error raised."""
        binaries = self.binaries or postgres_binaries()
        if self.dir is None:
            self._user = _run_as()
            self.dir = _server_dir(self.name, self._user)
            try:
                self._initdb(binaries.initdb)
            except BaseException:
                self.stop()
                raise
        command = [binaries.postgres, "-D", str(self.dir / "data"), "-p", str(self.port)]
        command += ["-k", str(self.dir)]
        for key, value in self.settings.items():
            command += ["-c", f"{key}={value}"]
        with open(self.dir / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                **_user_options(self._user),
            )  # fmt: skip
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _initdb(self, initdb: str) -> None:
        assert self.dir is not None
        command = [initdb, "-D", str(self.dir / "data"), "-U", ROLE, "-A", "trust"]
        command += ["-E", "UTF8", "--locale=C", "--no-sync"]
        done = subprocess.run(
            command, check=False, capture_output=True, cwd=self.dir,
            **_user_options(self._user),
        )  # fmt: skip
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"initdb failed ({done.returncode}): {output[-2000:]}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg  # the optional dependency, needed only once a server runs

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited ({self.process.returncode}): {self.log()[-2000:]}"
                )
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                    return
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"postgres on port {self.port} did not answer within {timeout}s")

    def log(self) -> str:
        """The server's log so far."""
        path = None if self.dir is None else self.dir / "server.log"
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def crash(self) -> None:
        """SIGQUIT: every backend quits at once, nothing written back (an immediate shutdown,
        as after a crash: the next :meth:`start` recovers from the WAL)."""
        self._signal_and_wait(signal.SIGQUIT, 10.0)

    def kill(self) -> None:
        """SIGKILL the postmaster and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGINT, PostgreSQL's fast shutdown (SIGTERM, its smart shutdown, would wait for
        every client to leave); SIGKILL if it has not exited within 10 s; then remove its
        directory."""
        try:
            self._signal_and_wait(signal.SIGINT, 10.0)
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def _signal_and_wait(self, sig: int, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def __repr__(self) -> str:
        return f"PostgresServer({self.url!r}, pid={self.process.pid if self.process else None})"
