"""A 5 MB file up and down through ``fsm serve``, against the raw Graph API calls in this run.

One ``fsm serve`` process (the memory store) runs :mod:`tests.benchmarks.serve_media` and
sends to the fake Graph API in this process, on loopback. Each round, measured from the
webhook's POST to the fake's acceptance of the bot's reply:

- upload: "send 5 <tag>" makes a 5 MB document from bytes (new bytes each round: a file
  sent twice is uploaded once); the engine uploads it (``POST
  /{phone-number-id}/media``) before the save, and the reply goes out by its media id;
- download: the user sends a 5 MB document; the step downloads it (``GET /{media-id}``, then
  the bytes with the token), the transport checks its size, type and sha256, and answers;
- text: "hi" answered with a 1-byte document, for the bot's own time per message.

The baselines are the same HTTP calls made directly with httpx in this process (the upload;
the retrieve-URL call and the download), so the ratios say what the framework adds.

Run: ``.venv/bin/python -m tests.benchmarks.bench_media [--mb 5 --rounds 5]``. Exit status 0
whatever the figures (a measurement), 1 if a reply is missing or wrong.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from adapters.redis_server import free_port
from adapters.whatsapp import fake_graph as graph_server
from tests.benchmarks.bench_serve_writes import serve_env, start_serve, stop
from tests.whatsapp import payloads as p
from tests.whatsapp.fake_graph import PHONE_NUMBER_ID, TOKEN

ROOT = Path(__file__).parents[2]
FSM = str(Path(sys.executable).with_name("fsm"))
ENGINE = "tests.benchmarks.serve_media:engine"
MB = 1024 * 1024


def replied(graph: graph_server.FakeGraph, user: str, count: int, within: float = 60) -> None:
    """Wait until ``user`` has ``count`` accepted replies."""
    deadline = time.monotonic() + within
    while len([r for r in graph.sends() if r.body.get("to") == user]) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no reply {count} to {user} within {within:g}s")
        time.sleep(0.002)


def timed(post: Callable[[], None], graph: graph_server.FakeGraph, user: str, n: int) -> float:
    started = time.perf_counter()
    post()
    replied(graph, user, n)
    return time.perf_counter() - started


def webhook(http: httpx.Client, url: str, message: dict[str, object]) -> Callable[[], None]:
    raw = p.body([message])

    def post() -> None:
        answer = http.post(f"{url}/webhook", content=raw, headers=p.signed(raw))
        if answer.status_code != 200:
            raise RuntimeError(f"the webhook answered {answer.status_code}")

    return post


def raw_upload(http: httpx.Client, graph_url: str, data: bytes) -> float:
    """The upload alone: one multipart POST, its body built up front (the least it costs)."""
    boundary = "bench-media-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="messaging_product"\r\n\r\n'
        f"whatsapp\r\n--{boundary}\r\n"
        f'Content-Disposition: form-data; name="type"\r\n\r\ntext/plain\r\n--{boundary}\r\n'
        f'Content-Disposition: form-data; name="file"; filename="raw.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    started = time.perf_counter()
    answer = http.post(f"{graph_url}/{PHONE_NUMBER_ID}/media", content=body, headers=headers)
    answer.raise_for_status()
    return time.perf_counter() - started


def raw_download(http: httpx.Client, graph_url: str, media_id: str) -> float:
    started = time.perf_counter()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    info = http.get(f"{graph_url}/{media_id}", headers=auth).json()
    http.get(info["url"], headers=auth).raise_for_status()
    return time.perf_counter() - started


def run(size_mb: float, rounds: int) -> int:
    graph = graph_server.FakeGraph(token=TOKEN, phone_number_id=PHONE_NUMBER_ID, keep=True)
    graph_http = graph_server.serve(graph, host="127.0.0.1")
    threading.Thread(target=graph_http.serve_forever, daemon=True).start()
    graph_url = f"http://127.0.0.1:{graph_http.server_address[1]}/v99.0"
    port, logs = free_port(), Path(tempfile.mkdtemp(prefix="bench-media-"))
    serve = start_serve(serve_env(graph_url, None), port, logs / "serve.log", engine=ENGINE)
    data = os.urandom(int(size_mb * MB))
    digest = hashlib.sha256(data).hexdigest()
    url, user = f"http://127.0.0.1:{port}", "263770009999"
    figures: dict[str, list[float]] = {"upload": [], "download": [], "text": [], "raw_up": [],
                                       "raw_down": []}  # fmt: skip
    try:
        with httpx.Client(timeout=120) as http:
            sent = 0
            for n in range(rounds):
                message = p.text(user, f"send {size_mb} round-{n}", message_id=p.wamid())
                sent += 1
                figures["upload"].append(timed(webhook(http, url, message), graph, user, sent))
                media_id = graph.add_media(data, "text/plain", "big.txt")
                doc = p.media(user, "document", media_id, "text/plain", sha256=digest,
                              filename="big.txt")  # fmt: skip
                sent += 1
                figures["download"].append(timed(webhook(http, url, doc), graph, user, sent))
                hi = p.text(user, "hi", message_id=p.wamid())
                sent += 1
                figures["text"].append(timed(webhook(http, url, hi), graph, user, sent))
                figures["raw_up"].append(raw_upload(http, graph_url, data))
                figures["raw_down"].append(raw_download(http, graph_url, media_id))
    finally:
        stop(serve)
        graph_http.shutdown()
    return report(graph, user, size_mb, digest, figures)


def report(
    graph: graph_server.FakeGraph,
    user: str,
    size_mb: float,
    digest: str,
    figures: dict[str, list[float]],
) -> int:
    ms = {name: statistics.median(values) * 1000 for name, values in figures.items()}
    answers = [graph_server.body_text(r.body) for r in graph.sends() if r.body.get("to") == user]
    rounds = len(figures["upload"])
    ok = sum(f"sha {digest[:8]}" in a for a in answers) == rounds
    big = [u for u in graph.uploads if u.filename == "file.txt" and u.size == int(size_mb * MB)]
    print(f"{size_mb:g} MB through fsm serve, {rounds} rounds (median, webhook to reply)")
    print(f"  upload:   {ms['upload']:8.1f} ms   raw upload {ms['raw_up']:8.1f} ms   "
          f"ratio {ms['upload'] / ms['raw_up']:.2f}")  # fmt: skip
    print(f"  download: {ms['download']:8.1f} ms   raw download {ms['raw_down']:6.1f} ms   "
          f"ratio {ms['download'] / ms['raw_down']:.2f}")  # fmt: skip
    print(f"  a 1-byte document (the bot's own time per message): {ms['text']:.1f} ms")
    print(f"  uploads of {size_mb:g} MB: {len(big)} (one per 'send': none twice): "
          f"{'yes' if len(big) == rounds else 'NO'}")  # fmt: skip
    print(f"  every download checked and answered: {'yes' if ok else 'NO'}")
    return 0 if ok and len(big) == rounds else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.exit(run(args.mb, args.rounds))


if __name__ == "__main__":
    main()
