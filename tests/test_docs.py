"""Every ```python block in the docs runs: each file's blocks in order, in one fresh namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import redis_servers

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ("concepts.md", "declaring-flows.md", "testing.md")  # each must show runnable code
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the opening fence, source) for each python block of ``path``."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def documents() -> list[Path]:
    found = sorted((ROOT / "docs").glob("*.md"))
    readme = ROOT / "README.md"
    return [*found, readme] if readme.exists() and blocks(readme) else found


@pytest.mark.parametrize("name", GUIDES)
def test_guide_shows_python(name: str) -> None:
    assert blocks(ROOT / "docs" / name), f"docs/{name} has no ```python block"


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(path: Path) -> None:
    name = path.relative_to(ROOT).as_posix()
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    if "REDIS_URL" in path.read_text():  # pages about Redis run against a server we started
        namespace["REDIS_URL"] = redis_servers.standalone().url
    for line, source in blocks(path):
        # Padding keeps traceback line numbers equal to the Markdown file's own.
        code = compile("\n" * line + source, name, "exec")
        try:
            exec(code, namespace)
        except Exception as exc:
            raise AssertionError(
                f"{name}: the python block at line {line} failed: {exc!r}"
            ) from exc


def test_every_fsm_command_in_the_runbook_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands docs/operations.md shows exist, with the options it uses.

    A command that names a file which must exist (``fsm restore FILE``) gets that file, created
    in this test's own directory: the check never depends on what another run left behind.
    """
    import shlex

    import click

    from fsm.cli import main

    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    commands = re.findall(r"^\$ fsm (.+)$", text, re.MULTILINE)
    assert len(commands) >= 15
    for line in commands:
        args = shlex.split(line)
        command: click.Command = main
        while isinstance(command, click.Group):
            found = command.get_command(click.Context(command), args[0])
            assert found is not None, f"fsm {line}: no command {args[0]!r}"
            command, args = found, args[1:]
        for path in _existing_files_required(command, args):
            assert not Path(path).is_absolute(), f"fsm {line}: use a relative path in the runbook"
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).touch()
        command.make_context(command.name or "", list(args))  # UsageError if an option is wrong


def _existing_files_required(command: object, args: list[str]) -> list[str]:
    """The raw values given to ``command``'s ``click.Path(exists=True)`` parameters."""
    import click

    assert isinstance(command, click.Command)
    # With the command's own settings, as click builds it: click caches a command's help option
    # from the first context that asks, so a bare Context would drop `-h` for later tests.
    ctx = click.Context(command, resilient_parsing=True, **command.context_settings)
    values, _, _ = command.make_parser(ctx).parse_args(list(args))
    found: list[str] = []
    for param in command.params:
        if isinstance(param.type, click.Path) and param.type.exists and param.name in values:
            value = values[param.name]
            found.extend(value if isinstance(value, list | tuple) else [value])
    return [str(v) for v in found if v is not None]


def test_the_strict_site_build_fails_on_a_broken_link(tmp_path: Path) -> None:
    """What `scripts/dev test` relies on: `mkdocs build --strict` refuses a link to a page
    that does not exist (run on a copy of the docs with one such link added)."""
    import os
    import shutil
    import subprocess
    import sys

    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.skip("mkdocs is in the docs extra (scripts/dev installs it)")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    for name in ("fsm", "adapters", "flows"):
        (tmp_path / name).symlink_to(ROOT / name)
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\nSee [the missing page](missing.md).\n")
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert done.returncode != 0 and "missing.md" in done.stderr + done.stdout
