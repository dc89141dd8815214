"""`fsm chat` as a user runs it: a real process reading a script."""

from __future__ import annotations

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
    assert "[account.soon v2]" in out
    assert out.count("[menu.dashboard") == 2
    assert "# Login" not in out  # comments are skipped
    assert "eyJ" not in out  # no JWT is ever printed


def test_chat_as_unknown_member_reaches_registration() -> None:
    proc = _run("chat", "--user", "263779999999", "--script", "-", stdin="hello\n")
    assert proc.returncode == 0, proc.stderr
    assert "[registration.soon v1]" in proc.stdout


def test_chat_interactive_reads_until_eof() -> None:
    result = CliRunner().invoke(main, ["chat", "--user", "263770000002"], input="hi\n")
    assert result.exit_code == 0, result.output
    assert "Welcome Bob (@bob)." in result.output


def test_version_and_help() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.startswith("fsm, version ")
    helped = runner.invoke(main, ["chat", "--help"])
    assert "--script" in helped.output and "--user" in helped.output
