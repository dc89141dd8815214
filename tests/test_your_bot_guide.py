"""docs/your-bot.md, done as a new user does it: build this library's wheel, make a fresh
project with a fresh virtual environment, install the wheel there, write the guide's files
exactly as shown, and run the project's tests and the `fsm` commands the guide shows.

Nothing of this repository is importable in that project but through the wheel (the project
runs from its own directory, with its own interpreter), so a module the wheel leaves out, or
a guide that drifted from the code, fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "your-bot.md"
FILE_BLOCK = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)^```$', re.DOTALL | re.MULTILINE)


def guide_files() -> dict[str, str]:
    """Each titled code block of the guide: the file's path in the project, and its text."""
    return {m[1]: m[2] for m in FILE_BLOCK.finditer(GUIDE.read_text(encoding="utf-8"))}


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_the_guide_shows_every_file_of_its_layout() -> None:
    files = guide_files()
    assert set(files) == {
        "pyproject.toml",
        "salonbot/__init__.py",
        "salonbot/api.py",
        "salonbot/flow.py",
        "salonbot/wiring.py",
        "tests/conftest.py",
        "tests/test_booking.py",
        "tests/transcripts/booking.txt",
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The guide's project, in a fresh venv with the wheel installed: (project, venv bin)."""
    base = tmp_path_factory.mktemp("your-bot")
    dist = base / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, ROOT, cwd=base)
    (wheel,) = dist.glob("convo_fsm-*.whl")
    _run(sys.executable, "-m", "venv", base / "venv", cwd=base)
    bin_dir = base / "venv" / "bin"
    _run(bin_dir / "python", "-m", "pip", "install", "--quiet", wheel, "pytest", cwd=base)
    root = base / "salon-bot"
    for name, text in guide_files().items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root, bin_dir


def test_the_guides_project_passes_its_own_tests(project: tuple[Path, Path]) -> None:
    root, bin_dir = project
    proc = _run(bin_dir / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=root)
    assert re.search(r"\b8 passed\b", proc.stdout), proc.stdout
    # ...with the library from the wheel in the venv, not from this source tree.
    where = _run(bin_dir / "python", "-c", "import fsm; print(fsm.__file__)", cwd=root)
    assert str(bin_dir.parent) in where.stdout and str(ROOT) not in where.stdout


def test_the_guides_fsm_commands_run_on_its_flow(project: tuple[Path, Path]) -> None:
    root, bin_dir = project
    fsm = bin_dir / "fsm"
    played = _run(fsm, "chat", "--engine", "salonbot.wiring:build_engine", "--script",
                  "tests/transcripts/booking.txt", cwd=root)  # fmt: skip
    assert "Booked (B1): haircut on 2023-11-21." in played.stdout
    assert "[menu.service v" in played.stdout
    graph = _run(fsm, "graph", "--flow", "salonbot.flow:Booking", "--format", "mermaid", cwd=root)
    assert "booking --> menu : done" in graph.stdout and "menu --> booking : book" in graph.stdout
    helped = _run(bin_dir / "python", "-m", "fsm", "-h", cwd=root)
    assert "chat" in helped.stdout and "serve" in helped.stdout
