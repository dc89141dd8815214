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


# convo-fsm is not on a package index yet: a doc or a message that says `pip install convo-fsm`
# (quoted or not, with extras or a version) sends a newcomer to an install that fails. A
# checkout (`pip install -e '.[whatsapp]'`) or a built wheel is what works.
FROM_AN_INDEX = re.compile(
    r"(?:(?:pip3?|uv pip|python3? -m pip) install\s+(?:--?[\w-]+\s+)*|(?:uv|poetry) add\s+)"
    r"[\"']?convo[-_.]?fsm(?![\w./-])",  # a name, not a path (/path/to/convo-fsm, dist/...)
    re.IGNORECASE,
)
#: Where users read install instructions: the docs, the README, and every message in the code.
INSTALL_TEXTS = ("README.md", "docs", "fsm", "adapters", "flows", "scripts", "tests")


def installs_from_an_index(path: Path) -> list[str]:
    """``file:line: text`` for each line of ``path`` that installs convo-fsm from an index."""
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FROM_AN_INDEX.search(line):
            found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_no_doc_or_message_installs_convo_fsm_from_a_package_index() -> None:
    suffixes = {".md", ".py", ".html", ".js", ".txt", ".toml", ".yml", ""}
    files = [ROOT / "mkdocs.yml", ROOT / "pyproject.toml"]
    for name in INSTALL_TEXTS:
        top = ROOT / name
        files += [top] if top.is_file() else sorted(top.rglob("*"))
    here = Path(__file__).resolve()  # left out: its samples below install from an index
    files = [
        f
        for f in files
        if f.is_file() and f.suffix in suffixes and "__pycache__" not in f.parts and f != here
    ]
    assert len(files) > 100
    found = [hit for path in files for hit in installs_from_an_index(path)]
    assert not found, "install from a checkout or a wheel (docs/your-bot.md):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("line", "caught"),
    [
        ("pip install 'convo-fsm[whatsapp]'", True),
        ('pip install "convo-fsm[fast]"', True),
        ("python -m pip install -U convo-fsm==0.3.0", True),
        ("(``pip install convo_fsm``)", True),
        ("uv add convo-fsm", True),
        ("pip install -e '.[whatsapp]'", False),
        ("pip install '/path/to/convo-fsm[whatsapp]'", False),
        ('pip install "dist/convo_fsm-0.3.0-py3-none-any.whl[whatsapp]"', False),
        ("the ``convo-fsm[whatsapp]`` extra", False),
    ],
)
def test_the_index_install_guard(line: str, caught: bool) -> None:
    assert bool(FROM_AN_INDEX.search(line)) is caught


def test_the_wheel_the_docs_name_is_this_version() -> None:
    """A doc that shows installing the built wheel names the version pyproject.toml builds."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    named = {
        f"{path.relative_to(ROOT)}: {found}"
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for found in re.findall(r"convo_fsm-([^-\s]+)-py3-none-any\.whl", path.read_text())
        if found != version
    }
    assert not named, f"pyproject.toml builds {version}; the docs name: {sorted(named)}"
