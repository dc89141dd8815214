"""The Graph API client that sends messages: httpx, timeouts, a per-number pacer, typed errors.

``POST {api_url}/{phone_number_id}/messages`` with a bearer token. An error answer is
``{"error": {"message", "type", "code", "error_subcode", "fbtrace_id", ...}}``; its code
decides what happens next (:class:`GraphError`): throughput and pair rate limits, 5xx and
network errors are worth retrying after a pause; everything else (131047: outside the
24-hour customer service window, a bad parameter, an expired token) is final.

Media (:mod:`adapters.whatsapp.media` uses them): ``GET {api_url}/{media_id}`` tells a file's
download URL, type, size and sha256 (:meth:`GraphClient.media_info`); the URL, on Meta's media
host, takes the same bearer token and answers the bytes, read with a cap
(:meth:`GraphClient.fetch_media`); ``POST {api_url}/{phone_number_id}/media`` uploads a file
(:meth:`GraphClient.upload_media`).

The access token lives in the client's headers only: it is in no repr, log line or error;
nor is a media download URL (it carries a signature).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

# httpx logs every request's URL at INFO ("HTTP Request: GET <url>"): a media download URL
# is signed by Meta, and no log line may carry it. Its warnings still show.
logging.getLogger("httpx").setLevel(logging.WARNING)

DEFAULT_API_URL = "https://graph.facebook.com/v27.0"  # WHATSAPP_API_URL overrides

#: Error codes that mean "not now" rather than "never": retried with backoff.
RETRYABLE_CODES = frozenset(
    {
        1,  # API unknown (transient on Meta's side)
        2,  # API service temporarily unavailable
        4,  # application request limit reached
        80007,  # WhatsApp Business Account rate limit
        130429,  # cloud API throughput reached
        131000,  # something went wrong
        131016,  # service unavailable
        131056,  # pair rate limit: too many messages to this user in a short time
    }
)
#: The longer pause a pair rate limit asks for (messages to one user), in seconds.
PAIR_LIMIT_PAUSE = 1.0
OUTSIDE_WINDOW = 131047


class GraphError(Exception):
    """The Graph API refused a send (or could not be reached: ``code`` 0, ``status`` 0).
    ``retryable`` says whether the same request may succeed later."""

    def __init__(
        self, status: int, code: int, title: str, *, retryable: bool, hold: bool = False
    ) -> None:
        super().__init__(f"Graph API {status or 'unreachable'}: {title} (code {code})")
        self.status = status
        self.code = code
        self.title = title
        self.retryable = retryable
        #: Not about this reply but about the account (the token expired or lacks a
        #: permission): retrying now cannot help, giving the reply up would lose it. The
        #: reply stays pending until the account is fixed and Meta re-delivers.
        self.hold = hold

    @property
    def label(self) -> str:
        """A bounded label for metrics: the code, or the kind of failure."""
        if self.status == 0:
            return "network"
        return str(self.code) if self.code else f"http_{self.status}"


class GraphUnavailable(GraphError):
    """Not reached, or a 5xx: worth retrying."""


class RateLimited(GraphError):
    """Throughput (130429, 80007, 4) or pair rate limit (131056): retry after a pause."""


class OutsideWindow(GraphError):
    """131047: more than 24 hours since the user last wrote; only a template can be sent."""


class GraphRefused(GraphError):
    """Any other refusal of this reply (a bad parameter: 100, ...): final."""


class AccountRefused(GraphError):
    """The account cannot send at all (190: token invalid or expired, 10/200: permission,
    or HTTP 401/403): every reply is held pending, none given up."""


class MediaExpired(GraphError):
    """A media download URL no longer answers (404 or 410; 401 or 403 from the media host):
    it lives about five minutes. Asking :meth:`GraphClient.media_info` again gives a new one."""


class MediaTooLarge(Exception):
    """A media download was stopped: more bytes came than the cap (``limit``) allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"media larger than {limit} bytes")
        self.limit = limit


#: Codes about the account, not the reply.
ACCOUNT_CODES = frozenset({10, 190, 200})


RATE_LIMIT_CODES = frozenset({4, 80007, 130429, 131056})


class _ErrorBody(msgspec.Struct):
    message: str = ""
    code: int = 0
    error_subcode: int = 0


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | None = None


class _Sent(msgspec.Struct):
    id: str = ""


class _SendAnswer(msgspec.Struct):
    messages: list[_Sent] = []


class MediaInfo(msgspec.Struct, frozen=True):
    """What the Graph API tells of a media id: the download ``url`` (valid about five
    minutes, signed: in no repr), the ``mime_type``, the ``sha256`` of the bytes (as Meta
    gives it) and the ``file_size`` in bytes (Meta sends it as a string)."""

    url: str = ""
    mime_type: str = ""
    sha256: str = ""
    file_size: int = 0

    def __repr__(self) -> str:
        return f"MediaInfo(mime_type={self.mime_type!r}, file_size={self.file_size})"


class Pacer:
    """At most ``rate`` requests per second, spaced evenly (a per-number throughput cap:
    Meta's default is about 80 messages/s). ``rate`` 0 or less: no pacing."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if self.interval == 0.0:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class GraphClient:
    """Sends payloads for one business phone number."""

    def __init__(
        self,
        *,
        access_token: str,
        phone_number_id: str,
        api_url: str = DEFAULT_API_URL,
        rate: float = 80.0,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_connections: int = 100,
    ) -> None:
        if not access_token or not phone_number_id:
            raise ValueError("an access token and a phone number id are required")
        self.phone_number_id = phone_number_id
        self.api_url = api_url.rstrip("/")
        self.pacer = Pacer(rate)
        self._client = httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections),
        )

    def __repr__(self) -> str:
        return f"GraphClient(api_url={self.api_url!r}, phone_number_id={self.phone_number_id!r})"

    async def send(self, payload: dict[str, Any]) -> str:
        """Send one message; its id (wamid) once the Graph API accepted it."""
        answer = await self._post(payload)
        try:
            sent = msgspec.json.decode(answer.content, type=_SendAnswer)
        except msgspec.DecodeError:
            sent = _SendAnswer()
        if not sent.messages or not sent.messages[0].id:
            raise GraphUnavailable(answer.status_code, 0, "no message id", retryable=True)
        return sent.messages[0].id

    async def mark_read(self, payload: dict[str, Any]) -> None:
        await self._post(payload)

    async def _post(self, payload: dict[str, Any]) -> httpx.Response:
        await self.pacer.wait()
        try:
            answer = await self._client.post(
                f"/{self.phone_number_id}/messages",
                content=msgspec.json.encode(payload),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:  # connect/read timeouts, refused, dropped
            raise GraphUnavailable(0, 0, type(exc).__name__, retryable=True) from None
        if answer.status_code >= 400:
            raise _error(answer)
        return answer

    async def media_info(self, media_id: str) -> MediaInfo:
        """Where and what a media is (``GET /{media_id}``): a :class:`MediaInfo`; a
        :class:`GraphError` when the Graph API refuses or cannot be reached (refused without
        a request: an id that is not one, which could name another path)."""
        if not _MEDIA_ID.fullmatch(media_id):
            raise GraphRefused(0, 0, "not a media id", retryable=False)
        try:
            answer = await self._client.get(f"/{media_id}")
        except httpx.HTTPError as exc:
            raise GraphUnavailable(0, 0, type(exc).__name__, retryable=True) from None
        if answer.status_code >= 400:
            raise _error(answer)
        try:  # not strict: Meta sends file_size as a string ("303833")
            info = msgspec.json.decode(answer.content, type=MediaInfo, strict=False)
        except msgspec.DecodeError:
            info = MediaInfo()
        if not info.url:
            raise GraphUnavailable(answer.status_code, 0, "no media url", retryable=True)
        return info

    async def fetch_media(self, url: str, max_bytes: int) -> bytes:
        """The bytes at a media ``url`` (from :meth:`media_info`), with the bearer token as
        Meta asks; :class:`MediaTooLarge` as soon as more than ``max_bytes`` are announced or
        arrive, :class:`MediaExpired` once the URL is no longer valid, another
        :class:`GraphError` when refused or not reached."""
        if not self._may_carry_token(url):
            raise GraphRefused(0, 0, "media url not https", retryable=False)
        try:
            async with self._client.stream("GET", url, follow_redirects=True) as answer:
                if answer.status_code in _EXPIRED:
                    raise MediaExpired(answer.status_code, 0, "media url expired", retryable=False)
                if answer.status_code >= 400:
                    body = await _capped(answer, _ERROR_BODY)
                    raise _error(httpx.Response(answer.status_code, content=body or b""))
                announced = answer.headers.get("Content-Length", "")
                if announced.isdigit() and int(announced) > max_bytes:
                    raise MediaTooLarge(max_bytes)
                data = await _capped(answer, max_bytes)
        except httpx.HTTPError as exc:  # connect/read timeouts, refused, dropped
            raise GraphUnavailable(0, 0, type(exc).__name__, retryable=True) from None
        if data is None:
            raise MediaTooLarge(max_bytes)
        return data

    def _may_carry_token(self, url: str) -> bool:
        """A URL the bearer token may go to: https, or on the API's own host (a local
        fake Graph API serves both over http)."""
        target, api = urlsplit(url), urlsplit(self.api_url)
        return target.scheme == "https" or (
            target.scheme == api.scheme and target.netloc == api.netloc
        )

    async def upload_media(self, data: bytes, mime_type: str, filename: str) -> str:
        """Upload a file (``POST /{phone_number_id}/media``, multipart); its media id. Not
        paced: an upload is not a message. A :class:`GraphError` when refused or not
        reached."""
        try:
            answer = await self._client.post(
                f"/{self.phone_number_id}/media",
                data={"messaging_product": "whatsapp", "type": mime_type},
                files={"file": (filename or "file", data, mime_type)},
            )
        except httpx.HTTPError as exc:
            raise GraphUnavailable(0, 0, type(exc).__name__, retryable=True) from None
        if answer.status_code >= 400:
            raise _error(answer)
        try:
            uploaded = msgspec.json.decode(answer.content, type=_Sent)
        except msgspec.DecodeError:
            uploaded = _Sent()
        if not uploaded.id:
            raise GraphUnavailable(answer.status_code, 0, "no media id", retryable=True)
        return uploaded.id

    async def aclose(self) -> None:
        await self._client.aclose()


#: A media id (Meta's are numbers): one path segment, nothing else.
_MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: What a media URL answers once it expired (401 and 403 from the media host: the signature).
_EXPIRED = frozenset({401, 403, 404, 410})
#: How much of a media host's error answer is read (for its Graph error, if it has one).
_ERROR_BODY = 64 * 1024


async def _capped(answer: httpx.Response, limit: int) -> bytes | None:
    """The body of a streamed ``answer``, or None as soon as more than ``limit`` bytes came
    (the rest is not read: the connection is dropped)."""
    data = bytearray()
    async for chunk in answer.aiter_bytes():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


def _error(answer: httpx.Response) -> GraphError:
    try:
        body = msgspec.json.decode(answer.content, type=_ErrorEnvelope).error
    except msgspec.DecodeError:
        body = None
    code = body.code if body else 0
    title = (body.message if body else answer.reason_phrase)[:200]
    status = answer.status_code
    kind: type[GraphError]
    if code in RATE_LIMIT_CODES or status == 429:
        kind = RateLimited
    elif code == OUTSIDE_WINDOW:
        kind = OutsideWindow
    elif code in ACCOUNT_CODES or status in (401, 403):
        return AccountRefused(status, code, title, retryable=False, hold=True)
    elif code in RETRYABLE_CODES or status >= 500:
        kind = GraphUnavailable
    else:
        kind = GraphRefused
    retryable = kind is RateLimited or kind is GraphUnavailable
    return kind(status, code, title, retryable=retryable)
