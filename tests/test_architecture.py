"""The architecture DESIGN.md draws, checked: the packages' layering (the core owns its ports),
no import circle inside the core, import order, and no network I/O in fsm/.

The layering rules: ``fsm`` (the core) imports neither ``adapters`` nor ``flows``, except
``fsm.cli``, the one place that composes; ``adapters`` implement the core's ports and never
import a flow; ``flows`` import the core, and of the adapters only the package's public names
(``from adapters import MemoryStore``, the reference bot's default store), never a module
inside it. Every import counts: at the top, inside a function, or under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("fsm", "adapters", "flows")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in ``path``, relative ones resolved; for
    ``from a import b``, ``a.b`` when that is a module, else ``a``."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found = (root / full.replace(".", "/")).with_suffix(".py").exists() or (
                    root / full.replace(".", "/") / "__init__.py"
                ).exists()
                yield node.lineno, full if found else base


def forbidden(importer: str, imported: str) -> bool:
    """Whether module ``importer`` may not import ``imported`` (the rules above)."""
    top = imported.split(".")[0]
    if importer.split(".")[0] == "fsm":
        return top in ("adapters", "flows") and not importer.startswith("fsm.cli")
    if importer.split(".")[0] == "adapters":
        return top == "flows"
    if importer.split(".")[0] == "flows":
        return top == "adapters" and imported != "adapters"
    return False


def layering_violations(root: Path) -> list[str]:
    """``file:line: importer imports imported`` for each import the rules forbid."""
    found = {
        f"{path.relative_to(root)}:{line}: {module_name(root, path)} imports {imported}"
        for package in PACKAGES
        for path in (root / package).rglob("*.py")
        for line, imported in imports(root, path)
        if forbidden(module_name(root, path), imported)
    }
    return sorted(found)


def import_circles(root: Path, package: str = "fsm") -> list[list[str]]:
    """The strongly connected groups of more than one module among ``package``'s modules."""
    graph = {
        module_name(root, path): {m for _, m in imports(root, path)}
        for path in (root / package).rglob("*.py")
    }
    graph = {name: {m for m in deps if m in graph and m != name} for name, deps in graph.items()}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            group = [stack.pop()]
            while group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return circles


def test_the_core_owns_its_ports_and_each_package_imports_only_what_it_may() -> None:
    assert layering_violations(ROOT) == []


def test_no_import_circle_among_the_core_modules() -> None:
    assert import_circles(ROOT) == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the three packages' sources, to plant a violation in."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    return tmp_path


@pytest.mark.parametrize(
    ("module", "planted", "found"),
    [
        ("fsm/snapshot.py", "from adapters.memory import MemoryStore", "adapters.memory"),
        ("fsm/ops/health.py", "    import flows.credex", "flows.credex"),
        ("adapters/redis.py", "from flows.credex.fake import FakeCredexApi", "flows.credex.fake"),
        (
            "flows/credex/flow.py",
            "from adapters.redis_keys import user_prefix",
            "adapters.redis_keys",
        ),
    ],
)
def test_the_layering_check_fails_on_a_planted_import(
    tree: Path, module: str, planted: str, found: str
) -> None:
    path = tree / module
    importer = module.removesuffix(".py").replace("/", ".")
    if planted.startswith(" "):  # inside a function: it counts as well
        planted = f"def _planted() -> None:\n{planted}\n"
    path.write_text(f"{path.read_text()}\n{planted}\n")
    assert [v.split(": ", 1)[1] for v in layering_violations(tree)] == [
        f"{importer} imports {found}"
    ]


def test_the_composition_layer_may_import_every_package(tree: Path) -> None:
    (tree / "fsm/cli/common.py").write_text("import adapters.memory\nimport flows.credex\n")
    assert layering_violations(tree) == []


def test_the_circle_check_fails_on_a_planted_circle(tree: Path) -> None:
    # fsm.migrations is imported by fsm.snapshot: importing it back closes a circle.
    path = tree / "fsm/migrations.py"
    path.write_text(path.read_text() + "\nfrom fsm.snapshot import SCHEMA_VERSION\n")
    assert import_circles(tree) == [["fsm.migrations", "fsm.snapshot"]]


NETWORK_MODULES = {
    "redis", "requests", "httpx", "urllib", "http", "aiohttp", "socketserver",
    "starlette", "uvicorn", "h11",
}  # fmt: skip


@pytest.mark.parametrize(
    "first", ["fsm", "adapters", "flows.credex", "fsm.engine", "adapters.memory", "fsm.cli"]
)
def test_packages_import_in_any_order(first: str) -> None:
    code = f"import {first}; import fsm, adapters, flows.credex; print('ok')"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_fsm_does_no_network_io() -> None:
    offenders = []
    for path in sorted((ROOT / "fsm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n.split(".")[0] in NETWORK_MODULES and n != "urllib.parse"  # parsing only
            ]
    assert offenders == []


def test_transitions_stays_inside_fsm() -> None:
    users = [
        str(p.relative_to(ROOT))
        for folder in ("adapters", "flows")
        for p in (ROOT / folder).rglob("*.py")
        if "transitions" in p.read_text()
        and any(
            line.startswith(("import transitions", "from transitions"))
            for line in p.read_text().splitlines()
        )
    ]
    assert users == []
