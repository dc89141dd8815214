"""Tests never depend on the machine they run on: no fixed path under the temp dir or home.

A test that passed only because an earlier run left a file in the shared temp directory is a
test every newcomer fails. Tests use ``tmp_path`` / ``tmp_path_factory``; this guard fails on
any test file that names a fixed temp or home path, and ``scripts/dev test`` gives pytest a
fresh, empty ``TMPDIR`` of its own.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# Spelled in pieces so that a scan for fixed temp paths does not take the guard for one.
_TMP = "/" + "tmp"
FIXED_PATH = re.compile(
    "|".join(
        (
            re.escape(_TMP) + r"(?:/|[\"'])",  # the temp dir, alone or with a path after it
            r"/var/" + "tmp",
            r"Path\.home\(",
            r"expanduser\(",
            r"[\"']~/",
        )
    )
)


def fixed_paths(path: Path) -> list[str]:
    """``file:line: text`` for every line of ``path`` that names a fixed temp or home path."""
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FIXED_PATH.search(line):
            found.append(f"{path.name}:{number}: {line.strip()}")
    return found


def test_no_test_file_names_a_fixed_temp_or_home_path() -> None:
    # This file is left out: its samples below name fixed paths on purpose.
    files = [path for path in sorted(TESTS.rglob("*.py")) if path != Path(__file__).resolve()]
    assert len(files) > 40
    found = [hit for path in files for hit in fixed_paths(path)]
    assert not found, "use tmp_path / tmp_path_factory instead of a fixed path:\n" + "\n".join(
        found
    )


@pytest.mark.parametrize(
    "line",
    [
        f'Path("{_TMP}/x").write_text("leftover")',
        f"open('{_TMP}/credex-backup.jsonl')",
        f'os.chdir("{_TMP}")',
        'Path.home() / ".fsm"',
        'os.path.expanduser("~/.fsm")',
        'cache = "~/.cache/fsm"',
    ],
)
def test_the_guard_catches_a_test_that_writes_a_fixed_path(tmp_path: Path, line: str) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text(f"def test_x():\n    {line}\n", encoding="utf-8")
    assert fixed_paths(sample) == [f"test_sample.py:2: {line}"]


def test_the_guard_lets_tmp_path_through(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        'def test_x(tmp_path):\n    (tmp_path / "x").write_text("")\n    # see tmp_path docs\n',
        encoding="utf-8",
    )
    assert fixed_paths(sample) == []


def test_the_suite_runs_in_a_fresh_temp_dir_of_its_own() -> None:
    """Under ``scripts/dev test`` (and so in CI) the temp dir is new for this run."""
    fresh = os.environ.get("FSM_TEST_TMPDIR")
    if fresh is None:
        assert os.environ.get("CI") != "true", "CI must run the tests through scripts/dev test"
        pytest.skip("not run through scripts/dev test")
    temp = Path(tempfile.gettempdir()).resolve()
    assert temp == Path(fresh).resolve() and temp != Path(_TMP), temp
    assert temp.name.startswith("fsm-test-"), temp
