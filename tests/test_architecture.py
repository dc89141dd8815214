"""The architecture DESIGN.md draws, checked: import order, and no network I/O in fsm/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
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
