"""What the ``fsm`` commands share: the command group, importing a flow or engine named on the
command line, opening the store, durations, and how errors end a command."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import click

from fsm.errors import FsmError, StoreUnavailable

if TYPE_CHECKING:
    from adapters import Store
    from fsm.clock import Clock
    from fsm.flow import FlowSpec

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_FLOW = "flows.credex.flow:CredexBot"
#: The reference bot's namespace: the default only while the command is about the reference
#: bot; any other flow's default is the store's own (``RedisStore.from_url``: ``fsm``).
DEFAULT_NAMESPACE = "credex"
_REFERENCE = "flows.credex."
#: What Ctrl-C ends a command with, as a shell reports a process ended by SIGINT.
EXIT_INTERRUPTED = 130

#: Exit status of a command that ran and found a problem (unknown user, invalid sessions, ...).
EXIT_PROBLEM = 1
#: Exit status of bad usage or a store that cannot be reached (click uses 2 for usage errors).
EXIT_UNAVAILABLE = 2


def _version() -> str:
    try:
        return version("convo-fsm")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


#: ``-h`` is ``--help`` on every command, however it is invoked (click caches a command's help
#: option from the first context it sees, so the group's setting alone is not enough).
HELP_NAMES = ["-h", "--help"]


def _with_help(kwargs: dict[str, Any]) -> dict[str, Any]:
    settings = dict(kwargs.get("context_settings") or {})
    settings.setdefault("help_option_names", HELP_NAMES)
    return {**kwargs, "context_settings": settings}


class _Command(click.Command):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_with_help(kwargs))


class _Group(click.Group):
    command_class = _Command

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_with_help(kwargs))


_Group.group_class = _Group


class _Main(_Group):
    """The ``fsm`` group: a store that cannot be reached ends any command with status 2 and
    one clear line (the driver's error names the host; never a password); any other library
    error with status 1 and one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StoreUnavailable as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_UNAVAILABLE)
        except FsmError as exc:  # any other library error: one line, never a traceback
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_PROBLEM)
        except KeyboardInterrupt:  # Ctrl-C: stop quietly, with the status a shell expects
            click.echo(err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `fsm ls | head`: the reader is gone; stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
            ctx.exit(141)  # as a shell reports a command ended by SIGPIPE
        except OSError as exc:  # a file that cannot be read or written: say which, and why
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            ctx.exit(EXIT_UNAVAILABLE)


@click.group(cls=_Main)
@click.version_option(_version(), prog_name="fsm")
def main() -> None:
    """Explicit conversation state machines: run, inspect and operate bots built on them."""


def resolve(ref: str, option: str, *, example: str) -> object:
    """Import ``package.module:name`` (``name`` may be dotted); a click error naming
    ``option`` if that fails."""

    def bad(problem: str) -> click.BadParameter:
        return click.BadParameter(problem, param_hint=f"'{option}'")

    module_name, _, attr_path = ref.partition(":")
    if not (
        all(part.isidentifier() for part in module_name.split("."))
        and all(part.isidentifier() for part in attr_path.split("."))
    ):
        raise bad(f"{ref!r} is not of the form package.module:name (e.g. {example})")
    if os.getcwd() not in sys.path:  # as `python -m` would: modules of the current project
        sys.path.insert(0, os.getcwd())
    try:
        found: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise bad(f"cannot import module {module_name!r}: {exc}") from exc
    except FsmError as exc:  # e.g. a flow in it fails its definition check
        raise bad(f"module {module_name!r} failed to import: {exc}") from exc
    for part in attr_path.split("."):
        if not hasattr(found, part):
            raise bad(f"{module_name!r} has no attribute {attr_path!r}")
        found = getattr(found, part)
    return found


def flow_spec(ref: str, option: str = "--flow") -> FlowSpec:
    """The spec of the flow ``ref`` (``package.module:Name``) names; a click error if none."""
    from fsm.flow import Flow, FlowSpec

    found = resolve(ref, option, example=DEFAULT_FLOW)
    flow_class = found if isinstance(found, type) else type(found)
    if not issubclass(flow_class, Flow):
        what = (
            f"the class {found.__qualname__}"
            if isinstance(found, type)
            else f"a {type(found).__name__}"
        )
        raise click.BadParameter(f"{ref} is {what}, not a Flow subclass", param_hint=f"'{option}'")
    spec = getattr(flow_class, "spec", None)
    if not isinstance(spec, FlowSpec):
        raise click.BadParameter(
            f"{ref} is an abstract Flow: it declares no stages", param_hint=f"'{option}'"
        )
    return spec


def namespace_option(fn: Callable[P, R]) -> Callable[P, R]:
    """``--namespace`` (``FSM_NAMESPACE``): the bot's key namespace on Redis."""
    return click.option(
        "--namespace",
        envvar="FSM_NAMESPACE",
        default=None,
        help="Key namespace of the bot on Redis [env FSM_NAMESPACE; default: 'credex' for "
        "the reference bot, else the store's own, 'fsm'].",
    )(fn)


def namespace_for(namespace: str | None, ref: str | None = None) -> str:
    """The namespace a command works in: the one given; else ``credex`` when the command is
    about the reference bot (its ``--flow``/``--engine``, or ``FSM_FLOW``); else the store's
    own default (``fsm``). ``ref`` is the flow or engine named, when the caller knows it."""
    from adapters.redis_keys import DEFAULT_NAMESPACE as STORE_DEFAULT

    if namespace:
        return namespace
    if ref is None:
        ctx = click.get_current_context(silent=True)
        params = ctx.params if ctx is not None else {}
        ref = params.get("flow_ref") or params.get("engine_ref") or os.environ.get("FSM_FLOW")
    return DEFAULT_NAMESPACE if ref is None or ref.startswith(_REFERENCE) else STORE_DEFAULT


def store_options(fn: Callable[P, R]) -> Callable[P, R]:
    """``--store URL`` (``FSM_STORE``) and ``--namespace`` (``FSM_NAMESPACE``)."""
    fn = namespace_option(fn)
    return click.option(
        "--store",
        "store_url",
        envvar="FSM_STORE",
        default=None,
        metavar="URL",
        help="The bot's store: a Redis URL (redis://host:port/db, rediss://, unix://, "
        "redis+cluster://h:p,h:p, redis+sentinel://h:p/service), sqlite:///path/to/fsm.db "
        "or postgresql://user@host/db [env FSM_STORE].",
    )(fn)


def flow_option(fn: Callable[P, R]) -> Callable[P, R]:
    """``--flow MODULE:NAME`` (``FSM_FLOW``): the flow whose sessions the store holds;
    unset, :func:`session_flow` works it out from the sessions, or refuses to guess."""
    return click.option(
        "--flow",
        "flow_ref",
        envvar="FSM_FLOW",
        default=None,
        metavar="MODULE:NAME",
        help="The flow the sessions belong to (a Flow subclass) [env FSM_FLOW; default: the "
        f"reference bot ({DEFAULT_FLOW}) when the stored sessions are its, or the namespace "
        "is 'credex' and holds none; else the command asks for it].",
    )(fn)


def session_flow(flow_ref: str | None, store: Store, namespace: str | None) -> FlowSpec:
    """The flow to judge ``store``'s sessions by: the one named; else the reference bot's
    when the sessions found are all its, or none decodes in its ``credex`` namespace.
    Otherwise a usage error naming the flows found: judged against another bot's flow,
    every session would look broken, and a repair would rewrite it as that bot's."""
    if flow_ref:
        return flow_spec(flow_ref)
    from fsm.ops.flows import flows_in

    reference = flow_spec(DEFAULT_FLOW)
    found, read = flows_in(store)
    where = namespace_for(namespace)
    if found.keys() == {reference.name} or (not found and where == DEFAULT_NAMESPACE):
        return reference
    if not read:
        raise click.UsageError(
            f"namespace {where!r} holds no session to tell which flow it is for: say it with "
            "--flow MODULE:NAME (or FSM_FLOW)"
        )
    if not found:
        raise click.UsageError(
            f"namespace {where!r} holds no session that tells which flow it is for (none of "
            f"the {read} read decodes): say it with --flow MODULE:NAME (or FSM_FLOW)"
        )
    names = ", ".join(f"{name!r} ({count})" for name, count in found.most_common())
    raise click.UsageError(
        f"the sessions in namespace {where!r} belong to flow {names} (of the first "
        f"{sum(found.values())} read): say which flow class they are with --flow "
        "MODULE:NAME (or FSM_FLOW); they are not judged as the reference bot's"
    )


def json_option(fn: Callable[P, R]) -> Callable[P, R]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(fn)


def open_store(url: str | None, namespace: str | None) -> Store:
    """The store to operate on: the one a caller embedded (``obj={"store": ...}``), else the
    one ``--store`` names, checked with one round trip so an unreachable server fails now."""
    ctx = click.get_current_context()
    try:
        store = open_store_unchecked(url, namespace)
        if url and not _embedded(ctx):
            store.lock_info("\x00connect")  # one round trip: fail now, clearly
    except TypeError as exc:  # redis-py refusing a URL's ?option= when it connects
        raise click.BadParameter(f"{safe_url(url or '')}: {exc}", param_hint="'--store'") from None
    except StoreUnavailable as exc:
        click.echo(
            f"error: cannot reach the store at {safe_url(url or '')}: {exc.detail}", err=True
        )
        ctx.exit(EXIT_UNAVAILABLE)
    return store


def _embedded(ctx: click.Context) -> bool:
    return isinstance(ctx.obj, dict) and ctx.obj.get("store") is not None


def safe_url(url: str) -> str:
    """The URL's scheme and hosts, for messages: never a password, path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class Duration(click.ParamType):  # type: ignore[type-arg]
    """``90``, ``90s``, ``5m``, ``2h``, ``1d`` as seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        match = _DURATION.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration such as 30s, 5m, 2h or 1d", param, ctx)
        return float(match[1]) * _UNITS[match[2]]


def human_seconds(seconds: float | None) -> str:
    """``1h02m``, ``4m05s``, ``12.3s``; ``-`` for none."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def problem_exit(message: str) -> None:
    """End the command with status 1 after saying what was found."""
    click.echo(message, err=True)
    raise SystemExit(EXIT_PROBLEM)


def open_store_unchecked(url: str | None, namespace: str | None) -> Store:
    """:func:`open_store` without the connection check (``fsm health`` reports it instead)."""
    ctx = click.get_current_context()
    if _embedded(ctx):
        store: Store = ctx.obj["store"]
        return store
    if not url:
        raise click.UsageError("say which store to use: --store URL or FSM_STORE=URL")
    if url == "memory":
        raise click.UsageError(
            "a memory store lives inside one process: run the command in that process, "
            "fsm.cli.main(args, obj={'store': store}); --store takes a Redis, SQLite or "
            "PostgreSQL URL"
        )
    from adapters.urls import open_store as store_at

    try:
        store = store_at(url, namespace=namespace_for(namespace))
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(f"{safe_url(url)}: {exc}", param_hint="'--store'") from None
    ctx.call_on_close(store.close)
    return store


def clock() -> Clock:
    """The clock commands judge expiry by: the embedding caller's (``obj={"clock": ...}``),
    else the system clock."""
    from fsm.clock import SYSTEM_CLOCK

    ctx = click.get_current_context()
    if isinstance(ctx.obj, dict) and ctx.obj.get("clock") is not None:
        given: Clock = ctx.obj["clock"]
        return given
    return SYSTEM_CLOCK


def echo_json(value: object) -> None:
    """One JSON document (or JSON Lines item) on stdout; bytes never reach here."""
    click.echo(to_json(value))


def to_json(value: object, *, indent: int | None = None) -> str:
    """JSON text of ``value``; data nested deeper than Python can walk is one clear error."""
    try:
        return json.dumps(value, ensure_ascii=False, indent=indent, default=str)
    except RecursionError:
        raise click.ClickException("the data is nested too deeply to print") from None


def when(epoch: float | None, now: float | None = None) -> str:
    """``2026-11-25 05:10:03 UTC (3m12s ago)``."""
    if epoch is None:
        return "-"
    text = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if now is None:
        return text
    delta = now - epoch
    return f"{text} ({human_seconds(abs(delta))} {'ago' if delta >= 0 else 'from now'})"


class Progress:
    """Progress of a long scan on stderr: a live rich bar on a terminal, else a line every
    ``every`` items; always a final count. Never on stdout, so ``--json`` output stays clean."""

    def __init__(self, what: str, *, every: int = 1000) -> None:
        self.what = what
        self.every = every
        self.done = 0
        self._live = sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self._live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=None)
        return self

    def advance(self, label: str = "") -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1)
        elif self.done % self.every == 0:
            click.echo(f"... {self.what}: {self.done}{label}", err=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
