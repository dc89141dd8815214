"""Store writes and round trips per message through ``fsm serve``, as Redis itself counts them.

One ``fsm serve`` process runs the tests' counter flow (``tests.benchmarks.serve_counter``:
each message is one step and one reply, so what the store sees is the framework's own), on a
redis-server of this run's own on a free loopback port, sending its replies to a fake Graph
API in this process. ``--users`` users each post ``--messages`` signed webhook messages, each
the moment the last was answered 200, all users at once (at most ``--concurrency`` requests
in flight). Then a shorter run with paced users (one message every ``--pace`` seconds, as
people type), and, as a baseline, the bare AsyncEngine over AsyncRedisStore in this process
(no transport, no outbox).

Redis does the counting. ``INFO commandstats`` is read before and after each run (after
``CONFIG RESETSTAT``), and the slow log, with a threshold of 0, records every command with
its arguments and who sent it: a command a client sent (one round trip) apart from one a Lua
script ran, and an ``EVALSHA``'s script by its SHA (the store's scripts are
:func:`adapters.redis_scripts.scripts`, each run as an :class:`adapters.redis_lua.Lua` with
its ``.sha``). ``commandstats`` alone cannot say that: it counts the commands a script runs as
calls too (a save is about 20 of them). Each run checks that the two agree on every command.
Per message:

- store writes: the commands clients sent that write (the save, lock-and-load, release,
  extend and quarantine scripts; a plain command Redis flags ``write``); the load and
  lock-info scripts are reads;
- round trips: every command clients sent, less connection set-up (HELLO, CLIENT SETINFO,
  ...), shown apart; this run's own INFO, CONFIG and SLOWLOG are never counted;
- versions: the sum of the stored sessions' versions over the messages;
- history: the entries the save script pushed (its ``LPUSH``es), and the events of the
  entries kept (the bookkeeping ones, "sent", are the outbox's confirms);
- replies: those the fake Graph API accepted, against one per message.

Run: ``.venv/bin/python -m tests.benchmarks.bench_serve_writes [--users 100 --messages 100]``.
The exit status is 0 whatever the figures (a measurement), 1 if a reply is missing or a
webhook was not answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio

from adapters import AsyncRedisStore, RedisStore
from adapters.redis_lua import Lua
from adapters.redis_ops import RedisOperations
from adapters.redis_server import RedisServer, free_port
from adapters.whatsapp import fake_graph as graph_server
from fsm.async_engine import AsyncEngine
from tests.fsm.sample_flows import Counter as CounterFlow
from tests.whatsapp import payloads as p
from tests.whatsapp.fake_graph import PHONE_NUMBER_ID, TOKEN

ROOT = Path(__file__).parents[2]
FSM = str(Path(sys.executable).with_name("fsm"))
ENGINE = "tests.benchmarks.serve_counter:engine"
NAMESPACE = "bench-serve"
BASELINE_NAMESPACE = "bench-baseline"
METER = "bench-meter"  # the client name of this run's own Redis connection
BASELINE = "bench-baseline"  # the client name of the baseline's store

#: The store's scripts that change data; the others (load, lock_info) only read.
WRITE_SCRIPTS = frozenset({"save", "lock_and_load", "release", "extend", "quarantine"})
#: History events that record the framework's bookkeeping rather than a message of the user.
BOOKKEEPING = frozenset({"sent"})
#: Commands a client sends once per connection, not per message.
SETUP = frozenset({"hello", "client|setinfo", "client|setname", "select", "auth", "ping"})
#: Commands whose first argument names a subcommand (``client|setinfo``).
CONTAINERS = frozenset(
    {"client", "config", "slowlog", "script", "command", "object", "memory", "function", "acl"}
)
SLOWLOG_LEN = 200_000  # entries kept: the meter reads them far faster than they come
POLL = 0.05  # seconds between two reads of the slow log
SETTLE = 0.25  # seconds of quiet, twice, that end a run's count
SETTLE_LIMIT = 15.0  # seconds to wait for that quiet, at most
CALL_TIMEOUT = 30.0  # seconds, one webhook POST


# -- counting --------------------------------------------------------------------------------
@dataclass
class Traffic:
    """What Redis saw in one run, this run's own connection left out."""

    sent: Counter[str] = field(default_factory=Counter)  # by clients: label -> calls
    scripted: Counter[str] = field(default_factory=Counter)  # inside scripts: label -> calls
    stats: Counter[str] = field(default_factory=Counter)  # INFO commandstats: name -> calls
    lost: int = 0  # slow-log entries dropped before they were read
    writes_by: dict[str, bool] = field(default_factory=dict)  # label -> is a write

    @property
    def writes(self) -> int:
        return sum(n for label, n in self.sent.items() if self.writes_by.get(label, True))

    @property
    def setup(self) -> int:
        return sum(n for label, n in self.sent.items() if label in SETUP)

    @property
    def round_trips(self) -> int:
        return sum(self.sent.values()) - self.setup

    def mismatches(self) -> list[str]:
        """Commands whose commandstats count is not what the slow log shows (a check of the
        counting itself: each command must be in both)."""
        logged: Counter[str] = Counter()
        for label, n in (*self.sent.items(), *self.scripted.items()):
            logged[label.split(" ", 1)[0]] += n
        names = set(logged) | set(self.stats)
        return sorted(
            f"{n}: {self.stats[n]} vs {logged[n]}" for n in names if self.stats[n] != logged[n]
        )


class Meter:
    """Reads what Redis counted between :meth:`begin` and :meth:`end`, on a connection of
    its own (named :data:`METER`, so its commands are told apart and left out)."""

    def __init__(self, server: RedisServer, scripts: dict[str, str]) -> None:
        # One connection, so its set-up is not inside a run.
        self.client = server.client(client_name=METER, single_connection_client=True)
        self.scripts = scripts  # sha -> script name
        self._flags: dict[str, bool] = {}
        self._own: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._last_id = -1
        self._want = 1000
        self._traffic = Traffic()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._before: Counter[str] = Counter()

    def close(self) -> None:
        self.client.close()

    def _call(self, *args: Any) -> Any:
        self._own[_label([a if isinstance(a, bytes) else str(a).encode() for a in args])] += 1
        return self.client.execute_command(*args)

    def begin(self) -> None:
        self._traffic = Traffic()
        self._call("SLOWLOG", "RESET")
        newest = self._call("SLOWLOG", "GET", 1)
        self._last_id = int(newest[0][0]) if newest else -1
        self._call("CONFIG", "RESETSTAT")
        self._own = Counter()  # from here on, our calls are counted to be left out
        self._before = self._commandstats()
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def end(self) -> Traffic:
        """Wait until Redis is quiet (work the server does after answering, a confirm say,
        is counted too), then read what it counted."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(30)
        deadline = time.monotonic() + SETTLE_LIMIT
        quiet = 0
        while quiet < 2 and time.monotonic() < deadline:  # two reads in a row find nothing
            with self._lock:
                quiet = 0 if self._drain() else quiet + 1
            time.sleep(SETTLE)
        own = Counter(self._own)  # the INFO below counts itself only after it has run
        after = self._commandstats()
        traffic = self._traffic
        for name in set(after) | set(self._before):
            calls = after[name] - self._before[name] - own[name]
            if calls:
                traffic.stats[name] = calls
        for label in traffic.sent:
            traffic.writes_by[label] = self._is_write(label)
        return traffic

    def _commandstats(self) -> Counter[str]:
        info = self._call("INFO", "commandstats")  # parsed: {"cmdstat_get": {"calls": 3, ...}}
        return Counter(
            {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in info.items()}
        )

    def _poll(self) -> None:
        while not self._stop.wait(POLL):
            with self._lock:
                self._drain()

    def _drain(self) -> int:
        """Take the slow log's entries newer than the last read (newest first from Redis);
        asks for more until it reaches one it has, so none is read twice or missed, unless
        more than :data:`SLOWLOG_LEN` came between two reads (then counted as lost). Returns
        how many new ones other clients and scripts sent."""
        want = self._want
        entries: list[Any] = []
        for _ in range(20):
            entries = self._call("SLOWLOG", "GET", want)
            reached = any(int(e[0]) <= self._last_id for e in entries)
            if reached or len(entries) < want or want >= SLOWLOG_LEN:
                break
            want = min(SLOWLOG_LEN, want * 4)
        fresh = [e for e in entries if int(e[0]) > self._last_id]
        if not fresh:
            return 0
        oldest = min(int(e[0]) for e in fresh)
        if oldest > self._last_id + 1 and self._last_id >= 0:
            self._traffic.lost += oldest - self._last_id - 1
        for entry in fresh:
            self._add(entry)
        self._last_id = max(int(e[0]) for e in fresh)
        self._want = max(1000, 2 * len(fresh))
        return sum(1 for e in fresh if e[5] != METER.encode())

    def _add(self, entry: Sequence[Any]) -> None:
        args, address, name = entry[3], entry[4], entry[5]
        if name == METER.encode():
            return
        label = _label(args)
        if label in ("evalsha", "eval"):
            label = f"{label} {self._script(args)}"
        if address.startswith(b"?"):  # the client a Lua script runs its commands as
            self._traffic.scripted[label] += 1
        else:
            self._traffic.sent[label] += 1

    def _script(self, args: Sequence[bytes]) -> str:
        if args[0].lower() == b"evalsha" and len(args) > 1:
            sha = args[1].decode(errors="replace")
            return self.scripts.get(sha, f"sha:{sha[:10]}")
        return "(script text)"

    def _is_write(self, label: str) -> bool:
        command, _, script = label.partition(" ")
        if command in ("evalsha", "eval"):
            return script not in self.scripts.values() or script in WRITE_SCRIPTS
        top = command.split("|")[0]
        if top not in self._flags:
            info = self.client.execute_command("COMMAND", "INFO", top)
            flags = info.get(top, {}).get("flags", [])  # parsed: {"set": {"flags": [...]}}
            self._flags[top] = "write" in flags
        return self._flags[top]


def _label(args: Sequence[bytes]) -> str:
    command = args[0].decode(errors="replace").lower()
    if command in CONTAINERS and len(args) > 1:
        return f"{command}|{args[1].decode(errors='replace').lower()}"
    return command


def script_names(namespace: str) -> dict[str, str]:
    """SHA -> name of every script of a store with the default limits (what ``fsm serve``
    builds); the namespace is not in the scripts, so every namespace has the same SHAs."""
    return {Lua(text).sha: name for name, text in RedisOperations(namespace).scripts.items()}


# -- the fake Graph API: counts the replies it accepted ----------------------------------------
class Replies:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: Counter[str] = Counter()  # recipient -> accepted sends
        self.last: dict[str, str] = {}

    def __call__(self, request: graph_server.Request) -> None:
        if request.answered != 200 or request.body.get("status") == "read":
            return
        to = str(request.body.get("to", ""))
        with self.lock:
            self.sent[to] += 1
            self.last[to] = graph_server.body_text(request.body)

    def to(self, users: Iterable[str]) -> int:
        with self.lock:
            return sum(self.sent[u] for u in users)


# -- the load --------------------------------------------------------------------------------
@dataclass
class Load:
    answered: Counter[str] = field(default_factory=Counter)  # user -> messages answered 200
    refused: Counter[str] = field(default_factory=Counter)  # status or error -> count
    seconds: float = 0.0

    @property
    def messages(self) -> int:
        return sum(self.answered.values())


def users_of(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(count)]


def text_of(n: int) -> str:
    return "hi" if n == 0 else "+"  # the counter starts on its first message, counts the rest


async def post_all(
    url: str, users: Sequence[str], messages: int, *, concurrency: int, pace: float, limit: float
) -> Load:
    """Each user posts ``messages`` messages, the next once the last was answered (and
    ``pace`` seconds later, the users' starts spread over one pace); no message is posted
    after ``limit`` seconds, and a user stops at its first answer other than 200."""
    load = Load()
    gate = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + limit
    tls = ssl.create_default_context()  # unused on http://, but each client would load one

    async def one_user(index: int, user: str) -> None:
        # A client (one connection) per user: a user's messages go one at a time anyway, and
        # httpx's pool spends CPU in proportion to its connections on every request.
        async with httpx.AsyncClient(base_url=url, timeout=CALL_TIMEOUT, verify=tls) as client:
            if pace:
                await asyncio.sleep(pace * index / len(users))
            for n in range(messages):
                if time.monotonic() > deadline:
                    return
                raw = p.body([p.text(user, text_of(n))])
                try:
                    async with gate:
                        answer = await client.post("/webhook", content=raw, headers=p.signed(raw))
                except httpx.HTTPError as exc:
                    load.refused[type(exc).__name__] += 1
                    return
                if answer.status_code != 200:
                    load.refused[str(answer.status_code)] += 1
                    return
                load.answered[user] += 1
                if pace and n < messages - 1:
                    await asyncio.sleep(pace)

    started = time.perf_counter()
    await asyncio.gather(*(one_user(i, u) for i, u in enumerate(users)))
    load.seconds = time.perf_counter() - started
    return load


async def baseline_load(
    port: int, users: Sequence[str], messages: int, *, concurrency: int, limit: float
) -> Load:
    """The same messages into a bare AsyncEngine on AsyncRedisStore (no transport, no
    outbox), with a message id each as a webhook has."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=port, client_name=BASELINE)
    store = AsyncRedisStore(client, namespace=BASELINE_NAMESPACE, max_connections=concurrency)
    engine = AsyncEngine(CounterFlow(), store)
    load = Load()
    gate = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + limit

    async def one_user(user: str) -> None:
        for n in range(messages):
            if time.monotonic() > deadline:
                return
            async with gate:
                await engine.handle(user, text_of(n), message_id=p.wamid())
            load.answered[user] += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one_user(u) for u in users))
    finally:
        load.seconds = time.perf_counter() - started
        await client.aclose()
    return load


# -- fsm serve -------------------------------------------------------------------------------
def serve_env(graph_url: str, store_url: str | None) -> dict[str, str]:
    """``fsm serve``'s environment: the fake Graph API at ``graph_url``, the store at
    ``store_url`` (None: the embedded memory store), no ticker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "FSM_"))}
    env.update(
        WHATSAPP_ACCESS_TOKEN=TOKEN,
        WHATSAPP_APP_SECRET=p.APP_SECRET,
        WHATSAPP_VERIFY_TOKEN=p.VERIFY_TOKEN,
        WHATSAPP_PHONE_NUMBER_ID=PHONE_NUMBER_ID,
        WHATSAPP_API_URL=graph_url,
        WHATSAPP_RATE="0",  # no pacing of sends: the run measures the store, not the rate
        WHATSAPP_MARK_READ="0",
        # The counter flow has no timers: no ticker, so what Redis counts is the messages'
        # own (a ticker's rounds are measured by tests/benchmarks/bench_timers.py).
        FSM_TIMER_TICK="off",
        PYTHONPATH=str(ROOT),
    )
    if store_url is not None:
        env.update(FSM_STORE=store_url, FSM_NAMESPACE=NAMESPACE)
    return env


def start_serve(
    env: dict[str, str], port: int, log: Path, *, engine: str = ENGINE
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [FSM, "serve", "--engine", engine, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"fsm serve did not come up:\n{log.read_text()}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


def applied_count(url: str) -> int | None:
    """``fsm_whatsapp_messages_total{outcome="applied"}`` from the server's /metrics."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    match = re.search(r'^fsm_whatsapp_messages_total\{outcome="applied"\} (\S+)$', text, re.M)
    return int(float(match[1])) if match else 0


# -- figures ---------------------------------------------------------------------------------
@dataclass
class Figures:
    name: str
    load: Load
    traffic: Traffic
    versions: int = 0
    events: Counter[str] = field(default_factory=Counter)  # events of the kept history
    kept: int = 0  # history entries kept
    replies: int | None = None  # accepted by the fake Graph API (None: no transport)
    applied: int | None = None  # the server's count of applied messages

    def per(self, value: float) -> float:
        return value / self.load.messages if self.load.messages else float("nan")

    @property
    def history_written(self) -> int:
        return self.traffic.scripted["lpush"]

    @property
    def bookkeeping(self) -> int:
        return sum(n for event, n in self.events.items() if event in BOOKKEEPING)


def stored(url: str, namespace: str, users: Sequence[str]) -> tuple[int, Counter[str], int]:
    """Sum of the users' stored versions, the events of their kept history, entries kept."""
    store = RedisStore.from_url(url, namespace=namespace)
    versions, events, kept = 0, Counter[str](), 0
    try:
        for user in users:
            record = store.load(user).record
            versions += record.version if record is not None else 0
            for entry in store.history(user):
                events[entry.event] += 1
                kept += 1
    finally:
        store.client.close()
    return versions, events, kept


def table(figures: Figures) -> None:
    traffic, load = figures.traffic, figures.load
    print(f"\n{figures.name}")
    rate = load.messages / load.seconds if load.seconds else 0.0
    print(
        f"  {load.messages} messages from {len(load.answered)} users in {load.seconds:.1f} s "
        f"({rate:.0f} messages/s)" + (f"; refused: {dict(load.refused)}" if load.refused else "")
    )
    print(f"  {'command (sent by a client)':34} {'kind':6} {'calls':>8} {'per message':>12}")
    for label, calls in sorted(traffic.sent.items(), key=lambda kv: (-kv[1], kv[0])):
        kind = "setup" if label in SETUP else "write" if traffic.writes_by[label] else "read"
        print(f"  {label:34} {kind:6} {calls:8d} {figures.per(calls):12.2f}")
    if traffic.scripted:
        inside = ", ".join(
            f"{label} {figures.per(n):.2f}"
            for label, n in sorted(traffic.scripted.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        print(f"  run inside scripts, per message: {inside}")
    print(
        f"  INFO commandstats (this run's own calls left out; counts commands scripts run "
        f"too): {sum(traffic.stats.values())} calls: "
        + ", ".join(f"{k} {v}" for k, v in sorted(traffic.stats.items(), key=lambda kv: -kv[1]))
    )
    mismatches = traffic.mismatches()
    if mismatches or traffic.lost:
        print(f"  counting check: {traffic.lost} slow-log entries lost; differ: {mismatches}")
    else:
        print("  counting check: the slow log and commandstats agree on every command")
    rows = [
        ("store writes", traffic.writes),
        ("round trips (less connection set-up)", traffic.round_trips),
        ("connection set-up commands", traffic.setup),
        ("versions (sum of stored versions)", figures.versions),
        ("history entries written", figures.history_written),
    ]
    for label, value in rows:
        print(f"  {label:40} {value:8d}   {figures.per(value):6.2f} per message")
    if figures.kept:
        shares = ", ".join(f"{e!r} {n}" for e, n in figures.events.most_common(6))
        print(f"  history kept: {figures.kept} entries; events: {shares}")
    if figures.applied is not None:
        print(f"  applied (the server's /metrics): {figures.applied}")
    if figures.replies is not None:
        print(
            f"  replies sent (the fake Graph API's count): {figures.replies}, "
            f"expected {load.messages}"
        )


def targets(figures: Figures) -> None:
    print(f"\ntargets, {figures.name}:")
    writes = figures.per(figures.traffic.writes)
    trips = figures.per(figures.traffic.round_trips)
    versions = figures.per(figures.versions)
    written = figures.per(figures.history_written)
    print(f"  writes/message <= 1.1: {_met(writes <= 1.1)} ({writes:.2f})")
    print(f"  round trips/message <= 1.2: {_met(trips <= 1.2)} ({trips:.2f})")
    print(
        f"  versions +1 per applied message: {_met(figures.versions == figures.load.messages)} "
        f"({versions:.2f})"
    )
    clean = figures.bookkeeping == 0 and written <= 1.0
    print(
        f"  history without bookkeeping entries: {_met(clean)} ({written:.2f} entries/message, "
        f"{figures.bookkeeping} of {figures.kept} kept are bookkeeping)"
    )


def _met(met: bool) -> str:
    return "MET" if met else "NOT MET"


# -- the run ---------------------------------------------------------------------------------
def run_serve(
    name: str,
    url: str,
    meter: Meter,
    replies: Replies,
    store_url: str,
    users: list[str],
    messages: int,
    *,
    concurrency: int,
    pace: float,
    limit: float,
) -> Figures:
    applied_before = applied_count(url)
    meter.begin()
    try:
        load = asyncio.run(
            post_all(url, users, messages, concurrency=concurrency, pace=pace, limit=limit)
        )
    finally:
        traffic = meter.end()
    applied_after = applied_count(url)
    versions, events, kept = stored(store_url, NAMESPACE, users)
    applied = (
        None if applied_before is None or applied_after is None else applied_after - applied_before
    )
    return Figures(name, load, traffic, versions, events, kept, replies.to(users), applied)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--messages", type=int, default=100, help="per user")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--paced-users", type=int, default=20)
    parser.add_argument("--paced-messages", type=int, default=10, help="per paced user")
    parser.add_argument("--pace", type=float, default=1.0, help="seconds between messages")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare engine")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds per run, at most")
    args = parser.parse_args(argv)
    for name in ("users", "messages", "concurrency", "paced_users", "paced_messages"):
        if getattr(args, name) < 0 or (name == "concurrency" and args.concurrency < 1):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    paced_messages = args.paced_messages
    if args.pace > 0:  # the paced run stays short: about 20 s of pacing at most
        paced_messages = min(paced_messages, int(20 / args.pace) + 1)
    paced_users = min(args.paced_users, args.users)

    scripts = script_names(NAMESPACE)
    runs: list[Figures] = []
    redis_server = RedisServer(
        "--slowlog-log-slower-than", "0", "--slowlog-max-len", str(SLOWLOG_LEN),
        name="bench-serve-writes",
    )  # fmt: skip
    replies = Replies()
    graph = graph_server.FakeGraph(
        token=TOKEN, phone_number_id=PHONE_NUMBER_ID, keep=False, echo=replies
    )
    graph_http = graph_server.serve(graph, host="127.0.0.1")
    graph_thread = threading.Thread(target=graph_http.serve_forever, daemon=True)
    serve: subprocess.Popen[bytes] | None = None
    meter: Meter | None = None
    logs = Path(tempfile.mkdtemp(prefix="bench-serve-writes-"))
    keep_log = True  # unless the run ends well
    missing: list[Figures] = []
    try:
        graph_thread.start()
        redis_server.start()
        meter = Meter(redis_server, scripts)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve = start_serve(serve_env(graph.url, redis_server.url), port, logs / "serve.log")
        print(
            f"fsm serve --engine {ENGINE}, Redis {redis_server.url}; "
            f"{args.users} users x {args.messages} messages, {args.concurrency} in flight"
        )
        runs.append(
            run_serve(
                "fsm serve, users as fast as the webhook answers",
                url, meter, replies, redis_server.url, users_of("2637710", args.users),
                args.messages, concurrency=args.concurrency, pace=0.0, limit=args.limit,
            )
        )  # fmt: skip
        if paced_users and paced_messages:
            runs.append(
                run_serve(
                    f"fsm serve, paced users ({paced_users} x {paced_messages} messages, "
                    f"one every {args.pace:g} s)",
                    url, meter, replies, redis_server.url, users_of("2637720", paced_users),
                    paced_messages, concurrency=args.concurrency, pace=args.pace,
                    limit=min(args.limit, paced_messages * args.pace + 30),
                )
            )  # fmt: skip
        stop(serve)
        baseline: Figures | None = None
        if not args.no_baseline:
            users = users_of("2637730", args.users)
            meter.begin()
            try:
                load = asyncio.run(
                    baseline_load(
                        redis_server.port, users, args.messages,
                        concurrency=args.concurrency, limit=args.limit,
                    )
                )  # fmt: skip
            finally:
                traffic = meter.end()
            versions, events, kept = stored(redis_server.url, BASELINE_NAMESPACE, users)
            baseline = Figures(
                "bare AsyncEngine over AsyncRedisStore (baseline: no transport, no outbox)",
                load, traffic, versions, events, kept,
            )  # fmt: skip
        for figures in [*runs, *([baseline] if baseline else [])]:
            table(figures)
        if baseline is not None and baseline.traffic.writes and baseline.traffic.round_trips:
            fast = runs[0]
            writes = fast.per(fast.traffic.writes) / baseline.per(baseline.traffic.writes)
            trips = fast.per(fast.traffic.round_trips) / baseline.per(baseline.traffic.round_trips)
            print(
                f"\nfsm serve vs the bare engine: writes/message {writes:.2f}x, "
                f"round trips/message {trips:.2f}x"
            )
        for figures in runs:
            targets(figures)
        missing = [f for f in runs if f.load.refused or (f.replies or 0) < f.load.messages]
        for figures in missing:
            print(
                f"\nerror: {figures.name}: {figures.replies} replies for "
                f"{figures.load.messages} messages; refused: {dict(figures.load.refused)} "
                f"(fsm serve's log: {logs / 'serve.log'})",
                file=sys.stderr,
            )
        keep_log = bool(missing)
    finally:
        if serve is not None:
            stop(serve)
        if meter is not None:
            meter.close()
        redis_server.stop()
        if graph_thread.is_alive():
            graph_http.shutdown()
            graph_thread.join(5)
        graph_http.server_close()
        if keep_log:
            print(f"fsm serve's log is kept: {logs / 'serve.log'}", file=sys.stderr)
        else:
            shutil.rmtree(logs, ignore_errors=True)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
