"""The pytest plugin (adapters.pytest_plugin), as a user's project meets it: a small project's
tests run by pytest in a process of its own, the plugin found through the installed package's
``pytest11`` entry point; and the plugin leaves this repository's own suite alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import adapters.pytest_plugin as plugin

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent

GREETER = """
from fsm import AsyncEngine, Context, Engine, Flow, Outcome, Stage, on_enter, step


class Greeter(Flow):
    name = "greeter"
    stages = (Stage("chat", ("greet",)),)
    transitions = ()

    @on_enter("chat", "greet")
    def ask(self, ctx: Context) -> list[str]:
        return ["What is your name?"]

    @step("chat", "greet")
    def greet(self, ctx: Context) -> Outcome:
        return ctx.stay(f"Hello {ctx.text}.", set={"name": ctx.text})


class AsyncGreeter(Flow):
    name = "greeter"
    stages = (Stage("chat", ("greet",)),)
    transitions = ()

    @on_enter("chat", "greet")
    async def ask(self, ctx: Context) -> list[str]:
        return ["What is your name?"]

    @step("chat", "greet")
    async def greet(self, ctx: Context) -> Outcome:
        return ctx.stay(f"Hello {ctx.text}.", set={"name": ctx.text})


def build(clock, store):
    return Engine(Greeter(), store, clock=clock, session_ttl=600)


def build_async(clock, store):
    return AsyncEngine(AsyncGreeter(), store, clock=clock, session_ttl=600)
"""

CONFTEST = """
import pytest

from greeter import build


@pytest.fixture
def fsm_engine_factory():
    return build
"""

TEST_SYNC = """
from pathlib import Path

from adapters import MemoryStore, RedisStore


def test_greets(conversation):
    conversation.say("hi").expect("What is your name?", stage="chat")
    conversation.say("Ann").expect("Hello Ann.", data={"name": "Ann"})


def test_each_test_starts_afresh(conversation):
    assert conversation.snapshot is None
    conversation.say("hi").expect("What is your name?")


def test_the_store_is_the_one_named(request, conversation, fsm_store):
    conversation.say("hi")
    assert conversation.engine.store is fsm_store
    if request.node.callspec.id == "redis":
        assert isinstance(fsm_store, RedisStore)
        server = request.getfixturevalue("fsm_redis_server")
        with server.client() as client:
            assert client.keys(fsm_store.layout.namespace + ":*")  # really in that server
        Path("server.txt").write_text(f"{server.pid} {server.dir}")
    else:
        assert isinstance(fsm_store, MemoryStore)


def test_the_fake_clock_moves_the_memory_stores_ttl(request, conversation, fsm_store):
    conversation.say("hi")
    if request.node.callspec.id == "memory":
        conversation.advance("11m")
        assert conversation.snapshot is None  # the session (600 s) expired
    else:
        assert 0 < fsm_store.ttl("user-1") <= 600  # Redis keeps its own time
"""

TEST_ASYNC = """
import pytest

from adapters import AsyncMemoryStore, AsyncRedisStore
from greeter import build_async


@pytest.fixture
def fsm_async():
    return True


@pytest.fixture
def fsm_engine_factory():
    return build_async


@pytest.fixture
def fsm_user():
    return "263770000099"


def test_an_async_flow_on_async_stores(request, conversation, fsm_store):
    kind = {"memory": AsyncMemoryStore, "redis": AsyncRedisStore}[request.node.callspec.id]
    assert isinstance(fsm_store, kind)
    conversation.say("hi").expect("What is your name?")
    turns = conversation.concurrently("Bo", workers=3, same_message=False)
    assert sorted(t.snapshot.version for t in turns) == [2, 3, 4]
    assert conversation.user == "263770000099"
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project: a flow module, a conftest naming the engine factory."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.delenv("FSM_REDIS_SERVER", raising=False)
    pytester.makepyfile(greeter=GREETER)
    pytester.makeconftest(CONFTEST)
    return pytester


def test_a_users_tests_run_on_memory_and_on_a_private_redis(project: pytest.Pytester) -> None:
    project.makepyfile(test_sync=TEST_SYNC, test_async=TEST_ASYNC)
    result = project.runpytest_subprocess(
        "-v", "-p", "no:cacheprovider", "-W", "error::pytest.PytestUnraisableExceptionWarning",
        timeout=180,
    )  # fmt: skip
    result.assert_outcomes(passed=10)
    result.stdout.fnmatch_lines(
        [
            "*test_sync.py::test_greets?memory? PASSED*",
            "*test_sync.py::test_greets?redis? PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*test_async.py::test_an_async_flow_on_async_stores?redis? PASSED*"]
    )
    # The session's redis-server was stopped by its PID, and its temp dir removed.
    pid, directory = (project.path / "server.txt").read_text().split()
    assert not _running(int(pid))
    assert not Path(directory).exists()


def test_the_project_docs_testing_md_shows_passes_on_both_stores(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    text = (TESTS.parent / "docs" / "testing.md").read_text(encoding="utf-8")
    files = dict(re.findall(r'^```python title="([\w.]+)"\n(.*?)^```', text, re.M | re.S))
    assert set(files) == {"greeter.py", "conftest.py", "test_greeter.py"}
    for name, source in files.items():
        (pytester.path / name).write_text(source, encoding="utf-8")
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", timeout=180)
    result.assert_outcomes(passed=4)
    shown = re.search(r"^```console\n\$ pytest -v\n(.*?)^```", text, re.M | re.S)
    assert shown is not None
    result.stdout.re_match_lines([re.escape(line) for line in shown.group(1).splitlines()])


def test_without_redis_server_the_redis_runs_are_skipped_saying_why(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FSM_REDIS_SERVER", str(project.path / "no-such-redis-server"))
    project.makepyfile(test_sync=TEST_SYNC)
    result = project.runpytest_subprocess("-rs", "-p", "no:cacheprovider", timeout=180)
    result.assert_outcomes(passed=4, skipped=4)
    result.stdout.fnmatch_lines(["SKIPPED*the Redis-backed tests need redis-server*"])


def test_without_an_engine_factory_the_conversation_says_what_to_define(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile(test_it="def test_it(conversation):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "memory", timeout=180)
    result.assert_outcomes(errors=1, deselected=1)
    result.stdout.fnmatch_lines(["*needs a fixture named fsm_engine_factory*"])


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- the plugin and this repository's own suite --------------------------------------------------


def test_the_plugin_is_registered_by_the_installed_entry_point(
    request: pytest.FixtureRequest,
) -> None:
    """This very session loaded it (``pip install -e .`` registers the entry point; so does
    ``scripts/dev test``, which reinstalls whenever pyproject.toml changes)."""
    assert request.config.pluginmanager.get_plugin("convo_fsm") is plugin, (
        "the convo_fsm entry point is not registered: .venv/bin/pip install -e . --no-deps "
        "(scripts/dev test reinstalls by itself whenever pyproject.toml changed)"
    )


def fixtures_defined_in(path: Path) -> set[str]:
    """The names of the functions ``path`` decorates with ``pytest.fixture`` (or names
    with ``name=``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            text = ast.unparse(decorator)
            if re.match(r"(pytest\.)?fixture\b", text):
                named = re.search(r"name=['\"](\w+)['\"]", text)
                found.add(named.group(1) if named else node.name)
    return found


def plugin_fixtures() -> set[str]:
    return fixtures_defined_in(Path(plugin.__file__))


def test_the_plugins_fixtures_clash_with_none_of_this_suites() -> None:
    """A fixture of this suite named like one of the plugin's would silently replace it (or be
    replaced): the plugin's names are its own, and it has no autouse fixture or hook that
    would act on tests that do not ask for it."""
    ours = plugin_fixtures()
    assert ours == set(plugin.__all__)
    assert "conversation" in ours and all(
        name.startswith("fsm_") for name in ours - {"conversation"}
    )
    suite = {name for path in sorted(TESTS.rglob("*.py")) for name in fixtures_defined_in(path)}
    assert ours & suite == set()
    source = Path(plugin.__file__).read_text(encoding="utf-8")
    assert "autouse" not in source
    assert [name for name in vars(plugin) if name.startswith("pytest_")] == []


def test_the_guard_sees_a_clashing_fixture(tmp_path: Path) -> None:
    sample = tmp_path / "conftest.py"
    sample.write_text("import pytest\n\n@pytest.fixture\ndef conversation():\n    pass\n")
    assert fixtures_defined_in(sample) & plugin_fixtures() == {"conversation"}
