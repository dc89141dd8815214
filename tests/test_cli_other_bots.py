"""The operator's commands never judge, or rewrite, one bot's sessions as another's.

A pharmacy bot's sessions in namespace ``pharmacy`` (only ``FSM_NAMESPACE`` set, as an operator
of that bot would): the commands work the flow out from the stored sessions or refuse to guess;
they never call them ``wrong-flow`` and never "recover" them into the reference bot's flow.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from adapters import RedisStore
from fsm import Engine
from tests import redis_servers
from tests.test_cli_own_flow import MYBOT, ROOT

BOOKING = "mybot:Booking"


def _fsm(*args: str, cwd: Path, namespace: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FSM_FLOW", "FSM_STORE")}
    return subprocess.run(
        [sys.executable, "-m", "fsm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT), "FSM_NAMESPACE": namespace},
    )


@pytest.fixture
def pharmacy(tmp_path: Path) -> tuple[Path, str, str, RedisStore]:
    """A project with its own flow, two of its users' sessions on Redis in a namespace of its
    own, and the store: (project dir, URL, namespace, store)."""
    (tmp_path / "mybot.py").write_text(MYBOT)
    sys.path.insert(0, str(tmp_path))
    try:
        import mybot  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mybot", None)
    url = redis_servers.standalone().url
    namespace = f"pharmacy-{secrets.token_hex(4)}"
    store = RedisStore.from_url(url, namespace=namespace)
    engine = Engine(mybot.Booking(mybot.Bookings()), store)
    for user in ("user-1", "user-2"):
        engine.handle(user, "hi")
        engine.handle(user, "monday")
    yield tmp_path, url, namespace, store
    store.close()


def _stored(store: RedisStore) -> dict[str, bytes]:
    out = {}
    for user in ("user-1", "user-2"):
        record = store.load(user).record
        assert record is not None
        out[user] = record.payload
    return out


@pytest.mark.parametrize(
    "command", [["ls"], ["check"], ["recover", "--all"], ["inspect", "user-1"], ["migrate"]]
)
def test_without_flow_the_commands_refuse_to_guess_and_name_the_flow_found(
    pharmacy: tuple[Path, str, str, RedisStore], command: list[str]
) -> None:
    cwd, url, namespace, store = pharmacy
    before = _stored(store)
    done = _fsm(*command, "--store", url, cwd=cwd, namespace=namespace)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'booking'" in done.stderr and "--flow" in done.stderr
    assert "wrong-flow" not in done.stdout + done.stderr
    assert _stored(store) == before and not list(store.quarantined("user-1"))


def test_named_wrongly_the_sessions_are_reported_and_never_rewritten(
    pharmacy: tuple[Path, str, str, RedisStore],
) -> None:
    cwd, url, namespace, store = pharmacy
    before = _stored(store)
    reference = "flows.credex.flow:CredexBot"
    recover = _fsm("recover", "--all", "--store", url, "--flow", reference, cwd=cwd,
                   namespace=namespace)  # fmt: skip
    assert "wrong-flow" in recover.stdout + recover.stderr
    forced = _fsm("recover", "user-1", "--force", "--store", url, "--flow", reference, cwd=cwd,
                  namespace=namespace)  # fmt: skip
    assert forced.returncode != 0
    assert _stored(store) == before  # not rewritten as Credex sessions
    assert not list(store.quarantined("user-1")) and not list(store.quarantined("user-2"))


def test_with_its_flow_every_command_finds_the_sessions_valid(
    pharmacy: tuple[Path, str, str, RedisStore],
) -> None:
    cwd, url, namespace, _ = pharmacy
    listed = _fsm("ls", "--store", url, "--flow", BOOKING, cwd=cwd, namespace=namespace)
    assert listed.returncode == 0, listed.stderr
    assert "user-1" in listed.stdout and "invalid" not in listed.stdout
    checked = _fsm("check", "--store", url, "--flow", BOOKING, cwd=cwd, namespace=namespace)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_empty_or_broken_namespace_of_another_bot_asks_for_the_flow(
    tmp_path: Path,
) -> None:
    url = redis_servers.standalone().url
    namespace = f"broken-{secrets.token_hex(4)}"
    empty = _fsm("ls", "--store", url, cwd=tmp_path, namespace=namespace)
    assert empty.returncode == 2 and "holds no session" in empty.stderr
    store = RedisStore.from_url(url, namespace=namespace)
    try:
        store.save("user-1", b"not a snapshot", version=1, expected_version=0, ttl=600)
    finally:
        store.close()
    for command in (["ls"], ["recover", "--all"]):
        done = _fsm(*command, "--store", url, cwd=tmp_path, namespace=namespace)
        assert done.returncode == 2 and "--flow" in done.stderr, done.stderr


def test_the_reference_bots_sessions_are_found_without_flow(tmp_path: Path) -> None:
    from flows.credex import build_engine
    from flows.credex.fake import FakeCredexApi

    url = redis_servers.standalone().url
    namespace = f"credex-{secrets.token_hex(4)}"
    store = RedisStore.from_url(url, namespace=namespace)
    try:
        build_engine(store, FakeCredexApi()).handle("263770000001", "hi")
    finally:
        store.close()
    listed = _fsm("ls", "--store", url, cwd=tmp_path, namespace=namespace)
    assert listed.returncode == 0, listed.stderr
    assert "263770000001" in listed.stdout and "invalid" not in listed.stdout
