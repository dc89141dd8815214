"""The fake Graph API of the tests: :mod:`adapters.whatsapp.fake_graph` (the package's own, which
users run as ``fsm fake-graph``), checking this test access token and phone number id."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from adapters.whatsapp import fake_graph as _package
from adapters.whatsapp.fake_graph import Answer, FakeGraph, Request, body_text, error

__all__ = [
    "PHONE_NUMBER_ID",
    "TOKEN",
    "Answer",
    "FakeGraph",
    "Request",
    "body_text",
    "error",
    "fake_graph",
]

TOKEN = "EAAG-test-access-token-0123456789"
PHONE_NUMBER_ID = "106540352242922"


@contextmanager
def fake_graph() -> Iterator[FakeGraph]:
    """A FakeGraph serving on a free loopback port that takes only :data:`TOKEN` and
    :data:`PHONE_NUMBER_ID`; ``graph.url`` is the API base URL."""
    with _package.fake_graph(token=TOKEN, phone_number_id=PHONE_NUMBER_ID) as graph:
        yield graph


def main() -> None:
    """``python -m tests.whatsapp.fake_graph PORT``: serve a FakeGraph until killed (the
    benchmark runs it in a process of its own, so it does not share the load's CPU)."""
    import sys

    graph = FakeGraph(token=TOKEN, phone_number_id=PHONE_NUMBER_ID, keep=False)
    server = _package.serve(graph, port=int(sys.argv[1]))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
