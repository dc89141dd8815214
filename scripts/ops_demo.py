"""Populate a Redis with a live Credex bot in every state the runbook talks about, for trying
the ``fsm`` operator commands (docs/operations.md was written from this).

    .venv/bin/python scripts/ops_demo.py --store redis://127.0.0.1:6390/0 [--seconds 60]

Writes under the ``credex`` namespace: members and strangers in various stages, one session in
the first release's format (schema 1, flow version 1), one holding the old bot's JSON, one with
an unknown stage, one with an expired token in the menu, and one whose lease a worker holds.
Then it keeps chatting as two users for ``--seconds`` (bounded) so the commands run against a
bot that is handling messages.
"""

from __future__ import annotations

import argparse
import time

import msgspec

from adapters import RedisStore
from flows.credex import build_engine
from flows.credex.fake import FakeCredexApi
from fsm import Snapshot
from fsm.clock import SYSTEM_CLOCK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a Redis URL (use a server of your own)")
    parser.add_argument("--namespace", default="credex")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    store = RedisStore.from_url(args.store, namespace=args.namespace)
    api = FakeCredexApi(clock=SYSTEM_CLOCK)
    engine = build_engine(store, api, source="bot-1:4242")

    def put(user: str, payload: bytes, **kw: object) -> None:
        result = store.save(user, payload, **kw)  # type: ignore[arg-type]
        if not result.saved:
            raise SystemExit(f"could not write {user}: {result.status.value}")

    def say(user: str, *texts: str) -> None:
        for text in texts:
            engine.handle(user, text)

    say("263770000001", "hi", "1", "5")  # Alice: offering 5 USD, asked for the recipient
    say("263770000002", "hi")  # Bob: at the menu
    say("263770000003", "hi", "2")  # Carol: looking at an incoming offer
    say("263771000001", "hi", "Register", "Tendai")  # a stranger registering
    say("263771000002", "hi")  # another stranger, at the welcome
    # The first release's format: schema 1 (a map), flow version 1, a "coming soon" step.
    say("263770000004", "hi")
    dave = store.load("263770000004").record
    assert dave is not None
    snap = msgspec.msgpack.decode(dave.payload)
    fields = dict(zip(_FIELDS, snap, strict=False))
    fields.update(stage="credex", step="soon", flow_version=1, schema=1, version=dave.version + 1)
    fields["auth"] = dict(
        zip(("token", "subject", "expires_at", "issued_at"), fields["auth"], strict=False)
    )
    put(
        "263770000004",
        msgspec.msgpack.encode(fields),
        version=dave.version + 1,
        expected_version=dave.version,
        ttl=1500,
    )
    # The old bot's JSON, left behind in the new key.
    put(
        "263772000001",
        b'{"stage": "MENU", "option": "handle_action_offer_credex"}',
        version=1,
        expected_version=0,
        ttl=900,
    )
    # A stage a later release removed.
    say("263770000002", "hi")
    bob = store.load("263770000002").record
    assert bob is not None
    bad = list(msgspec.msgpack.decode(bob.payload))
    bad[1], bad[_FIELDS.index("version")] = "savings", bob.version + 1
    put(
        "263770000002",
        msgspec.msgpack.encode(bad),
        version=bob.version + 1,
        expected_version=bob.version,
        ttl=1700,
    )
    # Carol's token expired while she looked at her offers.
    erin = store.load("263770000003").record
    assert erin is not None
    expired = list(msgspec.msgpack.decode(erin.payload))
    expired[_FIELDS.index("auth")][2] = time.time() - 120
    expired[_FIELDS.index("version")] = erin.version + 1
    put(
        "263770000003",
        msgspec.msgpack.encode(expired),
        version=erin.version + 1,
        expected_version=erin.version,
        ttl=240,
    )
    # A worker holding Alice's lease (as one stuck in a slow API call would).
    store.acquire_lock("263770000001", "bot-2:977:7f3a9c", 300)
    print(f"populated {args.store} (namespace {args.namespace!r}); chatting for {args.seconds}s")
    deadline = time.monotonic() + args.seconds
    sent = 0
    while time.monotonic() < deadline and sent < 100_000:
        say("263771000002", "Register" if sent % 2 else "cancel")
        sent += 1
        time.sleep(0.05)
    print(f"sent {sent} messages")
    store.close()


_FIELDS = list(Snapshot.__struct_fields__)

if __name__ == "__main__":
    main()
