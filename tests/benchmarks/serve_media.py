"""The engine factory ``fsm serve --engine tests.benchmarks.serve_media:engine`` runs in
:mod:`tests.benchmarks.bench_media`: "send N" answers with a document of N MB made from bytes
(uploaded before the save), and a document the user sends is downloaded whole and answered
with its size (the bytes fetched through the Graph API, checked)."""

from __future__ import annotations

import hashlib

from fsm import Context, Flow, Outcome, Stage, document, step
from fsm.async_engine import AsyncEngine
from fsm.store import AsyncStore

MB = 1024 * 1024


class Files(Flow):
    name = "files"
    takes_first_message = True
    stages = (Stage("open", ("files",)),)
    transitions = ()

    @step("open", "files", accepts={"document"})
    def files(self, ctx: Context) -> Outcome:
        if ctx.media is not None:
            data = ctx.download()
            return ctx.stay(f"got {len(data)} bytes, sha {hashlib.sha256(data).hexdigest()[:8]}")
        words = ctx.text.split()  # "send 5 <tag>": 5 MB, its first bytes the tag (new bytes)
        size = int(float(words[1]) * MB) if len(words) == 3 and words[0] == "send" else 1
        tag = words[-1].encode()[:size]
        data = tag + bytes(size - len(tag))
        return ctx.stay(document(data, filename="file.txt", mime_type="text/plain"))


def engine(store: AsyncStore) -> AsyncEngine:
    """What ``fsm serve`` calls with its async store."""
    return AsyncEngine(Files(), store)
