"""``scripts/dev chat`` on a fresh clone, for real: it creates ``.venv`` and installs the package
alone (none of the development tools), quietly, saying so in one line; a later command still
installs what it needs.

pip installs from the package indexes this machine is configured with, as a newcomer's would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
#: What the chat does not need: the development tools and the other extras' packages.
NOT_FOR_THE_CHAT = {
    "mypy",
    "ruff",
    "mkdocs",
    "mkdocs-material",
    "selenium",
    "hypothesis",
    "pytest",
    "starlette",
    "uvicorn",
    "hiredis",
}

#: How every line ``fsm chat --script`` prints begins (a reply's next lines are indented).
CHAT_LINES = ("you> ", "bot> ", "     ", "transcript ok: ")


def _clone(tmp_path: Path) -> Path:
    """The work tree as a fresh clone of it has it: the files git knows of, and no .venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    clone = tmp_path / "clone"
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # not one deleted from the work tree
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    assert (clone / "scripts" / "dev").is_file() and not (clone / ".venv").exists()
    return clone


def _dev(clone: Path, *args: str, **more_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(more_env)
    return subprocess.run(
        ["bash", str(clone / "scripts" / "dev"), *args],
        cwd=clone,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _installed(clone: Path) -> set[str]:
    """The names of the distributions installed in the clone's .venv."""
    listed = subprocess.run(
        [
            str(clone / ".venv" / "bin" / "python"),
            "-c",
            "import importlib.metadata as m\n"
            "print('\\n'.join(d.metadata['Name'] for d in m.distributions()))",
        ],
        cwd=clone.parent,  # not a source tree: its *.egg-info would count as installed
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {name.lower().replace("_", "-") for name in listed.split()}


@pytest.mark.timeout(900)  # two installs from the package indexes (about 40 s in all here)
def test_chat_on_a_fresh_clone_installs_only_the_package_quietly(tmp_path: Path) -> None:
    clone = _clone(tmp_path)
    transcript = str(clone / "flows" / "credex" / "transcripts" / "login.txt")

    first = _dev(clone, "chat", "--script", transcript)
    assert first.returncode == 0, first.stdout + first.stderr
    # One progress line and nothing of pip's: the chat's own output comes next.
    assert first.stderr.splitlines() == [
        "==> installing the chat's packages into a new .venv (about 20 s)"
    ], first.stderr
    foreign = [line for line in first.stdout.splitlines() if not line.startswith(CHAT_LINES)]
    assert foreign == [], first.stdout
    assert "Welcome Alice (@alice)." in first.stdout
    assert first.stdout.splitlines()[-1].startswith("transcript ok: ")
    installed = _installed(clone)
    assert {"convo-fsm", "transitions", "redis", "msgspec", "pyjwt", "click"} <= installed
    assert installed & NOT_FOR_THE_CHAT == set()

    again = _dev(clone, "chat", "--script", transcript)  # installed once, not every time
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stderr == ""

    # A later command still installs what it needs, though the chat's packages are in.
    docs = _dev(clone, "docs", "--help")  # `mkdocs serve --help`: installs, starts nothing
    assert docs.returncode == 0, docs.stdout + docs.stderr
    assert docs.stderr.splitlines() == [
        "==> installing the documentation site's packages into .venv (about 30 s)"
    ], docs.stderr
    assert "serve" in docs.stdout
    installed = _installed(clone)
    assert {"mkdocs", "mkdocs-material", "mkdocstrings"} <= installed
    assert {"mypy", "ruff", "selenium", "hypothesis", "pytest"} & installed == set()


def test_when_pip_fails_its_output_is_shown(tmp_path: Path) -> None:
    """No package index and no wheels at hand: the install fails, and pip's own words say why."""
    clone = _clone(tmp_path)
    (tmp_path / "no-wheels").mkdir()
    failed = _dev(
        clone, "chat", "--script", "-", PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "no-wheels")
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert failed.stderr.splitlines()[:2] == [
        "==> installing the chat's packages into a new .venv (about 20 s)",
        "==> pip install -e . failed:",
    ], failed.stderr
    assert "No matching distribution found for" in failed.stderr
    assert failed.stdout == ""  # the chat did not start
    assert list((clone / ".venv").glob(".installed-*")) == []  # the next run tries again
