"""Helpers of :mod:`tests.whatsapp.test_exactly_once`: real ``fsm serve`` workers (processes,
killed for real), Meta's re-delivery (a webhook answered 503, or whose connection broke, is
posted again until 200, bounded), test phone numbers and message ids that let the worker logs
be scanned for phone numbers, and failure reports (the sends, the logs' tails)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import string
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from tests import redis_servers
from tests.support import wait_http

from . import payloads as p
from .fake_graph import FakeGraph, Request, body_text
from .test_serve import FSM, ROOT, Served

__all__ = [
    "COUNTER",
    "LEDGER",
    "WORKER_LOGS",
    "Delivered",
    "SoakFindings",
    "Worker",
    "adeliver",
    "check_soak",
    "deliver",
    "fail_over_to_replica",
    "message",
    "mid",
    "numbers",
    "phone_leaks",
    "repl_offset",
    "report",
    "sender",
    "wait_replica_caught_up",
]

COUNTER = "tests.whatsapp.exactly_once_flows:counter_engine"
LEDGER = "tests.whatsapp.exactly_once_flows:ledger_engine"

#: Every log file a :class:`Worker` of this session wrote (the log hygiene test scans them).
WORKER_LOGS: list[Path] = []


class Worker(Served):
    """An ``fsm serve`` process like :class:`~tests.whatsapp.test_serve.Served`, with extra
    CLI arguments (``--engine``), that can be SIGKILLed and started again on its port (a
    supervisor restarting it), each process with a log of its own."""

    def __init__(
        self,
        env: dict[str, str],
        tmp: Path,
        port: int | None = None,
        *,
        args: Sequence[str] = (),
        name: str = "worker",
    ) -> None:
        self.env = dict(env)
        self.tmp = tmp
        self.args = list(args)
        self.name = name
        self.port = port or redis_servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs: list[Path] = []
        self._spawn()

    def _spawn(self) -> None:
        self.log = self.tmp / f"{self.name}-{self.port}-{time.monotonic_ns()}.log"
        self.logs.append(self.log)
        WORKER_LOGS.append(self.log)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [FSM, "serve", "--port", str(self.port), *self.args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_http(f"{self.url}/healthz", self.process, log=self.log)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL (as a crash or an OOM kill would) and reap it."""
        if self.alive:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def restart(self, env: dict[str, str] | None = None) -> None:
        """Kill it if it runs, then start a new process on the same port."""
        self.kill()
        if env is not None:
            self.env = dict(env)
        self._spawn()

    def tail(self, lines: int = 25) -> str:
        out = []
        for log in self.logs[-2:]:
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            out.append(f"--- {log.name} (last {lines} lines)")
            out.extend(text[-lines:])
        return "\n".join(out)


# -- test numbers and message ids ----------------------------------------------------------
def numbers(block: int, count: int) -> list[str]:
    """``count`` test phone numbers of ``block`` (0-99): ``2637739BBNNN``. Their digits
    appear nowhere else in a worker log (no message id, port or PID has six digits in a row
    of them), so a log line carrying one is found by :func:`phone_leaks`."""
    assert 0 <= block < 100 and 0 < count <= 1000
    return [f"2637739{block:02d}{n:03d}" for n in range(count)]


def mid() -> str:
    """A message id with no digits (Meta's are base64: a run of digits in one could look like
    a phone number to :func:`phone_leaks`)."""
    return "wamid.T" + "".join(random.choices(string.ascii_letters, k=24))


def message(user: str, text: str) -> bytes:
    """A signed-ready webhook body with one text message of ``user``, with a fresh id."""
    return p.body([p.text(user, text, message_id=mid())])


_DIGITS = re.compile(r"\d{6,}")


def phone_leaks(logs: Iterable[Path], users: Iterable[str], window: int = 6) -> list[str]:
    """Lines of ``logs`` carrying ``window`` or more consecutive digits of a number of
    ``users`` (a log may show a number's last 4 digits, no more)."""
    pieces = {u[i : i + window] for u in users for i in range(len(u) - window + 1)}
    found = []
    for log in logs:
        if not log.exists():
            continue
        for n, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            runs = _DIGITS.findall(line)
            if any(piece in run for run in runs for piece in pieces):
                found.append(f"{log.name}:{n}: {line[:300]}")
    return found


# -- Meta's re-delivery ----------------------------------------------------------------------
@dataclass
class Delivered:
    """How a webhook body got its 200: after how many posts, and what the others got."""

    posts: int
    answers: list[str]


def deliver(
    pick: Worker | Callable[[int], Worker],
    raw: bytes,
    *,
    within: float = 40.0,
    pause: float = 0.1,
    max_posts: int = 200,
) -> Delivered:
    """Post ``raw`` until a worker answers 200, as Meta re-delivers a webhook that got no 200
    (503, a broken connection). ``pick(n)`` chooses the worker of the n-th post (a Worker:
    always that one). AssertionError after ``within`` seconds or ``max_posts`` posts, or on
    an answer that is neither 200 nor 503."""
    choose = (lambda n: pick) if isinstance(pick, Worker) else pick
    deadline = time.monotonic() + within
    answers: list[str] = []
    for n in range(max_posts):
        worker = choose(n)
        try:
            answer = worker.post(raw, timeout=max(1.0, min(30.0, deadline - time.monotonic())))
        except httpx.HTTPError as exc:
            answers.append(f"{worker.port}: {type(exc).__name__}")
        else:
            if answer.status_code == 200:
                return Delivered(n + 1, answers)
            answers.append(f"{worker.port}: {answer.status_code}")
            assert answer.status_code == 503, (answers, answer.text)
        assert time.monotonic() < deadline, f"no 200 within {within}s: {answers[-10:]}"
        time.sleep(pause)
    raise AssertionError(f"no 200 after {max_posts} posts: {answers[-10:]}")


async def adeliver(
    client: httpx.AsyncClient,
    pick: Worker | Callable[[int], Worker],
    raw: bytes,
    *,
    within: float = 40.0,
    pause: tuple[float, float] = (0.05, 0.2),
    max_posts: int = 200,
) -> Delivered:
    """:func:`deliver` on asyncio, sharing ``client``."""
    choose = (lambda n: pick) if isinstance(pick, Worker) else pick
    deadline = time.monotonic() + within
    answers: list[str] = []
    headers = p.signed(raw)
    for n in range(max_posts):
        worker = choose(n)
        try:
            answer = await client.post(
                f"{worker.url}/webhook",
                content=raw,
                headers=headers,
                timeout=max(1.0, min(30.0, deadline - time.monotonic())),
            )
        except httpx.HTTPError as exc:
            answers.append(f"{worker.port}: {type(exc).__name__}")
        else:
            if answer.status_code == 200:
                return Delivered(n + 1, answers)
            answers.append(f"{worker.port}: {answer.status_code}")
            assert answer.status_code == 503, (answers, answer.text)
        assert time.monotonic() < deadline, f"no 200 within {within}s: {answers[-10:]}"
        await asyncio.sleep(random.uniform(*pause))
    raise AssertionError(f"no 200 after {max_posts} posts: {answers[-10:]}")


# -- reports ---------------------------------------------------------------------------------
def sender(request: Request) -> str:
    """Which process sent ``request``: its access token (each soak process has its own)."""
    return request.authorization.removeprefix("Bearer ")


def report(
    graph: FakeGraph,
    workers: Sequence[Worker],
    *,
    users: Iterable[str] | None = None,
    sends: int = 60,
    lines: int = 25,
) -> str:
    """The last ``sends`` sends (to ``users``, if given) and each worker's log tail."""
    wanted = None if users is None else set(users)
    found = [r for r in graph.sends(accepted=False) if wanted is None or r.body.get("to") in wanted]
    out = [f"sends ({len(found)}, the last {sends} shown):"]
    for r in found[-sends:]:
        out.append(
            f"  {r.at:.3f} to ...{str(r.body.get('to', ''))[-4:]} "
            f"{body_text(r.body)!r} answered={r.answered} by={sender(r)[-12:]}"
        )
    for worker in workers:
        out.append(worker.tail(lines))
    return "\n".join(out)


# -- the soak's findings ----------------------------------------------------------------------
@dataclass
class SoakFindings:
    """What a soak's sends show, each as lines for the failure message."""

    sends: int = 0
    lost: list[str] = field(default_factory=list)
    #: Replies the flow would only produce if a message had been applied twice.
    extra: list[str] = field(default_factory=list)
    disorder: list[str] = field(default_factory=list)
    #: Duplicates whose earlier sends were all in flight at their process's kill.
    allowed: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    misapplied: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.allowed) + len(self.unexplained)} duplicates ({len(self.allowed)} in "
            f"flight at a kill, {len(self.unexplained)} not), {len(self.lost)} lost, "
            f"{len(self.extra)} unexpected, {len(self.disorder)} users out of order, "
            f"{len(self.misapplied)} users misapplied"
        )

    def problems(self) -> str:
        """The violations, one clause each ("" if none)."""
        found = {
            "lost": self.lost,
            "applied twice (unexpected replies)": self.extra,
            "out of order": self.disorder,
            "duplicates not in flight at a kill": self.unexplained,
            "stored count wrong": self.misapplied,
        }
        return "; ".join(f"{len(v)} {what}: {v[:5]}" for what, v in found.items() if v)


def check_soak(
    expected: dict[str, list[str]],
    sends: Sequence[Request],
    kills: dict[str, float],
    in_flight: tuple[float, float],
) -> SoakFindings:
    """Check the accepted ``sends`` against each user's ``expected`` replies, in order.

    ``kills`` maps the token of each SIGKILLed process (:func:`sender`) to the ``time.time()``
    of its kill. A reply may be sent again only if each earlier send of it was made by a
    process killed at most ``in_flight[0]`` s after (or ``in_flight[1]`` s before: the request
    was in its socket) that send. Order: each reply is first sent after every reply before it,
    and no process sends an older reply after a newer one (after two kills, "7 8 7 8" is
    allowed: each repeat was in flight at a kill)."""
    found = SoakFindings(sends=len(sends))
    before, after = in_flight

    def was_in_flight(request: Request) -> bool:
        killed = kills.get(sender(request))
        return killed is not None and killed - before <= request.at <= killed + after

    def who(request: Request) -> str:
        process = sender(request).removeprefix("EAAG-soak-")
        killed = kills.get(sender(request))
        if killed is None:
            return f"{process} (never killed)"
        return f"{process} ({request.at - killed:+.2f} s from its kill)"

    by_user: dict[str, list[Request]] = {user: [] for user in expected}
    for request in sends:
        by_user.setdefault(str(request.body.get("to")), []).append(request)
    for user, requests in by_user.items():
        wanted = expected.get(user, [])
        tail = user[-4:]
        texts = [body_text(r.body) for r in requests]
        found.lost += [f"...{tail} {t!r}" for t in wanted if t not in texts]
        found.extra += [f"...{tail} {t!r}" for t in texts if t not in wanted]
        position = {text: n for n, text in enumerate(wanted)}
        placed = [(r, position[t]) for r, t in zip(requests, texts, strict=True) if t in position]
        firsts = list(dict.fromkeys(n for _, n in placed))
        by_process: dict[str, list[int]] = {}
        for request, n in placed:
            by_process.setdefault(sender(request), []).append(n)
        if firsts != sorted(firsts) or any(v != sorted(v) for v in by_process.values()):
            back = next(i for i in range(1, len(placed)) if placed[i][1] < placed[i - 1][1])
            shown = placed[max(0, back - 4) : back + 4]
            found.disorder.append(
                f"...{tail}: " + ", ".join(f"{wanted[n]!r} by {who(r)}" for r, n in shown)
            )
        earlier: dict[str, list[Request]] = {}
        for request, text in zip(requests, texts, strict=True):
            sent = earlier.setdefault(text, [])
            if sent:
                line = f"...{tail} {text!r} sent by " + ", then ".join(
                    who(r) for r in [*sent, request]
                )
                ok = all(was_in_flight(r) for r in sent)
                (found.allowed if ok else found.unexplained).append(line)
            sent.append(request)
    return found


# -- Redis ---------------------------------------------------------------------------------
def repl_offset(server: redis_servers.RedisServer, field: str) -> int:
    with server.client() as client:
        return int(client.info("replication").get(field, -1))


def wait_replica_caught_up(setup: redis_servers.SentinelSetup, timeout: float = 10) -> None:
    target = repl_offset(setup.primary, "master_repl_offset")
    deadline = time.monotonic() + timeout
    while repl_offset(setup.replica, "slave_repl_offset") < target:
        assert time.monotonic() < deadline, "the replica did not catch up with its primary"
        time.sleep(0.02)


def fail_over_to_replica(setup: redis_servers.SentinelSetup, timeout: float = 40) -> float:
    """Wait until the Sentinel names the replica as the primary (asking it to fail over,
    which it may refuse while it still sees the replica down); the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    asked = 0.0
    while True:
        with setup.sentinel.client() as client:
            try:
                master = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", setup.service
                )
            except redis.RedisError:
                master = None
            if master and int(master[1]) == setup.replica.port:
                with setup.replica.client() as replica:
                    if replica.info("replication").get("role") == "master":
                        return time.monotonic() - started
            elif time.monotonic() - asked > 1.0:
                asked = time.monotonic()
                with contextlib.suppress(redis.RedisError):  # INPROG, NOGOODSLAVE: again
                    client.execute_command("SENTINEL", "FAILOVER", setup.service)
        assert time.monotonic() < deadline, "the Sentinel did not promote the replica"
        time.sleep(0.1)
