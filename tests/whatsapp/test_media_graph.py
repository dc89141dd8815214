"""WhatsApp media through the Graph API (adapters.whatsapp.media.GraphMedia and the media calls
of GraphClient), against the fake Graph API on a loopback socket: downloads checked for size,
mime type and sha256, expired URLs, an unreachable API, uploads once per process, no secret in
an error."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import traceback
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import pytest

from adapters.whatsapp.graph import (
    GraphClient,
    GraphError,
    GraphRefused,
    MediaExpired,
    MediaTooLarge,
)
from adapters.whatsapp.media import WHATSAPP_MIME_TYPES, GraphMedia, same_digest
from fsm.attachments import InboundMedia
from fsm.media import MediaError
from fsm.media_replies import OutboundMedia, make_media

from .fake_graph import PHONE_NUMBER_ID, TOKEN, Answer, FakeGraph, error

T = TypeVar("T")

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8 + b"\r\n--x\r\n\x00"


def run(api_url: str, job: Callable[[GraphClient], Awaitable[T]]) -> T:
    """Run ``job`` with a GraphClient on ``api_url``, closed afterwards."""

    async def main() -> T:
        client = GraphClient(
            access_token=TOKEN, phone_number_id=PHONE_NUMBER_ID, api_url=api_url, read_timeout=2
        )
        try:
            return await job(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def download(graph: FakeGraph, media: InboundMedia, **options: int) -> bytes:
    return run(graph.url, lambda client: GraphMedia(client, **options).download(media))


def failed(graph: FakeGraph, media: InboundMedia, **options: int) -> MediaError:
    """The MediaError a download of ``media`` raises (checked to hold no secret)."""
    with pytest.raises(MediaError) as caught:
        download(graph, media, **options)
    assert_no_secret(caught.value)
    return caught.value


def assert_no_secret(exc: BaseException) -> None:
    shown = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
    for secret in (TOKEN, "media-bytes", "sig="):
        assert secret not in shown


def image(media_id: str, data: bytes = PNG, **fields: str) -> InboundMedia:
    sha256 = hashlib.sha256(data).hexdigest()
    return InboundMedia(
        "image", media_id, **({"mime_type": "image/png", "sha256": sha256} | fields)
    )


def downloads(graph: FakeGraph) -> int:
    """How many requests reached a download URL."""
    return sum(1 for r in graph.media_reads if r.path.startswith("/media-bytes/"))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- download -------------------------------------------------------------------------------
def test_a_download_returns_the_checked_bytes(graph: FakeGraph) -> None:
    media_id = graph.add_media(PNG, "image/png")
    assert download(graph, image(media_id)) == PNG
    info, fetched = graph.media_reads
    assert info.path == f"/v99.0/{media_id}"
    assert fetched.path.startswith(f"/media-bytes/{media_id}?sig=")
    assert fetched.authorization == f"Bearer {TOKEN}"  # Meta's media host wants the token
    assert graph.requests == []  # no message was sent


DIGEST = hashlib.sha256(PNG).digest()
ENCODINGS = {
    "hex": DIGEST.hex(),
    "HEX": DIGEST.hex().upper(),
    "base64": base64.b64encode(DIGEST).decode(),
    "base64url": base64.urlsafe_b64encode(DIGEST).decode().rstrip("="),
}


@pytest.mark.parametrize("form", sorted(ENCODINGS))
def test_the_sha256_is_taken_hex_or_base64_from_the_webhook_and_the_api(
    graph: FakeGraph, form: str
) -> None:
    media_id = graph.add_media(PNG, "image/png")
    graph.misannounce(media_id, sha256=ENCODINGS[form])
    assert download(graph, image(media_id, sha256=ENCODINGS[form])) == PNG


def test_a_file_size_given_as_a_number_is_read(graph: FakeGraph) -> None:
    media_id = graph.add_media(PNG, "image/png")
    graph.misannounce(media_id, file_size=len(PNG))
    assert run(graph.url, lambda client: client.media_info(media_id)).file_size == len(PNG)


def test_a_voice_note_s_mime_parameters_are_ignored(graph: FakeGraph) -> None:
    voice = b"OggS" + bytes(500)
    media_id = graph.add_media(voice, "audio/ogg; codecs=opus")
    media = InboundMedia("audio", media_id, mime_type="audio/ogg; codecs=opus", voice=True)
    assert download(graph, media) == voice


def test_a_file_announced_too_large_is_not_fetched(graph: FakeGraph) -> None:
    media_id = graph.add_media(PNG, "image/png")
    error = failed(graph, image(media_id), max_bytes=len(PNG) - 1)
    assert error.reason == "too_large"
    assert downloads(graph) == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_file_larger_than_announced_is_cut_at_the_cap(graph: FakeGraph, chunked: bool) -> None:
    big = bytes(range(256)) * 4096  # 1 MB
    media_id = graph.add_media(big, "image/png")
    graph.misannounce(media_id, file_size="1000")
    graph.media_chunked = chunked
    error = failed(graph, image(media_id, big), max_bytes=64 * 1024)
    assert error.reason == "too_large"
    assert downloads(graph) == 1


def test_fetch_media_stops_past_the_cap(graph: FakeGraph) -> None:
    media_id = graph.add_media(bytes(300_000), "image/png")
    graph.media_chunked = True  # no Content-Length: the cap counts the bytes as they come

    async def fetch(client: GraphClient) -> bytes:
        info = await client.media_info(media_id)
        return await client.fetch_media(info.url, 100_000)

    with pytest.raises(MediaTooLarge):
        run(graph.url, fetch)
    assert run(graph.url, lambda c: c.media_info(media_id)).file_size == 300_000


def test_a_mime_type_not_taken_is_refused_before_any_request(graph: FakeGraph) -> None:
    media_id = graph.add_media(b"MZ\x90\x00", "application/x-msdownload")
    media = InboundMedia("document", media_id, mime_type="application/x-msdownload")
    assert failed(graph, media).reason == "mime"
    assert graph.media_reads == []


def test_a_mime_type_not_taken_by_the_api_s_account_is_refused_before_the_bytes(
    graph: FakeGraph,
) -> None:
    media_id = graph.add_media(PNG, "image/png")
    graph.misannounce(media_id, mime_type="text/html")
    assert failed(graph, image(media_id, mime_type="")).reason == "mime"
    assert downloads(graph) == 0


def test_an_allow_list_of_its_own(graph: FakeGraph) -> None:
    media_id = graph.add_media(PNG, "image/png")
    media = image(media_id)
    only_pdf = frozenset({"application/pdf"})
    with pytest.raises(MediaError, match="mime"):
        run(graph.url, lambda client: GraphMedia(client, allowed=only_pdf).download(media))
    assert "image/png" in WHATSAPP_MIME_TYPES and "application/pdf" in WHATSAPP_MIME_TYPES


def test_bytes_that_do_not_match_the_announced_sha256_are_refused(graph: FakeGraph) -> None:
    media_id = graph.add_media(PNG, "image/png")
    graph.corrupt_media(media_id)
    assert failed(graph, image(media_id)).reason == "sha256"
    assert failed(graph, image(media_id, sha256="")).reason == "sha256"  # the API's sha256


def test_a_webhook_sha256_of_other_bytes_is_refused(graph: FakeGraph) -> None:
    media_id = graph.add_media(PNG, "image/png")
    other = hashlib.sha256(b"other").hexdigest()
    assert failed(graph, image(media_id, sha256=other)).reason == "sha256"
    assert failed(graph, image(media_id, sha256="not a digest")).reason == "sha256"


def test_an_expired_url_is_expired(graph: FakeGraph) -> None:
    media_id = graph.add_media(PNG, "image/png")
    graph.media_url_ttl = 0.0
    assert failed(graph, image(media_id)).reason == "expired"


def test_expired_urls_answer_404_and_a_new_url_works(graph: FakeGraph) -> None:
    media_id = graph.add_media(PNG, "image/png")

    async def fetch(client: GraphClient) -> bytes:
        old = await client.media_info(media_id)
        graph.expire_media_urls()
        with pytest.raises(MediaExpired) as caught:
            await client.fetch_media(old.url, 10_000)
        assert caught.value.status == 404
        assert_no_secret(caught.value)
        new = await client.media_info(media_id)
        return await client.fetch_media(new.url, 10_000)

    assert run(graph.url, fetch) == PNG


def test_the_download_url_wants_the_bearer_token(graph: FakeGraph) -> None:
    media_id = graph.add_media(PNG, "image/png")
    url = run(graph.url, lambda client: client.media_info(media_id)).url
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).content == PNG


def test_the_token_goes_to_no_plain_http_url_off_the_api_s_host(graph: FakeGraph) -> None:
    foreign = "http://127.0.0.2:9/m?sig=s"  # nothing listens there: refused before any request
    with pytest.raises(GraphRefused) as caught:
        run(graph.url, lambda client: client.fetch_media(foreign, 10))
    assert_no_secret(caught.value)


def test_an_unreachable_api_is_unavailable(graph: FakeGraph) -> None:
    media = image(graph.add_media(PNG, "image/png"))
    api_url = f"http://127.0.0.1:{closed_port()}/v99.0"
    with pytest.raises(MediaError) as caught:
        run(api_url, lambda client: GraphMedia(client).download(media))
    assert caught.value.reason == "unavailable"
    assert_no_secret(caught.value)


def test_refusals_of_the_api_are_unavailable(graph: FakeGraph) -> None:
    media_id = graph.add_media(PNG, "image/png")
    graph.plan_media(error(500, 2))
    assert failed(graph, image(media_id)).reason == "unavailable"
    graph.plan_media(Answer(), error(503, 2))  # the URL lookup works, the download does not
    assert failed(graph, image(media_id)).reason == "unavailable"
    assert failed(graph, image("4242")).reason == "unavailable"  # an unknown media id
    before = len(graph.media_reads)
    for bad in ("", "../me", "1?fields=x", "1/messages"):
        assert failed(graph, image(bad)).reason == "unavailable"  # refused before a request
    assert len(graph.media_reads) == before
    assert download(graph, image(media_id)) == PNG


# -- upload ---------------------------------------------------------------------------------
def test_an_upload_stores_the_bytes_and_answers_their_id(graph: FakeGraph) -> None:
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 20
    media = make_media("document", pdf, filename="statement.pdf")
    media_id = run(graph.url, lambda client: GraphMedia(client).upload(media))
    (upload,) = graph.uploads
    assert (upload.id, upload.mime_type, upload.filename) == (
        media_id,
        "application/pdf",
        "statement.pdf",
    )
    assert (upload.size, upload.sha256) == (len(pdf), hashlib.sha256(pdf).hexdigest())
    assert graph.media[media_id].data == pdf
    assert graph.requests == []  # an upload is not a send
    back = InboundMedia("document", media_id, mime_type="application/pdf", sha256=media.sha256)
    assert download(graph, back) == pdf


def test_the_same_bytes_are_uploaded_once(graph: FakeGraph) -> None:
    media = make_media("image", PNG)
    other = make_media("image", PNG + b"!")

    async def uploads(client: GraphClient) -> list[str]:
        channel = GraphMedia(client)
        first = await asyncio.gather(channel.upload(media), channel.upload(media))
        again = await channel.upload(OutboundMedia("image", data=PNG, mime_type="image/png"))
        return [*first, again, await channel.upload(other)]

    ids = run(graph.url, uploads)
    assert ids[:3] == [graph.uploads[0].id] * 3
    assert ids[3] == graph.uploads[1].id != ids[0]
    assert len(graph.uploads) == 2


def test_only_the_last_uploads_are_kept(graph: FakeGraph) -> None:
    a, b = make_media("image", PNG), make_media("image", PNG + b"b")

    async def uploads(client: GraphClient) -> None:
        channel = GraphMedia(client, uploads_kept=1)
        for media in (a, b, b, a):
            await channel.upload(media)

    run(graph.url, uploads)
    assert [u.sha256 for u in graph.uploads] == [a.sha256, b.sha256, a.sha256]


def test_an_upload_needs_bytes(graph: FakeGraph) -> None:
    by_link = make_media("image", "https://example.com/a.png")
    with pytest.raises(ValueError):
        run(graph.url, lambda client: GraphMedia(client).upload(by_link))
    assert graph.media_reads == []


def test_a_failed_upload_is_unavailable_and_not_remembered(graph: FakeGraph) -> None:
    media = make_media("image", PNG)
    graph.plan_media(error(500, 131016))

    async def uploads(client: GraphClient) -> str:
        channel = GraphMedia(client)
        with pytest.raises(MediaError) as caught:
            await channel.upload(media)
        assert caught.value.reason == "unavailable"
        assert isinstance(caught.value.__cause__, GraphError)
        assert_no_secret(caught.value)
        return await channel.upload(media)

    assert run(graph.url, uploads) == graph.uploads[0].id
    assert len(graph.uploads) == 1


def test_an_upload_with_a_bad_token_is_refused(graph: FakeGraph) -> None:
    media = make_media("image", PNG)

    async def upload() -> str:
        client = GraphClient(
            access_token="wrong", phone_number_id=PHONE_NUMBER_ID, api_url=graph.url
        )
        try:
            return await GraphMedia(client).upload(media)
        finally:
            await client.aclose()

    with pytest.raises(MediaError, match="unavailable"):
        asyncio.run(upload())
    assert graph.uploads == []


# -- no secret anywhere ---------------------------------------------------------------------
def test_no_repr_shows_the_token_or_the_url(graph: FakeGraph) -> None:
    media_id = graph.add_media(PNG, "image/png")

    async def reprs(client: GraphClient) -> list[str]:
        info = await client.media_info(media_id)
        assert "media-bytes" in info.url
        return [repr(info), repr(client), repr(GraphMedia(client))]

    for shown in run(graph.url, reprs):
        for secret in (TOKEN, "media-bytes", "sig="):
            assert secret not in shown
    assert "PNG" not in repr(graph.media[media_id])  # a file's bytes are in no repr


def test_same_digest() -> None:
    assert same_digest(PNG, ENCODINGS["hex"]) and same_digest(PNG, ENCODINGS["base64url"])
    assert not same_digest(PNG, hashlib.sha256(b"x").hexdigest())
    assert not same_digest(PNG, "z" * 64)
    assert not same_digest(PNG, "")
