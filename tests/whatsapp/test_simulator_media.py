"""The simulator and media: its fake Graph API keeps files as Meta does (uploads, media URLs,
downloads with the bearer token) and takes the bot's file, place, location-request and
reaction sends; the page shows them as WhatsApp does and attaches a photo, a document or a
place as a phone sends them.

On real servers on loopback: the fake Graph API over HTTP (with the bot's own Graph client);
the page in a real headless Chromium, on crafted sends (every kind) and with the Credex bot
end to end (a new number's profile photo shown back, Alice's statement as a document, a place
at a step that reads only text)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters import AsyncMemoryStore
from adapters.whatsapp.graph import GraphClient
from adapters.whatsapp.server import build_simulator_app
from adapters.whatsapp.simulator import Contact, Simulator
from adapters.whatsapp.simulator import app as simulator_app
from adapters.whatsapp.simulator.media import Files, multipart
from adapters.whatsapp.testing import serving
from flows.credex import build_async_engine
from tests.redis_servers import free_port

from .test_simulator import Sim

selenium = pytest.importorskip("selenium", reason="selenium is in the dev extra")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402

from .test_simulator_page import CHROMIUM, DRIVER, FLAGS, Page  # noqa: E402

ALICE, BOB, NEWCOMER = "263770000001", "263770000002", "263779990001"
TOKEN, NUMBER_ID = "graph-token", "100000000000001"
BEARER = {"authorization": f"Bearer {TOKEN}"}
UNSUPPORTED = "Sorry, I can only read text and button answers."
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no Chromium: scripts/dev test installs Debian's chromium and chromium-driver",
)


def png(width: int = 3, height: int = 2, colour: bytes = b"\xd0\x30\x30") -> bytes:
    """A real PNG (the browser decodes it), ``width`` x ``height`` pixels of ``colour``."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + colour * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# -- a simulator with a known token, its webhook a recorder: the page and the Graph API alone --
class Crafted:
    """The simulator beside a webhook that records what it gets (no bot): sends are crafted
    here with the bot's token."""

    def __init__(self, simulator: Simulator, url: str, received: list[dict[str, Any]]) -> None:
        self.simulator, self.url, self.received = simulator, url, received
        self.graph = httpx.Client(base_url=f"{url}/graph", headers=BEARER, timeout=10)
        self.page = httpx.Client(base_url=url, timeout=10)

    def send(self, payload: dict[str, Any], to: str = BOB) -> httpx.Response:
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}
        return self.graph.post(f"/{NUMBER_ID}/messages", json={**body, **payload})

    def upload(self, data: bytes, mime_type: str, filename: str = "file") -> str:
        form = {"messaging_product": "whatsapp", "type": mime_type}
        answer = self.graph.post(
            f"/{NUMBER_ID}/media", data=form, files={"file": (filename, data, mime_type)}
        )
        assert answer.status_code == 200, answer.text
        media_id: str = answer.json()["id"]
        return media_id

    def messages(self) -> list[dict[str, Any]]:
        """Every message the webhook received, in order."""
        return [
            m
            for body in self.received
            for entry in body["entry"]
            for change in entry["changes"]
            for m in change["value"].get("messages", [])
        ]


@pytest.fixture
def crafted() -> Iterator[Crafted]:
    port = free_port()
    received: list[dict[str, Any]] = []
    engine = build_async_engine(AsyncMemoryStore())
    simulator = Simulator(
        engine,
        webhook_url=f"http://127.0.0.1:{port}/webhook",
        app_secret="app-secret",
        access_token=TOKEN,
        phone_number_id=NUMBER_ID,
        contacts=[Contact(BOB, "Bob Dube")],
        hosts=None,
    )

    async def webhook(request: Request) -> Response:
        received.append(msgspec.json.decode(await request.body()))
        return Response(status_code=200)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await simulator.aclose()

    routes = [*simulator.routes(), Route("/webhook", webhook, methods=["POST"])]
    with serving(Starlette(routes=routes, lifespan=lifespan), port) as url:
        served = Crafted(simulator, url, received)
        yield served
        served.graph.close()
        served.page.close()


# -- the fake Graph API's media, over HTTP -----------------------------------------------------
def test_an_upload_is_kept_and_served_as_meta_serves_media(crafted: Crafted) -> None:
    data = png()
    media_id = crafted.upload(data, "image/png", "photo.png")
    assert media_id.isdigit() and len(media_id) == 16  # a long number, as Meta's

    info = crafted.graph.get(f"/{media_id}")
    assert info.status_code == 200
    found = info.json()
    assert found.keys() == {"messaging_product", "url", "mime_type", "sha256", "file_size", "id"}
    assert found["mime_type"] == "image/png" and found["id"] == media_id
    assert found["sha256"] == hashlib.sha256(data).hexdigest()
    assert found["file_size"] == str(len(data))  # a string, as Meta sends it
    assert found["url"].startswith(f"{crafted.url}/media-bytes/{media_id}?")

    bytes_ = httpx.get(found["url"], headers=BEARER)
    assert bytes_.status_code == 200 and bytes_.content == data
    assert bytes_.headers["content-type"] == "image/png"
    assert httpx.get(found["url"]).status_code == 401  # the bearer token, as Meta's host wants
    forged = found["url"].replace("sig=", "sig=0")
    assert httpx.get(forged, headers=BEARER).status_code == 404
    assert crafted.graph.get("/1234567890123456").json()["error"]["code"] == 100


def test_a_download_url_expires() -> None:
    files = Files(lifetime=300)
    kept = files.add(b"abc", "text/plain", origin="bot")
    url = files.download_url("http://sim", kept.id, now=1000.0)
    query = dict(part.split("=") for part in url.split("?")[1].split("&"))
    assert files.valid(kept.id, query["expires"], query["sig"], now=1299.0)
    assert not files.valid(kept.id, query["expires"], query["sig"], now=1301.0)
    assert not files.valid("other", query["expires"], query["sig"], now=1000.0)
    assert "abc" not in repr(kept) and "text/plain" in repr(kept)  # no content in a repr


def test_the_files_kept_are_bounded_oldest_dropped_first() -> None:
    files = Files(kept_bytes=10)
    first = files.add(b"123456", "text/plain", origin="user")
    second = files.add(b"7890", "text/plain", origin="user")
    third = files.add(b"ab", "text/plain", origin="user")
    assert files.get(first.id) is None
    assert files.get(second.id) is not None and files.get(third.id) is not None


def test_the_bots_own_graph_client_uploads_and_downloads(crafted: Crafted) -> None:
    """What the served bot's media channel does (adapters.whatsapp.media.GraphMedia on the
    bot's GraphClient) works against the simulator: an upload by multipart, then the lookup
    and the download by the URL it tells, with the sha256 checked."""
    from adapters.whatsapp.media import GraphMedia
    from fsm.attachments import InboundMedia
    from fsm.media_replies import OutboundMedia

    data = b"date,amount\r\n2026-12-01,+20.00 USD\r\n--\r\n" + bytes(range(256))
    digest = hashlib.sha256(data).hexdigest()

    async def round_trip() -> tuple[str, bytes]:
        api = f"{crafted.url}/graph"
        client = GraphClient(access_token=TOKEN, phone_number_id=NUMBER_ID, api_url=api)
        try:
            media = GraphMedia(client)
            sent = OutboundMedia("document", data=data, mime_type="text/plain", filename="s.csv")
            media_id = await media.upload(sent)
            back = InboundMedia("document", media_id, "text/plain", digest)
            return media_id, await media.download(back)
        finally:
            await client.aclose()

    media_id, fetched = asyncio.run(round_trip())
    assert fetched == data
    kept = crafted.simulator.files.get(media_id)
    assert kept is not None and kept.data == data and kept.filename == "s.csv"
    assert (kept.origin, kept.mime_type) == ("bot", "text/plain")


@pytest.mark.parametrize(
    ("headers", "form", "code"),
    [
        ({"authorization": "Bearer guess"}, {"messaging_product": "whatsapp", "type": "a/b"}, 190),
        (BEARER, {"type": "image/png"}, 100),  # no messaging_product
        (BEARER, {"messaging_product": "whatsapp"}, 100),  # no type
    ],
)
def test_an_upload_meta_would_refuse_is_refused(
    crafted: Crafted, headers: dict[str, str], form: dict[str, str], code: int
) -> None:
    answer = httpx.post(
        f"{crafted.url}/graph/{NUMBER_ID}/media",
        headers=headers,
        data=form,
        files={"file": ("a.png", png(), "image/png")},
    )
    assert answer.status_code in (400, 401) and answer.json()["error"]["code"] == code
    json_body = httpx.post(f"{crafted.url}/graph/{NUMBER_ID}/media", headers=BEARER, json={})
    assert json_body.status_code == 400  # not multipart


def test_multipart_keeps_the_bytes_exactly() -> None:
    data = b"\r\n--notit\r\n\r\n\x00\xff"
    request = httpx.Request(
        "POST", "http://x/", data={"type": "image/png"}, files={"file": ('a "b".png', data)}
    )
    request.read()
    parts = multipart(request.headers["content-type"], request.content)
    assert parts is not None and parts["file"].data == data and parts["type"].data == b"image/png"
    assert parts["file"].filename.endswith(".png")
    assert multipart("multipart/form-data; boundary=x", b"--x\r\nbroken") is None
    assert multipart("application/json", b"{}") is None


def test_the_bots_sends_of_files_places_requests_and_reactions(crafted: Crafted) -> None:
    photo = crafted.upload(png(), "image/png", "p.png")
    sends: list[dict[str, Any]] = [
        {"type": "image", "image": {"id": photo, "caption": "Your profile photo."}},
        {"type": "document", "document": {"link": "https://files.example/s.pdf", "filename": "s"}},
        {"type": "location", "location": {"latitude": -17.8, "longitude": 31.0, "name": "HQ"}},
        {
            "type": "interactive",
            "interactive": {
                "type": "location_request_message",
                "body": {"text": "Where shall we deliver?"},
                "action": {"name": "send_location"},
            },
        },
        {"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "\U0001f44d"}},
    ]
    for payload in sends:
        answer = crafted.send(payload)
        assert answer.status_code == 200, answer.text
        assert answer.json()["messages"][0]["id"].startswith("wamid.")
    events = crafted.simulator.hub.log(BOB)
    assert [e["payload"]["type"] for e in events] == [p["type"] for p in sends]
    held = events[0]["media"]
    assert held == {
        "id": photo,
        "url": f"/api/media/{photo}",
        "mime_type": "image/png",
        "filename": "p.png",
        "size": len(png()),
    }
    assert "media" not in events[1]  # by link: the simulator holds nothing


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"type": "image", "image": {"id": "1234567890123456"}}, "image.id: no media"),
        ({"type": "image", "image": {}}, "one of id and link"),
        ({"type": "video", "video": {"link": "ftp://x/v.mp4"}}, "video.link"),
        ({"type": "audio", "audio": {"link": "https://x/a.ogg", "caption": "hi"}}, "no caption"),
        ({"type": "location", "location": {"latitude": 91, "longitude": 0}}, "latitude"),
        ({"type": "location", "location": {"latitude": 1, "longitude": "2"}}, "longitude"),
        (
            {
                "type": "interactive",
                "interactive": {"type": "location_request_message", "body": {"text": "Where?"}},
            },
            "send_location",
        ),
        ({"type": "reaction", "reaction": {"emoji": "x"}}, "reaction.message_id"),
    ],
)
def test_a_send_meta_would_refuse_is_refused_and_the_chat_says_so(
    crafted: Crafted, payload: dict[str, Any], problem: str
) -> None:
    answer = crafted.send(payload)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == 100 and problem in answer.json()["error"]["message"]
    (event,) = crafted.simulator.hub.log(BOB)
    assert (event["kind"], event["code"], event["type"]) == ("refused", 100, payload["type"])


# -- the page's attachments, over HTTP ---------------------------------------------------------
def attach(crafted: Crafted, data: bytes, mime_type: str, filename: str = "") -> dict[str, Any]:
    form = {"data": base64.b64encode(data).decode(), "mime_type": mime_type, "filename": filename}
    answer = crafted.page.post("/api/upload", json=form)
    assert answer.status_code == 200, answer.text
    kept: dict[str, Any] = answer.json()
    return kept


def test_a_file_attached_reaches_the_webhook_as_meta_announces_it(crafted: Crafted) -> None:
    data = b"%PDF-1.4\n" + bytes(300)
    kept = attach(crafted, data, "application/pdf", "C:\\fakepath\\id card.pdf")
    assert kept["filename"] == "id card.pdf" and kept["size"] == len(data)
    said = crafted.page.post(
        "/api/say",
        json={"user": BOB, "media": {"id": kept["id"], "kind": "document", "caption": "my ID"}},
    )
    assert said.status_code == 200, said.text
    (message,) = crafted.messages()
    assert message["type"] == "document" and message["id"] == said.json()["id"]
    assert message["document"] == {
        "id": kept["id"],
        "mime_type": "application/pdf",
        "sha256": hashlib.sha256(data).hexdigest(),
        "caption": "my ID",
        "filename": "id card.pdf",
    }
    # ... and the bot can fetch it by that id, as from Meta
    url = crafted.graph.get(f"/{kept['id']}").json()["url"]
    assert httpx.get(url, headers=BEARER).content == data
    shown = crafted.simulator.hub.log(BOB)[0]
    assert (shown["kind"], shown["text"], shown["media"]["kind"]) == ("user", "my ID", "document")


def test_a_place_reaches_the_webhook_as_meta_sends_it(crafted: Crafted) -> None:
    place = {"latitude": -17.8292, "longitude": 31.0522, "name": "Africa Unity Square"}
    said = crafted.page.post("/api/say", json={"user": BOB, "location": place})
    assert said.status_code == 200, said.text
    (message,) = crafted.messages()
    assert (message["type"], message["location"]) == ("location", place)


@pytest.mark.parametrize(
    ("form", "problem"),
    [
        ({"media": {"id": "1234567890123456", "kind": "image"}}, "media.id"),
        ({"media": "x"}, "media must be"),
        ({"location": {"latitude": 100, "longitude": 0}}, "latitude within"),
        ({"location": {"latitude": True, "longitude": 0}}, "latitude within"),
        ({"location": {"latitude": 1, "longitude": 1, "name": 5}}, "name and address"),
    ],
)
def test_a_bad_attachment_is_a_400_that_says_why(
    crafted: Crafted, form: dict[str, Any], problem: str
) -> None:
    answer = crafted.page.post("/api/say", json={"user": BOB, **form})
    assert answer.status_code == 400 and problem in answer.json()["error"]
    assert not crafted.received


def test_the_page_gets_a_file_safely(crafted: Crafted, monkeypatch: pytest.MonkeyPatch) -> None:
    image = attach(crafted, png(), "image/png", "p.png")
    shown = crafted.page.get(image["url"])
    assert shown.content == png() and shown.headers["content-type"] == "image/png"
    assert shown.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in shown.headers["content-security-policy"]
    assert "content-disposition" not in shown.headers  # shown inline, in an <img>
    page = attach(crafted, b"<script>alert(1)</script>", "text/html", "x.html")
    served = crafted.page.get(page["url"])
    assert served.headers["content-disposition"] == "attachment; filename*=UTF-8''x.html"
    assert (
        "attachment"
        in crafted.page.get(image["url"] + "?download=1").headers["content-disposition"]
    )
    assert crafted.page.get("/api/media/1234567890123456").status_code == 404
    bad = crafted.page.post("/api/upload", json={"data": "not base64!", "mime_type": "a/b"})
    assert bad.status_code == 400 and "base64" in bad.json()["error"]
    raw = msgspec.json.encode({"data": "AAAA", "mime_type": "a/b"})
    assert crafted.page.post("/api/upload", content=raw).status_code == 415  # not JSON
    monkeypatch.setattr(simulator_app, "_MAX_UPLOAD", 100)
    large = crafted.page.post("/api/upload", json={"data": "A" * 200, "mime_type": "a/b"})
    assert large.status_code == 413


# -- the page in Chromium ----------------------------------------------------------------------
@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    service = Service(str(DRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(page: Page, url: str, title: str = "Credex") -> None:
    page.driver.get(url)
    page.until("the page", lambda d: d.find_element(By.ID, "bot-name").text == title)


def decoded(page: Page, image: WebElement) -> bool:
    """Whether the browser loaded and decoded ``image`` (a broken one has no width)."""
    script = "return arguments[0].complete && arguments[0].naturalWidth"
    return bool(page.until("the image", lambda d: d.execute_script(script, image)))


def fetched(page: Page, url: str) -> bytes:
    """What the page's own origin serves at ``url`` (as the browser would get it)."""
    script = """
      const done = arguments[arguments.length - 1];
      fetch(arguments[0]).then((r) => r.arrayBuffer()).then((b) => {
        const bytes = new Uint8Array(b); let s = "";
        for (const x of bytes) s += String.fromCharCode(x);
        done(btoa(s));
      });"""
    return base64.b64decode(page.driver.execute_async_script(script, url))


def attach_in_page(page: Page, path: Path, caption: str = "", *, document: bool = False) -> None:
    page.driver.find_element(By.ID, "attach").click()
    page.until(
        "the attach sheet", lambda d: d.find_element(By.ID, "attach-backdrop").is_displayed()
    )
    chooser = "attach-document" if document else "attach-photo"
    page.driver.find_element(By.ID, chooser).send_keys(str(path))
    if caption:
        page.driver.find_element(By.ID, "attach-caption").send_keys(caption)
    page.until("a file chosen", lambda d: d.find_element(By.ID, "attach-send").is_enabled())
    page.driver.find_element(By.ID, "attach-send").click()


def send_demo_place(page: Page) -> None:
    page.driver.find_element(By.ID, "attach").click()
    page.driver.find_element(By.ID, "attach-demo").click()
    page.driver.find_element(By.ID, "attach-send-location").click()


def user_messages(page: Page) -> list[WebElement]:
    return page.driver.find_elements(By.CSS_SELECTOR, ".msg.user")


def shot_on_failure(page: Page) -> None:
    failed = page.shot("failure")
    print(f"screenshots of every step: {page.shots} (the failure: {failed.name})")


@needs_chromium
def test_the_page_shows_each_kind_of_send(
    crafted: Crafted, browser: WebDriver, tmp_path: Path
) -> None:
    page = Page(browser, tmp_path / "screens")
    try:
        show_each_kind(crafted, page)
    except Exception:
        shot_on_failure(page)
        raise


def show_each_kind(crafted: Crafted, page: Page) -> None:
    open_page(page, crafted.url)
    page.type("hi")  # the webhook only records it: the chat shows it, with its wamid
    page.until("the user's message", lambda d: len(user_messages(page)) == 1)
    user_wamid = user_messages(page)[0].get_attribute("data-id")
    photo, sticker = png(4, 4), b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(40)
    photo_id = crafted.upload(photo, "image/png", "p.png")
    csv = b"date,amount,counterparty\r\n" * 40
    for payload in (
        {"type": "image", "image": {"id": photo_id, "caption": "Your *profile* photo."}},
        {"type": "document", "document": {"id": crafted.upload(csv, "text/plain", "s.csv"),
                                          "filename": "statement.csv", "caption": "Yours"}},
        {"type": "audio", "audio": {"id": crafted.upload(b"OggS" + bytes(90), "audio/ogg")}},
        {"type": "video", "video": {"link": "https://files.example/clip.mp4"}},
        {"type": "sticker", "sticker": {"id": crafted.upload(sticker, "image/webp")}},
        {"type": "location", "location": {"latitude": -17.8292, "longitude": 31.0522,
                                          "name": "Credex office", "address": "Harare"}},
        {"type": "interactive", "interactive": {"type": "location_request_message",
                                                "body": {"text": "Where are you?"},
                                                "action": {"name": "send_location"}}},
        {"type": "reaction", "reaction": {"message_id": user_wamid, "emoji": "\U0001f44d"}},
        {"type": "reaction", "reaction": {"message_id": "wamid.gone", "emoji": "\u2764"}},
    ):  # fmt: skip
        assert crafted.send(payload).status_code == 200
    asked = page.wait_bot("Where are you?")
    page.until("every send", lambda d: d.find_elements(By.CSS_SELECTOR, ".reaction-note"))
    page.shot("every-kind")

    image = page.wait_bot("Your profile photo.").find_element(By.CSS_SELECTOR, "img.photo")
    assert decoded(page, image)
    assert fetched(page, image.get_attribute("src") or "") == photo
    bold = page.wait_bot("Your profile photo.").find_element(By.CSS_SELECTOR, ".caption b")
    assert bold.text == "profile"  # a caption takes WhatsApp's formatting

    chip = page.wait_bot("statement.csv").find_element(By.CSS_SELECTOR, "a.file-chip")
    assert chip.find_element(By.CSS_SELECTOR, ".file-size").text == "1 KB · CSV"
    assert chip.get_attribute("download") == "statement.csv"
    assert fetched(page, chip.get_attribute("href") or "") == csv
    bots = page.bot_messages()
    assert bots[2].find_elements(By.CSS_SELECTOR, "audio.player")
    link = bots[3].find_element(By.CSS_SELECTOR, ".file-chip")
    assert link.get_attribute("href") == "https://files.example/clip.mp4"  # not fetched
    assert "by link · MP4" in link.text and not bots[3].find_elements(By.TAG_NAME, "video")
    assert "sticker-msg" in (bots[4].get_attribute("class") or "")
    shown_sticker = bots[4].find_element(By.CSS_SELECTOR, "img.sticker")
    assert fetched(page, shown_sticker.get_attribute("src") or "") == sticker
    card = page.wait_bot("Credex office").find_element(By.CSS_SELECTOR, ".place")
    assert card.find_element(By.CSS_SELECTOR, ".place-address").text == "Harare"
    assert card.find_element(By.CSS_SELECTOR, ".place-coords").text == "-17.82920, 31.05220"

    reacted = user_messages(page)[0].find_element(By.CSS_SELECTOR, ".reaction")
    assert reacted.text == "\U0001f44d"
    note = page.driver.find_element(By.CSS_SELECTOR, ".reaction-note").text
    assert note == "The bot reacted \u2764 to a message not in this chat"

    asked.find_element(By.CSS_SELECTOR, "button.location-request").click()
    page.until("the place form", lambda d: d.find_element(By.ID, "attach-backdrop").is_displayed())
    assert page.driver.find_element(By.ID, "attach-latitude").get_attribute("value") == "-17.8292"
    page.driver.find_element(By.ID, "attach-send-location").click()
    page.until("the place sent", lambda d: len(crafted.messages()) == 2)
    place = crafted.messages()[1]["location"]
    assert place == {
        "latitude": -17.8292,
        "longitude": 31.0522,
        "name": "Africa Unity Square",
        "address": "Harare, Zimbabwe",
    }
    page.until("the user's place", lambda d: "Africa Unity Square" in user_messages(page)[-1].text)
    page.shot("place-sent")

    crafted.send({"type": "document", "document": {"id": "1234567890123456"}})
    page.until("the refusal", lambda d: "no media uploaded" in d.find_element(By.ID, "chat").text)


@needs_chromium
def test_the_page_attaches_a_photo_and_a_document(
    crafted: Crafted, browser: WebDriver, tmp_path: Path
) -> None:
    page = Page(browser, tmp_path / "screens")
    photo, scan = tmp_path / "me.png", tmp_path / "id card.pdf"
    photo.write_bytes(png(5, 5))
    scan.write_bytes(b"%PDF-1.4\n" + bytes(2000))
    try:
        open_page(page, crafted.url)
        attach_in_page(page, photo, "me in Harare")
        page.until("the photo sent", lambda d: len(crafted.messages()) == 1)
        sent = crafted.messages()[0]
        assert sent["type"] == "image" and sent["image"]["caption"] == "me in Harare"
        assert sent["image"]["mime_type"] == "image/png"
        assert sent["image"]["sha256"] == hashlib.sha256(png(5, 5)).hexdigest()
        url = crafted.graph.get(f"/{sent['image']['id']}").json()["url"]
        assert httpx.get(url, headers=BEARER).content == png(5, 5)  # the bot can fetch it
        shown = page.until(
            "the photo shown", lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.user img.photo")
        )
        assert decoded(page, shown[0])
        assert "me in Harare" in user_messages(page)[0].text

        attach_in_page(page, scan, document=True)
        page.until("the document sent", lambda d: len(crafted.messages()) == 2)
        document = crafted.messages()[1]["document"]
        assert document["filename"] == "id card.pdf" and "caption" not in document
        chip = page.until(
            "its chip", lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.user .file-chip")
        )[0]
        assert "id card.pdf" in chip.text and "2 KB · PDF" in chip.text
        page.shot("attached")
    except Exception:
        shot_on_failure(page)
        raise


# -- the Credex bot through the simulator ------------------------------------------------------
@pytest.fixture
def credex() -> Iterator[str]:
    port = free_port()
    app = build_simulator_app(
        lambda store: build_async_engine(store),
        AsyncMemoryStore(),
        host="127.0.0.1",
        port=port,
        contacts=[Contact(ALICE, "Alice Moyo"), Contact(NEWCOMER, "New number")],
    )
    with serving(app, port) as url:
        yield url


def bot_sends(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "bot" and e["payload"]["type"] == kind]


def test_the_credex_bot_shows_a_photo_back_over_http(credex: str) -> None:
    """A new number's profile photo, attached at the registration's photo step: the bot
    fetches it from the simulator and sends it back as its own upload, the same bytes."""
    sim = Sim(credex)
    try:
        for text in ("hi", "Register", "Anna", "Banda"):
            assert sim.say(NEWCOMER, text=text).json()["status"] == 200
        assert sim.session(NEWCOMER)["session"]["step"] == "photo"
        data = png(6, 6)
        form = {"data": base64.b64encode(data).decode(), "mime_type": "image/png"}
        kept = sim.http.post("/api/upload", json=form).json()
        said = sim.say(NEWCOMER, media={"id": kept["id"], "kind": "image", "caption": "me"})
        assert said.json()["status"] == 200
        events = sim.events(NEWCOMER, lambda found: bool(bot_sends(found, "image")))
        (image,) = bot_sends(events, "image")
        assert image["payload"]["image"]["caption"] == "Your profile photo."
        assert image["media"]["id"] != kept["id"]  # uploaded again, by the bot
        assert sim.http.get(image["media"]["url"]).content == data
        assert sim.session(NEWCOMER)["session"]["step"] == "confirm"
    finally:
        sim.http.close()


def test_the_credex_statement_and_a_place_over_http(credex: str) -> None:
    sim = Sim(credex)
    try:
        assert sim.say(ALICE, text="hi").json()["status"] == 200
        tapped = {"kind": "list_reply", "id": "statement", "title": "My statement"}
        assert sim.say(ALICE, reply=tapped).json()["status"] == 200
        events = sim.events(ALICE, lambda found: bool(bot_sends(found, "document")))
        (document,) = bot_sends(events, "document")
        name = document["payload"]["document"]["filename"]
        assert re.fullmatch(r"credex-statement-\d{4}-\d{2}-\d{2}\.csv", name)
        statement = sim.http.get(document["media"]["url"]).content
        assert statement.startswith(b"date,amount,counterparty\r\n")
        assert document["media"]["size"] == len(statement)

        place = {"latitude": -17.8292, "longitude": 31.0522}
        assert sim.say(ALICE, location=place).json()["status"] == 200

        def unsupported(found: list[dict[str, Any]]) -> bool:
            texts = bot_sends(found, "text")
            return any(e["payload"]["text"]["body"] == UNSUPPORTED for e in texts)

        sim.events(ALICE, unsupported)
    finally:
        sim.http.close()


@needs_chromium
def test_the_credex_bot_with_media_in_the_browser(
    credex: str, browser: WebDriver, tmp_path: Path
) -> None:
    """Register a new number and attach a photo at the photo step: the bot's image comes back,
    the same bytes; then, as Alice, ask for *My statement*: a document chip with its name
    and size; then send a place at the menu, which reads only text: the unsupported reply."""
    page = Page(browser, tmp_path / "screens")
    photo = tmp_path / "me.png"
    photo.write_bytes(png(6, 6, b"\x20\x80\x20"))
    try:
        photo_shown_back(page, credex, photo)
        statement_and_place(page)
    except Exception:
        shot_on_failure(page)
        raise


def photo_shown_back(page: Page, url: str, photo: Path) -> None:
    open_page(page, url)
    select = page.driver.find_element(By.ID, "contact")
    select.find_element(By.CSS_SELECTOR, f'option[value="{NEWCOMER}"]').click()
    page.until(
        "the new number's chat", lambda d: "New number" in d.find_element(By.ID, "bot-status").text
    )
    page.type("hi")
    welcome = page.wait_bot("Would you like to register?")
    welcome.find_element(By.CSS_SELECTOR, '.buttons button[data-id="register"]').click()
    page.wait_bot("What is your first name?")
    page.type("Anna")
    page.wait_bot("What is your last name?")
    page.type("Banda")
    page.wait_bot("Would you like a profile photo?")
    page.shot("photo-step")

    attach_in_page(page, photo, "me")
    shown = page.wait_bot("Your profile photo.")
    image = shown.find_element(By.CSS_SELECTOR, "img.photo")
    assert decoded(page, image)
    assert fetched(page, image.get_attribute("src") or "") == photo.read_bytes()
    mine = page.driver.find_element(By.CSS_SELECTOR, ".msg.user img.photo")
    assert mine.get_attribute("src") != image.get_attribute("src")  # the bot's own upload
    page.wait_bot("Register as Anna Banda with your photo?")
    page.shot("photo-shown-back")


def statement_and_place(page: Page) -> None:
    select = page.driver.find_element(By.ID, "contact")
    select.find_element(By.CSS_SELECTOR, f'option[value="{ALICE}"]').click()
    page.until("Alice's chat", lambda d: "Alice" in d.find_element(By.ID, "bot-status").text)
    page.type("hi")
    menu = page.wait_bot("Welcome Alice (@alice)")
    menu.find_element(By.CSS_SELECTOR, ".list-open").click()
    page.until("the list", lambda d: d.find_element(By.ID, "sheet-backdrop").is_displayed())
    page.driver.find_element(By.CSS_SELECTOR, '.row-option[data-id="statement"]').click()
    page.driver.find_element(By.ID, "sheet-send").click()
    sent = page.wait_bot("Your Credex statement:")
    chip = sent.find_element(By.CSS_SELECTOR, "a.file-chip")
    name = chip.find_element(By.CSS_SELECTOR, ".file-name").text
    assert re.fullmatch(r"credex-statement-\d{4}-\d{2}-\d{2}\.csv", name), name
    size = chip.find_element(By.CSS_SELECTOR, ".file-size").text
    assert re.fullmatch(r"\d+ B · CSV", size), size
    statement = fetched(page, chip.get_attribute("href") or "")
    assert statement.startswith(b"date,amount,counterparty\r\n")
    assert size == f"{len(statement)} B · CSV"
    page.shot("statement")

    send_demo_place(page)
    page.wait_bot(UNSUPPORTED)
    assert "Africa Unity Square" in user_messages(page)[-1].text
    page.shot("place-unsupported")
