"""`fsm chat` as a user runs it: a real process reading a script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from fsm.cli import main

LOGIN = Path(__file__).parents[1] / "flows" / "credex" / "transcripts" / "login.txt"


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsm.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_chat_script_runs_the_login_transcript() -> None:
    proc = _run("chat", "--script", str(LOGIN))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "you> hi" in out
    assert "Welcome Alice (@alice)." in out
    assert "6. My ledger" in out
    assert "(! clock +31m)" in out
    assert "[credex.amount v" in out
    assert "# Login" not in out  # comments are skipped
    assert "!!" not in out  # no expectation failed
    assert "eyJ" not in out  # no JWT is ever printed


def test_every_transcript_passes_through_fsm_chat() -> None:
    for path in sorted(LOGIN.parent.glob("*.txt")):
        proc = _run("chat", "--script", str(path))
        assert proc.returncode == 0, f"{path.name}:\n{proc.stdout[-3000:]}\n{proc.stderr}"
        assert "eyJ" not in proc.stdout + proc.stderr


def test_every_transcript_passes_through_fsm_chat_on_the_async_engine() -> None:
    for path in sorted(LOGIN.parent.glob("*.txt")):
        proc = _run("chat", "--async", "--script", str(path))
        assert proc.returncode == 0, f"{path.name}:\n{proc.stdout[-3000:]}\n{proc.stderr}"
        assert "Welcome" in proc.stdout and "eyJ" not in proc.stdout + proc.stderr


def test_a_sync_and_an_async_chat_on_one_redis_share_the_conversation() -> None:
    from tests import redis_servers

    url = redis_servers.standalone().url
    user = "263770000002"
    namespace = f"chat-mixed-{os.getpid()}"
    args = ["chat", "--user", user, "--store", url, "--namespace", namespace, "--script", "-"]
    first = _run(*args, "--async", stdin="> hi\n= menu.dashboard\n")
    assert first.returncode == 0, first.stdout + first.stderr
    second = _run(*args, stdin="> Offer credex\n< How much\n= credex.amount\n")
    assert second.returncode == 0, second.stdout + second.stderr
    third = _run(*args, "--async", stdin="> 12\n= credex.recipient\n")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "[credex.recipient v3]" in third.stdout


def test_a_failed_expectation_exits_1_and_says_where(tmp_path: Path) -> None:
    script = tmp_path / "wrong.txt"
    script.write_text("> hi\n< Welcome Bob\n= credex\n")
    proc = _run("chat", "--script", str(script))
    assert proc.returncode == 1
    assert "wrong.txt:2: expected 'Welcome Bob'" in proc.stderr
    assert "wrong.txt:3: expected to be at credex, at menu" in proc.stderr


def test_a_passing_transcript_ends_with_a_summary_line(tmp_path: Path) -> None:
    script = tmp_path / "short.txt"
    script.write_text("> hi\n< Welcome Alice\n= menu\n! again\n<! Welcome Bob\n= menu.dashboard\n")
    proc = _run("chat", "--script", str(script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.splitlines()[-1]  # after the conversation, on stdout
    assert re.fullmatch(
        r"transcript ok: 2 messages and 5 expectations checked in \d+\.\d\d s", summary
    ), summary
    assert proc.stderr == ""
    one = _run("chat", "--script", "-", stdin="hi\n")
    assert one.stdout.splitlines()[-1].startswith("transcript ok: 1 message and 0 expectations ")
    failed = _run("chat", "--script", "-", stdin="> hi\n< Welcome Bob\n")
    assert failed.returncode == 1
    assert "transcript ok" not in failed.stdout + failed.stderr


def test_a_bad_directive_is_a_usage_error(tmp_path: Path) -> None:
    script = tmp_path / "bad.txt"
    script.write_text("> hi\n! api fail nosuchCall 500\n")
    proc = _run("chat", "--script", str(script))
    assert proc.returncode == 2
    assert "bad.txt:2: unknown Credex call 'nosuchCall'" in proc.stderr


def test_chat_as_unknown_member_reaches_registration() -> None:
    proc = _run("chat", "--user", "263779999999", "--script", "-", stdin="hello\n")
    assert proc.returncode == 0, proc.stderr
    assert "[registration.welcome v1]" in proc.stdout


def test_chat_interactive_reads_until_eof() -> None:
    typed = "hi\nOffer credex\n12.50\nalice\n1\n"  # by title, then by number
    result = CliRunner().invoke(main, ["chat", "--user", "263770000002"], input=typed)
    assert result.exit_code == 0, result.output
    assert "Welcome Bob (@bob)." in result.output
    assert "  1. Offer credex" in result.output  # lists are numbered
    assert (
        "Offer 12.50 USD from Bob Dube Personal to Alice Moyo Personal (@alice)?" in result.output
    )
    assert "Offer of 12.50 USD sent to @alice." in result.output


def test_version_and_help() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.startswith("fsm, version ")
    helped = runner.invoke(main, ["chat", "--help"])
    assert "--script" in helped.output and "--user" in helped.output


def test_chat_with_your_own_engine_plays_a_transcript(tmp_path: Path) -> None:
    (tmp_path / "mybot.py").write_text(
        "from adapters import MemoryStore\n"
        "from fsm import Engine\n"
        "from tests.fsm.sample_flows import Counter\n"
        "def build(clock):\n"
        "    return Engine(Counter(), MemoryStore(clock=clock), clock=clock, session_ttl=60)\n"
    )
    (tmp_path / "count.txt").write_text(
        "> go\n< counting\n> +1\n< 1\n! clock +2m\n> +1\n< Your session expired\n= counting\n"
    )
    root = str(Path(__file__).parents[1])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fsm.cli",
            "chat",
            "--engine",
            "mybot:build",
            "--script",
            "count.txt",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[counting.count v2]" in proc.stdout


def test_chat_with_a_bad_engine_reference_is_a_usage_error(tmp_path: Path) -> None:
    runner = CliRunner()
    for ref, problem in [
        ("nope", "is not of the form"),
        ("no_such_module:x", "cannot import module"),
        ("fsm:Engine", "calling fsm:Engine(clock=...) failed"),
        ("builtins:dict", "returned a dict, not an fsm.Engine"),
        ("fsm:SCHEMA_VERSION", "is not callable"),
    ]:
        result = runner.invoke(main, ["chat", "--engine", ref, "--script", "-"], input="hi\n")
        assert result.exit_code == 2, (ref, result.output)
        assert problem in result.output, (ref, result.output)


def test_two_chats_on_one_redis_share_the_conversation() -> None:
    from tests import redis_servers

    url = redis_servers.standalone().url
    user = "263770000002"
    namespace = f"chat-{os.getpid()}"
    args = ["chat", "--user", user, "--store", url, "--namespace", namespace, "--script", "-"]
    first = _run(*args, stdin="> hi\n= menu.dashboard\n")
    assert first.returncode == 0, first.stdout + first.stderr
    second = _run(*args, stdin="> Offer credex\n< How much\n= credex.amount\n")
    assert second.returncode == 0, second.stdout + second.stderr  # it went on from the menu
    assert "[credex.amount v2]" in second.stdout


def test_chat_with_an_unreachable_store_is_a_usage_error() -> None:
    proc = _run("chat", "--store", "redis://127.0.0.1:1/0", "--script", "-", stdin="hi\n")
    assert proc.returncode == 2
    assert "store unavailable" in proc.stderr and "Connection refused" in proc.stderr
