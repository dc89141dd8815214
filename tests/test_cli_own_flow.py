"""Every ``fsm`` command on a flow of your own, as it works on the reference bot: your
transcript directives, your factory on a real Redis, no Credex defaults; and the command's
manners (``-h``, ``python -m fsm``, Ctrl-C, ``--json`` summaries)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from adapters import MemoryStore, RedisStore
from fsm import Engine, FakeClock, decode_snapshot
from fsm.cli import main
from tests import redis_servers
from tests.fsm.sample_flows import Counter

ROOT = Path(__file__).parents[1]

MYBOT = '''
from adapters import MemoryStore
from fsm import Context, Engine, Flow, Outcome, Stage, on_enter, step


class Bookings:
    """The project's own fake booking API."""

    def __init__(self) -> None:
        self.full = False


class Booking(Flow):
    name = "booking"
    stages = (Stage("ask", ("when",)),)
    transitions = ()

    def __init__(self, api: Bookings) -> None:
        self.api = api

    def transcript_directives(self):
        def booking(args):
            if list(args) != ["full"]:
                raise ValueError("use: ! booking full")
            self.api.full = True

        return {"booking": booking}

    @on_enter("ask", "when")
    def prompt(self, ctx: Context) -> list[str]:
        return ["When would you like to come?"]

    @step("ask", "when")
    def when(self, ctx: Context) -> Outcome:
        if self.api.full:
            return ctx.stay("Sorry, we are fully booked.")
        return ctx.stay(f"Booked for {ctx.text}.")


def build(clock, store=None):
    return Engine(Booking(Bookings()), store or MemoryStore(clock=clock), clock=clock)
'''

TRANSCRIPT = """\
> hi
< When would you like to come?
> monday
< Booked for monday.
! booking full
> tuesday
< fully booked
= ask.when
"""


def _fsm(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsm", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_chat_engine_takes_the_flows_directives_and_a_store(tmp_path: Path) -> None:
    (tmp_path / "mybot.py").write_text(MYBOT)
    url = redis_servers.standalone().url
    chat = _fsm("chat", "--engine", "mybot:build", "--store", url, "--script", "-", cwd=tmp_path,
                stdin=TRANSCRIPT)  # fmt: skip
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert "[ask.when v3]" in chat.stdout
    # A neutral user, in the store's own namespace ("fsm"), not Credex's.
    store = RedisStore.from_url(url)
    try:
        record = store.load("user-1").record
    finally:
        store.close()
    assert record is not None
    snapshot = decode_snapshot(record.payload)
    assert (snapshot.flow, snapshot.version) == ("booking", 3)
    # Every operator command finds it there with --flow alone, and calls it valid.
    seen = _fsm("inspect", "user-1", "--store", url, "--flow", "mybot:Booking", cwd=tmp_path)
    assert seen.returncode == 0, seen.stdout + seen.stderr
    assert "stage       ask.when" in seen.stdout
    assert "valid       yes" in seen.stdout  # not [invalid: wrong-flow]
    checked = _fsm("check", "--store", url, "--flow", "mybot:Booking", "--json", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = [json.loads(line) for line in checked.stdout.splitlines()]
    assert lines[-1]["summary"]["invalid"] == 0 and lines[-1]["summary"]["checked"] >= 1


def test_an_unknown_directive_names_the_flows_own(tmp_path: Path) -> None:
    (tmp_path / "mybot.py").write_text(MYBOT)
    chat = _fsm("chat", "--engine", "mybot:build", "--script", "-", cwd=tmp_path,
                stdin="> hi\n! kitchen closed\n")  # fmt: skip
    assert chat.returncode == 2
    assert "unknown directive 'kitchen'" in chat.stderr and "booking" in chat.stderr


ASYNC_BOT = """
import asyncio

from adapters import AsyncMemoryStore
from fsm import AsyncEngine, Context, Engine, Flow, Outcome, Stage, on_enter, step


class Echo(Flow):
    name = "echo"
    stages = (Stage("talk", ("echo",)),)
    transitions = ()

    @on_enter("talk", "echo")
    async def prompt(self, ctx: Context) -> list[str]:
        return ["Say something."]

    @step("talk", "echo")
    async def echo(self, ctx: Context) -> Outcome:
        await asyncio.sleep(0)
        return ctx.stay(f"You said {ctx.text}.")


def build(clock, store=None):
    return AsyncEngine(Echo(), store or AsyncMemoryStore(clock=clock), clock=clock)


def build_sync(clock, store=None):  # a mistake: a sync engine for an async flow
    return Engine(Echo(), store, clock=clock)
"""


def test_an_async_flow_on_a_redis_store_is_told_to_add_async(tmp_path: Path) -> None:
    """A flow with async def handlers cannot use a sync store: the advice is --async, not the
    engine's "use fsm.Engine with a sync store"."""
    (tmp_path / "asyncbot.py").write_text(ASYNC_BOT)
    (tmp_path / "mybot.py").write_text(MYBOT)
    url = redis_servers.standalone().url
    script = "> hi\n< Say something.\n> yo\n< You said yo.\n"
    told = _fsm("chat", "--engine", "asyncbot:build", "--store", url, "--script", "-",
                cwd=tmp_path, stdin=script)  # fmt: skip
    assert told.returncode == 2
    assert "add --async" in told.stderr and "use fsm.Engine" not in told.stderr, told.stderr
    works = _fsm("chat", "--engine", "asyncbot:build", "--store", url, "--async", "--script",
                 "-", "--namespace", "echo-async", cwd=tmp_path, stdin=script)  # fmt: skip
    assert works.returncode == 0, works.stdout + works.stderr
    # The factory built a sync Engine for the async flow: --async (and an AsyncEngine).
    engine = _fsm("chat", "--engine", "asyncbot:build_sync", "--store", url, "--script", "-",
                  cwd=tmp_path, stdin=script)  # fmt: skip
    assert engine.returncode == 2 and "Add --async" in engine.stderr, engine.stderr
    # And the other way round: a sync factory given an async store is told to drop --async.
    sync = _fsm("chat", "--engine", "mybot:build", "--store", url, "--async", "--script", "-",
                cwd=tmp_path, stdin=TRANSCRIPT)  # fmt: skip
    assert sync.returncode == 2 and "drop --async" in sync.stderr, sync.stderr


def test_check_json_prints_a_summary_even_when_all_is_valid() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    Engine(Counter(), store, clock=clock).handle("u1", "go")
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["check", "--flow", "tests.fsm.sample_flows:Counter", "--json"],
        obj={"store": store, "clock": clock},
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary == {"summary": {"checked": 1, "invalid": 0, "problems": {}}}


def test_dash_h_is_help_everywhere_and_python_dash_m_fsm_runs(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["-h"], ["chat", "-h"], ["check", "-h"], ["quarantine", "ls", "-h"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0 and "Usage: " in result.output, (args, result.output)
    proc = _fsm("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("fsm, version "), proc.stderr


def test_ctrl_c_in_a_chat_exits_130_quietly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsm", "chat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        assert "Chatting as 263770000001" in proc.stdout.readline()  # it is up, waiting
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and "Aborted" not in err


def test_scripts_dev_help_exits_0(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "dev"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "scripts/dev test" in proc.stdout + proc.stderr
