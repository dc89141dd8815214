"""The kit for trying a WhatsApp bot without Meta, as a user runs it: ``fsm fake-graph`` prints
the bot's replies, ``fsm serve`` points at it, and a body made by the public builder
(:mod:`adapters.whatsapp.testing`), signed by ``fsm sign-webhook``, is posted by hand."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from adapters.whatsapp.fake_graph import Request, describe, fake_graph
from adapters.whatsapp.signature import signature_problem
from adapters.whatsapp.testing import sign, signed_headers, update_body, webhook_body
from adapters.whatsapp.updates import Update, parse_update
from fsm.cli import main
from tests.whatsapp.test_serve import Served

FSM = str(Path(sys.executable).with_name("fsm"))
ALICE = "263770000001"
PHONE_NUMBER_ID = "106540352242922"
SECRET = "kit-app-secret-0123456789abcdef"


class Printed:
    """A process's stdout, line by line, read in a thread (so waiting never blocks on it)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stdout = process.stdout
        threading.Thread(target=lambda: [self.lines.put(x) for x in stdout], daemon=True).start()

    def wait_for(self, fragment: str, timeout: float = 30.0) -> list[str]:
        """Every line up to and including the first (new) one containing ``fragment``."""
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01)).rstrip("\n")
            except queue.Empty:
                raise AssertionError(f"no line with {fragment!r}; printed: {self.seen}") from None
            got.append(line)
            self.seen.append(line)
            if fragment in line:
                return got


@pytest.fixture
def printed_graph() -> Iterator[Printed]:
    """``fsm fake-graph --port 0`` as a process; stopped by its PID."""
    process = subprocess.Popen(
        [FSM, "fake-graph", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield Printed(process)
    finally:
        process.terminate()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


def test_a_signed_body_posted_by_hand_gets_the_bots_reply_to_the_fake_graph_api(
    printed_graph: Printed, tmp_path: Path
) -> None:
    first = printed_graph.wait_for("fake Graph API on")[-1]
    api_url = first.rsplit("WHATSAPP_API_URL=", 1)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "FSM_"))}
    env.update(
        WHATSAPP_ACCESS_TOKEN="any-token-the-fake-accepts",
        WHATSAPP_APP_SECRET=SECRET,
        WHATSAPP_VERIFY_TOKEN="kit-verify-token",
        WHATSAPP_PHONE_NUMBER_ID=PHONE_NUMBER_ID,
        WHATSAPP_API_URL=api_url,
        WHATSAPP_MARK_READ="0",
    )
    server = Served(env, tmp_path)  # the reference bot, on the memory store
    try:
        for n, body in enumerate(
            (
                webhook_body(PHONE_NUMBER_ID, ALICE, text="hi"),
                webhook_body(PHONE_NUMBER_ID, ALICE, list_reply="accept", title="Accept offers"),
            )
        ):
            path = tmp_path / f"body-{n}.json"
            path.write_bytes(body)
            signed = subprocess.run(
                [FSM, "sign-webhook", "--secret-env", "WHATSAPP_APP_SECRET", str(path)],
                env=env, capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            assert SECRET not in signed.stdout + signed.stderr
            header = signed.stdout.strip()
            answer = httpx.post(
                f"{server.url}/webhook",
                content=path.read_bytes(),
                headers={"X-Hub-Signature-256": header, "Content-Type": "application/json"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            if n == 0:  # the menu: a list, its rows printed under it
                menu = printed_graph.wait_for("[accept] Accept offers")
                assert any(line.startswith(f"to {ALICE} (list): Welcome") for line in menu)
            else:
                reply = printed_graph.wait_for("Which offer do you want to accept?")[-1]
                assert reply.startswith(f"to {ALICE} (")
        # A body signed with another secret is refused, and nothing is sent.
        path.write_bytes(webhook_body(PHONE_NUMBER_ID, ALICE, text="again"))
        wrong = signed_headers(path.read_bytes(), "not-the-app-secret")
        refused = httpx.post(f"{server.url}/webhook", content=path.read_bytes(), headers=wrong)
        assert refused.status_code == 403
    finally:
        server.stop()


def test_python_dash_m_serves_the_same_fake(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "adapters.whatsapp.fake_graph", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        printed = Printed(process)
        url = printed.wait_for("WHATSAPP_API_URL=")[-1].rsplit("=", 1)[1]
        payload = {"messaging_product": "whatsapp", "to": ALICE, "type": "text"}
        payload["text"] = {"body": "Hello\nthere"}
        sent = httpx.post(
            f"{url}/{PHONE_NUMBER_ID}/messages",
            json=payload,
            headers={"Authorization": "Bearer whatever"},
        )
        assert sent.status_code == 200 and sent.json()["messages"][0]["id"].startswith("wamid.")
        printed.wait_for(f"to {ALICE} (text): Hello")
        assert printed.wait_for("there") == ["    there"]
        unsigned = httpx.post(f"{url}/{PHONE_NUMBER_ID}/messages", json=payload)
        assert unsigned.status_code == 401
        printed.wait_for("refused (401): bad token")
    finally:
        process.terminate()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


# -- the builder and the commands, in process ----------------------------------------------------


def parse(body: bytes) -> Update:
    return parse_update(body, phone_number_id=PHONE_NUMBER_ID, max_messages=10)


def test_the_builder_makes_bodies_the_webhook_parses() -> None:
    text = parse(webhook_body(PHONE_NUMBER_ID, ALICE, text="hé", message_id="wamid.A1"))
    [message] = text.messages
    assert (message.user, message.message_id, message.kind, message.text) == (
        ALICE, "wamid.A1", "text", "hé",
    )  # fmt: skip
    assert message.pressed is None
    for option in ("button", "list_reply"):
        tapped = webhook_body(PHONE_NUMBER_ID, ALICE, **{option: "confirm"})
        [tap] = parse(tapped).messages
        assert (tap.kind, tap.text, tap.pressed) == ("interactive", "confirm", "confirm")
    raw = webhook_body(PHONE_NUMBER_ID, ALICE, text="hé")
    assert raw.isascii() and json.loads(raw)["entry"][0]["changes"][0]["value"]["contacts"]
    with pytest.raises(ValueError, match="exactly one"):
        webhook_body(PHONE_NUMBER_ID, ALICE, text="hi", button="yes")
    with pytest.raises(ValueError, match="exactly one"):
        webhook_body(PHONE_NUMBER_ID, ALICE)
    status = {"id": "wamid.out.1", "status": "read", "timestamp": "1", "recipient_id": ALICE}
    assert len(parse(update_body(statuses=[status], phone_number_id=PHONE_NUMBER_ID)).statuses) == 1


def test_sign_webhook_prints_the_header_value_and_reads_the_secret_from_the_environment(
    tmp_path: Path,
) -> None:
    body = webhook_body(PHONE_NUMBER_ID, ALICE, text="hi") + b"\n"  # as an editor saves it
    (tmp_path / "body.json").write_bytes(body)
    runner = CliRunner()
    done = runner.invoke(
        main, ["sign-webhook", str(tmp_path / "body.json")], env={"WHATSAPP_APP_SECRET": SECRET}
    )
    assert done.exit_code == 0, done.output
    assert done.output == sign(body, SECRET) + "\n"
    assert signature_problem(done.output.strip(), body, SECRET) is None
    piped = runner.invoke(
        main, ["sign-webhook", "--secret-env", "MY_SECRET", "-"], input=body,
        env={"MY_SECRET": f" {SECRET}\n", "WHATSAPP_APP_SECRET": "other"},
    )  # fmt: skip
    assert piped.output == done.output  # stripped, as fsm serve strips it
    missing = runner.invoke(
        main, ["sign-webhook", str(tmp_path / "body.json")], env={"WHATSAPP_APP_SECRET": ""}
    )
    assert missing.exit_code == 2
    assert "WHATSAPP_APP_SECRET is not set" in missing.output
    assert "--secret" not in {p.opts[0] for p in main.commands["sign-webhook"].params}


def test_the_fake_prints_each_kind_of_request() -> None:
    lines: list[str] = []
    echo = lambda r: lines.append(describe(r))  # noqa: E731
    with fake_graph(token="tok", phone_number_id=PHONE_NUMBER_ID, echo=echo) as graph:
        client = httpx.Client(headers={"Authorization": "Bearer tok"})
        url = f"{graph.url}/{PHONE_NUMBER_ID}/messages"
        buttons = {"type": "button", "body": {"text": "Book it?"}}
        buttons["action"] = {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}}]}
        client.post(url, json={"to": ALICE, "type": "interactive", "interactive": buttons})
        client.post(url, json={"status": "read", "message_id": "wamid.in.1"})
        client.post(f"{graph.url}/999/messages", json={"to": ALICE, "type": "text"})
        client.close()
    assert lines == [
        f"to {ALICE} (button): Book it?\n    [yes] Yes",
        "read wamid.in.1",
        "refused (400): unknown path [/v99.0/999/messages]",
    ]
    assert graph.texts(ALICE) == ["Book it?"] and len(graph.reads()) == 1
    assert isinstance(graph.requests[0], Request)
