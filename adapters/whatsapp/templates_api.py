"""The account's message templates, read from the Graph API, checked against a flow's
declarations (``fsm whatsapp templates check``).

``GET {api_url}/{waba_id}/message_templates?fields=name,language,status,components`` with a
bearer token that has the ``whatsapp_business_management`` permission. The answer is Meta's
paged list, ``{"data": [{"name", "language", "status", "components": [...]}, ...],
"paging": {"cursors": {"before", "after"}, "next": URL}}``; ``next`` is there while more
pages follow, and the next page is asked for with ``after=<cursor>`` on the same base URL
(the ``next`` URL itself is never followed: the token goes nowhere but ``api_url``).

A component is ``{"type": "HEADER", "format": "TEXT" | "IMAGE" | "DOCUMENT" | "VIDEO" |
"LOCATION", "text": ...}``, ``{"type": "BODY", "text": "Hi {{1}}"}``, ``{"type": "FOOTER"}``
or ``{"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY" | "URL" | ..., "url": ...}]}``.
What a declaration (:class:`~fsm.templates.TemplateSpec`) must match is what the transport
sends (:func:`~adapters.whatsapp.render.render_template`): the number of body variables, the
header's kind, and the number of quick-reply buttons.

The access token is in the client's headers only: in no repr, error or output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import httpx
import msgspec

from adapters.whatsapp.graph import DEFAULT_API_URL
from adapters.whatsapp.settings import SettingsError
from fsm.templates import TemplateSpec

#: The fields asked for: all the check reads.
FIELDS = "name,language,status,components"
#: Templates per page asked for (Meta's own default is smaller).
PAGE_SIZE = 100
#: At most this many pages are read (far more than an account's template limit).
MAX_PAGES = 500
APPROVED = "APPROVED"
#: Rate limits of the Management API (application, account): "not now", not "no".
RATE_LIMITED = frozenset({4, 80008})

#: A body or header variable: ``{{1}}`` (positional) or ``{{order_id}}`` (named).
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_MEDIA_FORMATS = {"IMAGE": "image", "DOCUMENT": "document", "VIDEO": "video"}

#: What ``fsm whatsapp templates check`` reads from the environment (and WHATSAPP_API_URL).
ACCOUNT_SETTINGS = ("WHATSAPP_BUSINESS_ACCOUNT_ID", "WHATSAPP_ACCESS_TOKEN")

Outcome = Literal["ok", "missing", "not_approved", "mismatched"]


class TemplatesUnavailable(Exception):
    """The Graph API could not be reached, answered 5xx, or answered something that is not a
    template list. The message names the host and the kind of failure, never the token."""


class TemplatesRefused(Exception):
    """The Graph API refused the request (4xx): a bad token, a missing permission, an
    unknown business account id. ``code`` is Meta's error code (0: none given)."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# -- Meta's answer, decoded leniently (fields Meta adds are skipped) --------------------------
class _Button(msgspec.Struct):
    type: str | None = None
    url: str | None = None


class _Component(msgspec.Struct):
    type: str | None = None
    format: str | None = None
    text: str | None = None
    buttons: list[_Button] | None = None


class _Template(msgspec.Struct):
    name: str | None = None
    language: str | None = None
    status: str | None = None
    components: list[_Component] | None = None


class _Cursors(msgspec.Struct):
    after: str | None = None


class _Paging(msgspec.Struct):
    cursors: _Cursors | None = None
    next: str | None = None


class _Page(msgspec.Struct):
    data: list[_Template] = []
    paging: _Paging | None = None


class _ErrorBody(msgspec.Struct):
    message: str = ""
    code: int = 0


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | None = None


_page_decoder = msgspec.json.Decoder(_Page)


@dataclass(frozen=True, slots=True)
class AccountTemplate:
    """One template of the account, as the check sees it: its ``status``, how many distinct
    body variables it has, whether they are named (``{{order_id}}``: the transport sends
    positional ones), its header's kind (``"text"`` for a text header with a variable, a
    media kind, ``"location"``, or None for none or a fixed text), its quick-reply buttons,
    and how many of its URL buttons take a variable (the transport sends none)."""

    name: str
    language: str
    status: str
    body_params: int = 0
    named: bool = False
    header: str | None = None
    buttons: int = 0
    url_variables: int = 0


def account_template(raw: _Template) -> AccountTemplate:
    """What the check reads of one template of Meta's answer."""
    body_vars: list[str] = []
    header: str | None = None
    quick = url_vars = 0
    for component in raw.components or ():
        kind = (component.type or "").upper()
        if kind == "BODY":
            body_vars = _variables(component.text)
        elif kind == "HEADER":
            header = _header_kind(component)
        elif kind == "BUTTONS":
            for button in component.buttons or ():
                pressed = (button.type or "").upper()
                quick += pressed == "QUICK_REPLY"
                url_vars += pressed == "URL" and bool(_variables(button.url))
    return AccountTemplate(
        name=raw.name or "",
        language=raw.language or "",
        status=(raw.status or "").upper(),
        body_params=len(body_vars),
        named=any(not v.isdigit() for v in body_vars),
        header=header,
        buttons=quick,
        url_variables=url_vars,
    )


def _variables(text: str | None) -> list[str]:
    """The distinct variables of ``text``, in order of first use."""
    return list(dict.fromkeys(_VARIABLE.findall(text or "")))


def _header_kind(component: _Component) -> str | None:
    fmt = (component.format or "TEXT").upper()
    if fmt == "TEXT":
        return "text" if _variables(component.text) else None
    return _MEDIA_FORMATS.get(fmt, fmt.lower())


# -- the check --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Check:
    """What became of one declared template: ``ok``, ``missing`` (no template of that name
    and language), ``not_approved`` (its status is not APPROVED) or ``mismatched`` (its
    variables, header or buttons differ from the declaration); ``problems`` say how."""

    spec: TemplateSpec
    outcome: Outcome
    status: str = ""
    problems: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.spec.name,
            "language": self.spec.language,
            "outcome": self.outcome,
            "status": self.status or None,
            "problems": list(self.problems),
        }


def check_templates(
    declared: Iterable[TemplateSpec], account: Iterable[AccountTemplate]
) -> list[Check]:
    """Each declared template checked against the account's, in name and language order."""
    found = {(t.name, t.language): t for t in account}
    languages: dict[str, list[str]] = {}
    for name, language in sorted(found):
        languages.setdefault(name, []).append(language)
    return [
        _check(spec, found.get((spec.name, spec.language)), languages)
        for spec in sorted(declared, key=lambda s: (s.name, s.language))
    ]


def _check(
    spec: TemplateSpec, approved: AccountTemplate | None, languages: Mapping[str, list[str]]
) -> Check:
    if approved is None:
        others = languages.get(spec.name)
        why = (
            f"the account has it in {', '.join(others)}, not {spec.language}"
            if others
            else "the account has no template of this name"
        )
        return Check(spec, "missing", problems=(why,))
    problems = shape_problems(spec, approved)
    if approved.status != APPROVED:
        status = approved.status or "unknown"
        return Check(spec, "not_approved", approved.status, (f"status {status}", *problems))
    return Check(spec, "mismatched" if problems else "ok", approved.status, tuple(problems))


def shape_problems(spec: TemplateSpec, approved: AccountTemplate) -> list[str]:
    """How ``approved`` differs from what the flow declares (and so sends)."""
    problems = []
    if approved.body_params != spec.body_params:
        problems.append(
            f"body has {approved.body_params} variables, the flow declares {spec.body_params}"
        )
    if approved.named:
        problems.append("body variables are named ({{name}}); the transport sends positional ones")
    if approved.header != spec.header:
        problems.append(
            f"header is {_header_text(approved.header)}, the flow declares "
            f"{_header_text(spec.header)}"
        )
    if approved.buttons != spec.buttons:
        problems.append(f"{approved.buttons} quick-reply buttons, the flow declares {spec.buttons}")
    if approved.url_variables:
        problems.append(
            f"{approved.url_variables} URL button(s) take a variable; the transport sends none"
        )
    return problems


def _header_text(kind: str | None) -> str:
    if kind is None:
        return "none (or a fixed text)"
    return "a text with a variable" if kind == "text" else kind


# -- the Graph API call -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Account:
    """Where the templates are read: the business account's id, the token, the API's base."""

    waba_id: str
    access_token: str = field(repr=False)
    api_url: str = DEFAULT_API_URL

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Account:
        """``WHATSAPP_BUSINESS_ACCOUNT_ID`` and ``WHATSAPP_ACCESS_TOKEN`` (required), and
        ``WHATSAPP_API_URL`` (the sender's base URL); :class:`SettingsError` naming what is
        missing or unusable, never a value."""
        missing = [name for name in ACCOUNT_SETTINGS if not environ.get(name, "").strip()]
        if missing:
            raise SettingsError(f"missing setting: {', '.join(missing)} (see docs/whatsapp.md)")
        waba_id = environ["WHATSAPP_BUSINESS_ACCOUNT_ID"].strip()
        if not waba_id.isascii() or not waba_id.isdigit():
            raise SettingsError(
                "WHATSAPP_BUSINESS_ACCOUNT_ID must be the account's numeric id "
                "(WhatsApp Manager: Account tools, or the API Setup page)"
            )
        api_url = environ.get("WHATSAPP_API_URL", "").strip() or DEFAULT_API_URL
        if not api_url.startswith(("http://", "https://")):
            raise SettingsError("WHATSAPP_API_URL must be an http(s) URL")
        return cls(waba_id, environ["WHATSAPP_ACCESS_TOKEN"].strip(), api_url)

    def fetch(self, *, page_size: int = PAGE_SIZE, timeout: float = 10.0) -> list[AccountTemplate]:
        """The account's templates (:func:`fetch_templates`)."""
        return fetch_templates(
            self.waba_id,
            self.access_token,
            api_url=self.api_url,
            page_size=page_size,
            timeout=timeout,
        )


def fetch_templates(
    waba_id: str,
    access_token: str,
    *,
    api_url: str = DEFAULT_API_URL,
    page_size: int = PAGE_SIZE,
    timeout: float = 10.0,
) -> list[AccountTemplate]:
    """Every template of the WhatsApp Business Account ``waba_id``, all pages read.

    Raises :class:`TemplatesUnavailable` (not reached, 5xx, not a template list) or
    :class:`TemplatesRefused` (4xx)."""
    base = api_url.rstrip("/")
    headers = {"Authorization": f"Bearer {access_token}"}
    found: list[AccountTemplate] = []
    after: str | None = None
    seen: set[str] = set()
    with httpx.Client(base_url=base, headers=headers, timeout=timeout) as client:
        for _ in range(MAX_PAGES):
            page = _page(client, waba_id, page_size, after, access_token)
            found.extend(account_template(t) for t in page.data)
            after = _next_cursor(page)
            if after is None:
                return found
            if after in seen:  # a cursor given twice: reading on would go round for ever
                raise TemplatesUnavailable("the template list's paging goes round in a circle")
            seen.add(after)
    raise TemplatesUnavailable(f"the template list ran past {MAX_PAGES} pages")


def _next_cursor(page: _Page) -> str | None:
    """The ``after`` cursor of the next page; None on the last page (no ``next``)."""
    paging = page.paging
    if paging is None or not paging.next or paging.cursors is None:
        return None
    return paging.cursors.after or None


def _page(client: httpx.Client, waba_id: str, limit: int, after: str | None, token: str) -> _Page:
    params = {"fields": FIELDS, "limit": str(limit)}
    if after is not None:
        params["after"] = after
    where = client.base_url.host or "the Graph API"
    try:
        answer = client.get(f"/{waba_id}/message_templates", params=params)
    except httpx.HTTPError as exc:  # refused, timed out, dropped
        raise TemplatesUnavailable(f"cannot reach {where}: {type(exc).__name__}") from None
    if answer.status_code >= 400:
        raise _error(answer, where, token)
    try:
        return _page_decoder.decode(answer.content)
    except (msgspec.DecodeError, RecursionError):
        raise TemplatesUnavailable(
            f"{where} answered something that is not a template list"
        ) from None


def _error(answer: httpx.Response, where: str, token: str) -> Exception:
    try:
        body = msgspec.json.decode(answer.content, type=_ErrorEnvelope).error
    except msgspec.DecodeError:
        body = None
    code = body.code if body else 0
    text = (body.message if body and body.message else answer.reason_phrase)[:200]
    if token:
        text = text.replace(token, "<redacted>")
    status = answer.status_code
    if status >= 500 or status == 429 or code in RATE_LIMITED:
        return TemplatesUnavailable(f"{where} answered {status}: {text} (code {code})")
    return TemplatesRefused(status, code, f"Graph API {status}: {text} (code {code})")
