"""Media through the served bot, for real on loopback: webhooks with Meta's media shapes, the
engine's media channel the Graph API (the fake's upload, retrieve-URL and download routes),
the reference bot's profile photo and statement. A file the user sends is fetched only when
a step asks, checked, and never stored; a file the bot sends is uploaded once, before the
save, and sent by its media id, even when the send is retried."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from flows.credex import FakeCredexApi, build_async_engine
from fsm import FakeClock
from tests.fsm.sample_flows import Receipts

from . import payloads as p
from .fake_graph import FakeGraph, error
from .proactive import Bot, served, until

ALICE, STRANGER = "263770000001", "263771234567"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(3000)


@pytest.fixture
def credex(graph: FakeGraph) -> Iterator[Bot]:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    engine = build_async_engine(AsyncMemoryStore(store), FakeCredexApi(clock=clock), clock=clock)
    with served(graph, store=store, clock=clock, engine=engine) as bot:
        yield bot


def say(bot: Bot, user: str, *texts: str) -> None:
    for text in texts:
        assert bot.message(p.body([p.text(user, text)])).status_code == 200


def photo(graph: FakeGraph, data: bytes = PNG) -> dict[str, object]:
    """An image message whose file the fake holds, announced as Meta does (sha256 included)."""
    media_id = graph.add_media(data, "image/png")
    digest = hashlib.sha256(data).hexdigest()
    return p.media(STRANGER, "image", media_id, "image/png", sha256=digest, caption="me")


def sent(graph: FakeGraph, user: str, kind: str) -> list[dict[str, object]]:
    return [r.body[kind] for r in graph.sends() if r.body.get("to") == user and kind in r.body]


def test_a_profile_photo_is_fetched_uploaded_once_and_shown_back(
    credex: Bot, graph: FakeGraph
) -> None:
    say(credex, STRANGER, "hi", "Register", "Tendai", "Moyo")
    assert credex.message(p.body([photo(graph)])).status_code == 200
    [upload] = graph.uploads
    assert upload.sha256 == hashlib.sha256(PNG).hexdigest() and upload.mime_type == "image/png"
    assert sent(graph, STRANGER, "image") == [{"id": upload.id, "caption": "Your profile photo."}]
    assert graph.texts(STRANGER)[-1].startswith("Register as *Tendai Moyo* with your photo?")
    kept = credex.store.load(STRANGER).record
    assert kept is not None and PNG[:64] not in kept.payload  # ids and metadata, not bytes


def test_a_document_at_the_photo_step_asks_again(credex: Bot, graph: FakeGraph) -> None:
    say(credex, STRANGER, "hi", "Register", "Tendai", "Moyo")
    cv = graph.add_media(b"%PDF-1.4 cv", "application/pdf", "cv.pdf")
    message = p.media(STRANGER, "document", cv, "application/pdf", filename="cv.pdf")
    assert credex.message(p.body([message])).status_code == 200
    assert graph.texts(STRANGER)[-1].startswith("Would you like a profile photo?")
    assert graph.uploads == [] and graph.media_reads == []  # nothing fetched


def test_a_photo_whose_bytes_do_not_match_fails_the_step_and_the_user_hears_it(
    credex: Bot, graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    say(credex, STRANGER, "hi", "Register", "Tendai", "Moyo")
    message = photo(graph)
    graph.corrupt_media(message["image"]["id"])  # type: ignore[index]
    with caplog.at_level(logging.WARNING):
        assert credex.message(p.body([message])).status_code == 200
    assert graph.uploads == []
    assert "something went wrong" in graph.texts(STRANGER)[-1]
    assert "media sha256" in caplog.text and graph.token not in caplog.text


def test_the_statement_is_uploaded_once_and_sent_by_id_across_a_retried_send(
    credex: Bot, graph: FakeGraph
) -> None:
    say(credex, ALICE, "hi")
    graph.plan(error(500, 131000))  # the document's first send fails: the delivery retries
    say(credex, ALICE, "My statement")
    [upload] = graph.uploads
    assert upload.mime_type == "text/plain" and upload.filename.startswith("credex-statement-")
    [document] = sent(graph, ALICE, "document")
    assert document["id"] == upload.id and document["filename"] == upload.filename
    assert str(document["caption"]).startswith("Your Credex statement: 2 settled credexes")
    assert graph.texts(ALICE)[-1].startswith("Welcome Alice")
    assert credex.metric("fsm_media_uploads_total") == 1


def test_a_location_at_a_text_only_step_gets_the_unsupported_reply(
    credex: Bot, graph: FakeGraph
) -> None:
    say(credex, ALICE, "hi")
    place = p.location(ALICE, -17.8292, 31.0522, name="Clinic")
    assert credex.message(p.body([place])).status_code == 200
    until(lambda: graph.texts(ALICE)[-1:] == ["Sorry, I can only read text and button answers."],
          "the unsupported reply")  # fmt: skip


def test_a_reply_whose_bytes_never_reached_a_channel_is_given_up_and_the_next_sent(
    graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    with served(graph, flow=Receipts()) as bot:
        bot.bot.engine.media = None  # an engine without a channel: the bytes stay in the reply
        with caplog.at_level(logging.ERROR, logger="adapters.whatsapp"):
            assert bot.message(p.body([p.text(ALICE, "hi")])).status_code == 200
        assert graph.texts(ALICE) == ["noted hi"]
        assert "cannot be sent, given up" in caplog.text
