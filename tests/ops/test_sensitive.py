"""A flow's sensitive keys (``Flow.sensitive``: personal data) are hidden by every operator
command that shows session data, at any depth, as tokens are; ``--show-secrets`` shows them;
``fsm backup`` keeps them and says so. On the memory store and on a real redis-server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner, Result

from adapters import MemoryStore, RedisStore, Store
from fsm import Engine, FakeClock, decode_snapshot
from fsm.cli import main
from fsm.ops.backup import read_backup
from fsm.redaction import REDACTED, redact
from tests import redis_servers
from tests.fsm.sensitive_flow import ADDRESS, DRUG, PERSONAL, REF, Pharmacy

USER = "263771234567"


@dataclass
class Shop:
    store: Store
    clock: FakeClock
    engine: Engine
    url: str | None = None
    namespace: str | None = None

    def fsm(self, *args: str, flow: bool = True) -> Result:
        """``fsm ARGS --flow <the pharmacy>`` on this store (in-process, or by URL)."""
        argv = [*args, "--flow", REF] if flow else list(args)
        obj: dict[str, Any] = {"clock": self.clock}
        if self.url is None:
            obj["store"] = self.store
        else:
            argv += ["--store", self.url, "--namespace", str(self.namespace)]
        return CliRunner().invoke(main, argv, obj=obj, catch_exceptions=False)

    def order(self, user: str = USER) -> None:
        """A user who named a drug and gave an address: both are in the session's data."""
        self.engine.handle(user, DRUG)
        self.engine.handle(user, ADDRESS)
        data = self.engine.peek(user).data  # type: ignore[union-attr]
        assert data["address"] == ADDRESS and data["delivery"]["address"] == ADDRESS


@pytest.fixture(params=["memory", "redis"])
def shop(request: pytest.FixtureRequest) -> Iterator[Shop]:
    clock = FakeClock(time.time())
    store: Store
    url = namespace = None
    if request.param == "memory":
        store = MemoryStore(clock=clock)
    else:
        url = redis_servers.standalone().url
        namespace = f"pharmacy-{os.getpid()}-{time.monotonic_ns()}"
        store = RedisStore.from_url(url, namespace=namespace)
    try:
        yield Shop(store, clock, Engine(Pharmacy(), store, clock=clock), url, namespace)
    finally:
        store.close()


def _hidden(text: str) -> bool:
    return not any(value in text for value in PERSONAL)


def test_inspect_hides_the_flows_sensitive_keys_at_any_depth(shop: Shop) -> None:
    shop.order()
    shown = shop.fsm("inspect", USER)
    assert shown.exit_code == 0, shown.output
    assert _hidden(shown.output) and REDACTED in shown.stdout
    assert "ring twice" in shown.stdout  # the rest of the data is still shown
    info = json.loads(shop.fsm("inspect", USER, "--json").stdout)
    assert info["data"] == {
        "drug": REDACTED,
        "address": REDACTED,
        "delivery": {"address": REDACTED, "floor": 3},
        "note": "ring twice",
    }
    # One switch shows personal data as it shows tokens.
    secrets = shop.fsm("inspect", USER, "--json", "--show-secrets")
    assert json.loads(secrets.stdout)["data"]["delivery"]["address"] == ADDRESS


def test_ls_and_history_show_no_data(shop: Shop) -> None:
    """Neither shows data at all (history entries carry none): kept that way."""
    shop.order()
    for args in (["ls"], ["ls", "--json"]):
        listed = shop.fsm(*args)
        assert listed.exit_code == 0 and USER in listed.stdout and _hidden(listed.output)
    for args in ([], ["--json"]):
        history = shop.fsm("history", USER, *args, flow=False)
        assert history.exit_code == 0 and "order.address" in history.stdout
        assert _hidden(history.output)


def test_quarantine_show_hides_sensitive_keys_in_a_snapshot_and_in_text(shop: Shop) -> None:
    shop.order()
    record = shop.store.load(USER).record
    assert record is not None
    fields = msgspec.msgpack.decode(record.payload)
    fields[1] = 42  # the stage is no str: the bytes no longer decode as a snapshot
    broken = msgspec.msgpack.encode(fields)
    other = "263771234568"
    text = f'address={ADDRESS}; "drug": "{DRUG}"\n'.encode()
    for user, raw in ((USER, broken), (other, text)):
        current = shop.store.load(user).record
        saved = shop.store.save(
            user,
            raw,
            version=(current.version if current else 0) + 1,
            expected_version=current.version if current else 0,
            ttl=600,
            expected_tag=current.tag if current else "",
        )
        assert saved.saved
        assert shop.store.quarantine(user, raw, "test") is not None
    for user in (USER, other):
        [entry] = shop.store.quarantined(user)
        for args in ([], ["--json"]):
            out = shop.fsm("quarantine", "show", entry.id, *args)
            assert out.exit_code == 0, out.output
            assert _hidden(out.output) and REDACTED in out.stdout
        assert ADDRESS in shop.fsm("quarantine", "show", entry.id, "--show-secrets").stdout
    [entry] = shop.store.quarantined(USER)
    content = json.loads(shop.fsm("quarantine", "show", entry.id, "--json").stdout)["content"]
    assert content["data"]["delivery"] == {"address": REDACTED, "floor": 3}


def test_backup_keeps_personal_data_and_says_so(shop: Shop, tmp_path: Path) -> None:
    shop.order()
    out = tmp_path / "pharmacy.jsonl"
    done = shop.fsm("backup", "-o", str(out))
    assert done.exit_code == 0, done.output
    assert "holds every user's API token and their personal data" in done.stderr
    assert "flow 'pharmacy', keys: address, drug" in done.stderr
    with out.open("rb") as lines:
        [entry] = [e for e in read_backup(lines) if getattr(e, "user", None) == USER]
    assert entry.payload is not None
    data = decode_snapshot(entry.payload).data
    assert (data["address"], data["drug"]) == (ADDRESS, DRUG)  # a backup hides nothing


def test_backup_without_a_flow_to_name_still_runs_and_warns(shop: Shop, tmp_path: Path) -> None:
    """A backup needs no flow: when the sessions' flow cannot be told (not the reference bot's,
    and no --flow), it still runs, and says the file may hold personal data."""
    shop.order()
    done = shop.fsm("backup", "-o", str(tmp_path / "b.jsonl"), flow=False)
    assert done.exit_code == 0, done.output
    assert "every user's API token and their data, personal data included" in done.stderr


def test_backup_of_a_flow_without_sensitive_keys_names_none(tmp_path: Path) -> None:
    from tests.fsm.sample_flows import Counter

    clock = FakeClock(time.time())
    store = MemoryStore(clock=clock)
    Engine(Counter(), store, clock=clock).handle("u", "hi")
    done = CliRunner().invoke(
        main,
        ["backup", "-o", str(tmp_path / "b.jsonl"), "--flow", "tests.fsm.sample_flows:Counter"],
        obj={"store": store, "clock": clock},
    )
    assert done.exit_code == 0, done.output
    assert "holds every user's API token. It is readable" in done.stderr
    assert "personal data" not in done.stderr


def test_redact_hides_sensitive_and_secret_looking_keys_in_one_pass() -> None:
    value = {
        "address": ADDRESS,
        "rows": [{"drug": DRUG, "otp": "123456", "qty": 2}],
        "addresses": ["not declared: shown"],
    }
    assert redact(value, frozenset({"address", "drug"})) == {
        "address": REDACTED,
        "rows": [{"drug": REDACTED, "otp": REDACTED, "qty": 2}],
        "addresses": ["not declared: shown"],
    }
    assert redact(value)["address"] == ADDRESS  # no flow's keys: only the secret-looking rule
