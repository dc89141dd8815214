"""``fsm serve`` against the least a correct WhatsApp bot must do, on loopback, in one run.

The baseline is a bare Starlette handler: it checks the signature, parses the body and POSTs
one text to the Graph API, then answers 200. Against it: ``fsm serve`` with the reference
bot's menu step (Bob types "9", an invalid choice: the bot re-asks, the session is saved
with its replies in the outbox, the replies are sent, the outbox is confirmed), on the memory
store and on Redis. Each server, and the fake Graph API, runs in a process of its own under
uvicorn; the load comes from this process: ``--clients`` users at once, each posting its next
message when the last was answered (one user per client: a user's messages are handled in
order, so more clients per user would only queue).

Latency is per message, webhook POST in to its 200 out (the Graph API request is made before
the answer, so it is inside). Run:
``.venv/bin/python -m tests.benchmarks.bench_whatsapp`` (``--quick`` for a smoke run).
Pacing (WHATSAPP_RATE) and mark-as-read are off in every server: the baseline does neither.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.redis_servers import RedisServer, free_port
from tests.whatsapp import payloads as p
from tests.whatsapp.fake_graph import PHONE_NUMBER_ID, TOKEN

ROOT = Path(__file__).parents[2]
MEMBERS = ("263770000001", "263770000002", "263770000003", "263770000004")


def bare_app() -> object:
    """The baseline: signature, parse, one text to the Graph API, 200."""
    import hashlib
    import hmac

    import msgspec
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    secret = os.environ["WHATSAPP_APP_SECRET"].encode()
    url = f"{os.environ['WHATSAPP_API_URL']}/{PHONE_NUMBER_ID}/messages"
    client = httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"})

    async def webhook(request: Request) -> PlainTextResponse:
        body = await request.body()
        given = request.headers.get("x-hub-signature-256", "")
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given, expected):
            return PlainTextResponse("bad signature", status_code=403)
        update = msgspec.json.decode(body)
        for entry in update["entry"]:
            for change in entry["changes"]:
                for message in change["value"].get("messages", []):
                    payload = {
                        "messaging_product": "whatsapp",
                        "to": message["from"],
                        "type": "text",
                        "text": {"body": "Please choose from the menu."},
                    }
                    answer = await client.post(
                        url,
                        content=msgspec.json.encode(payload),
                        headers={"Content-Type": "application/json"},
                    )
                    answer.raise_for_status()
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/webhook", webhook, methods=["POST"])])


def start(
    command: list[str], env: dict[str, str], ready_url: str | None
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while ready_url is not None:
        try:
            httpx.post(ready_url, content=b"{}", timeout=1)
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not start") from None
            time.sleep(0.05)
    return process


def server_env(graph_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WHATSAPP_ACCESS_TOKEN=TOKEN,
        WHATSAPP_APP_SECRET=p.APP_SECRET,
        WHATSAPP_VERIFY_TOKEN=p.VERIFY_TOKEN,
        WHATSAPP_PHONE_NUMBER_ID=PHONE_NUMBER_ID,
        WHATSAPP_API_URL=graph_url,
        WHATSAPP_RATE="0",
        WHATSAPP_MARK_READ="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


async def load(url: str, users: tuple[str, ...], per_user: int) -> tuple[list[float], float]:
    """Each user posts ``per_user`` messages, one at a time; latencies (s) and the wall time."""
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one_user(user: str) -> None:
            for _ in range(per_user):
                raw = p.body([p.text(user, "9")])
                started = time.perf_counter()
                answer = await client.post("/webhook", content=raw, headers=p.signed(raw))
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise RuntimeError(f"{url}: {answer.status_code} {answer.text}")

        started = time.perf_counter()
        await asyncio.gather(*(one_user(u) for u in users))
        return latencies, time.perf_counter() - started


def measure(name: str, url: str, users: tuple[str, ...], per_user: int) -> dict[str, float]:
    asyncio.run(load(url, users, 20))  # warm up: sessions at the menu, connections open
    best: dict[str, float] = {}
    for _ in range(2):
        latencies, wall = asyncio.run(load(url, users, per_user))
        figures = {
            "p50": statistics.median(latencies) * 1e3,
            "p99": sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1e3,
            "rate": len(latencies) / wall,
        }
        if not best or figures["p50"] < best["p50"]:
            best = figures
    print(
        f"{name:34} p50 {best['p50']:6.2f} ms  p99 {best['p99']:6.2f} ms  "
        f"{best['rate']:7.0f} messages/s"
    )
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few messages")
    parser.add_argument("--clients", type=int, default=4, choices=range(1, 5))
    args = parser.parse_args()
    per_user = 50 if args.quick else 500
    users = MEMBERS[: args.clients]
    graph_port = free_port()
    graph_url = f"http://127.0.0.1:{graph_port}/v99.0"
    python = sys.executable
    fsm = str(Path(python).with_name("fsm"))
    processes: list[subprocess.Popen[bytes]] = []
    redis = RedisServer(name="bench-whatsapp").start()
    try:
        graph = start(
            [python, "-m", "tests.whatsapp.fake_graph", str(graph_port)],
            server_env(graph_url),
            None,
        )
        processes.append(graph)
        assert graph.stdout is not None and graph.stdout.readline().strip() == b"ready"
        print(f"{len(users)} users at once, {per_user} messages each, best of 2 rounds\n")
        results = {}
        cases = [
            ("bare Starlette handler (baseline)", None, {}),
            ("fsm serve, memory store", "memory", {}),
            ("fsm serve, Redis", "redis", {"FSM_STORE": redis.url}),
        ]
        for name, kind, extra in cases:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = server_env(graph_url, **extra)
            if kind is None:
                command = [
                    python,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "tests.benchmarks.bench_whatsapp:bare_app",
                    "--port",
                    str(port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ]
            else:
                command = [fsm, "serve", "--port", str(port)]
            server = start(command, env, f"{url}/webhook")
            processes.append(server)
            try:
                results[kind] = measure(name, url, users, per_user)
            finally:
                server.terminate()
                server.wait(10)
        base, memory = results[None], results["memory"]
        latency, rate = memory["p50"] / base["p50"], memory["rate"] / base["rate"]
        print(
            f"\nmemory store vs bare: latency {latency:.2f}x (target <= 1.5x: "
            f"{'met' if latency <= 1.5 else 'not met'}), throughput {rate:.2f}x "
            f"(target >= 0.6x: {'met' if rate >= 0.6 else 'not met'})"
        )
        redis_latency = results["redis"]["p50"] / base["p50"]
        redis_rate = results["redis"]["rate"] / base["rate"]
        print(f"Redis vs bare: latency {redis_latency:.2f}x, throughput {redis_rate:.2f}x")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        redis.stop()


if __name__ == "__main__":
    main()
