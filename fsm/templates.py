"""Message templates: what a channel may send when its reply window is closed.

WhatsApp lets a business send free-form messages (text, buttons, lists) only within 24 hours
of the user's last message; after that only a *message template*, created and approved in
Meta's dashboard beforehand, may be sent. A step says both at once with
:func:`fsm.template`: a :class:`~fsm.reply.Reply` whose free-form form (its body, kind and
options: what is sent inside the window, and what the terminal chat and :mod:`fsm.testing`
show) carries a :class:`Template`, sent in its place outside the window.

This module holds the template's data (typed parameters, checked when made) and the flow's
declaration of the templates it uses (:class:`TemplateSpec`, in ``Flow.templates``): a
template reply whose name, language or parameter counts do not match a declaration is the
flow's bug, refused when the step makes it (:class:`~fsm.errors.StepFailed`). Which form is
sent is the transport's decision (``adapters.whatsapp``); nothing here knows of a clock.

Limits are Meta's (Cloud API message templates): a name of lowercase letters, digits and
underscores (at most 512), a language code such as ``en`` or ``en_US``, a text parameter
without a new line, a tab or more than 4 spaces in a row (Meta refuses those, error 132018),
at most 60 characters in a header's, 1,024 in a body's (the body's whole length), a currency
in thousandths with its ISO 4217 code, a media header by id or by http(s) link, and at most
10 quick-reply buttons. A button's payload (what a tap on it sends back, as a pressed
option's id) is kept to 256 characters, as a reply button's id is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

import msgspec

TEMPLATE_NAME = 512
TEMPLATE_HEADER_TEXT = 60
TEMPLATE_BODY_TEXT = 1024
TEMPLATE_BUTTONS = 10
TEMPLATE_PAYLOAD = 256

MediaKind = Literal["image", "document", "video"]
HeaderKind = Literal["text", "image", "document", "video"]
MEDIA_KINDS: tuple[MediaKind, ...] = ("image", "document", "video")
HEADER_KINDS: tuple[HeaderKind, ...] = ("text", *MEDIA_KINDS)

_NAME = re.compile(r"[a-z0-9_]+")
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
_CURRENCY = re.compile(r"[A-Z]{3}")
_REFUSED_TEXT = re.compile(r"[\r\n\t]| {5,}")


class TextParam(msgspec.Struct, frozen=True, tag="text"):
    """A text parameter (``{{1}}`` in the approved template's body or header)."""

    text: str

    def __repr__(self) -> str:  # a parameter is message content: never in a log line
        return f"TextParam({len(self.text)} characters)"


class Currency(msgspec.Struct, frozen=True, tag="currency"):
    """An amount of money: ``amount_1000`` thousandths of ``code`` (ISO 4217), shown as
    ``fallback`` where the app cannot format it. Build with :func:`currency`."""

    amount_1000: int
    code: str
    fallback: str

    def __repr__(self) -> str:
        return f"Currency(code={self.code!r})"


class DateTime(msgspec.Struct, frozen=True, tag="date_time"):
    """A date and time, shown as ``fallback`` (the Cloud API shows the fallback text as it
    is). Build with :func:`date_time`."""

    fallback: str

    def __repr__(self) -> str:
        return "DateTime(...)"


class Media(msgspec.Struct, frozen=True, tag="media"):
    """A media header: an image, a document or a video, by the id of an upload to Meta or
    by an http(s) link. Build with :func:`media`."""

    kind: MediaKind
    id: str = ""
    link: str = ""

    def __repr__(self) -> str:  # a link may carry a signature: never shown
        return f"Media({self.kind}, {'id' if self.id else 'link'})"


BodyParam = TextParam | Currency | DateTime
HeaderParam = TextParam | Media


class Template(msgspec.Struct, frozen=True, omit_defaults=True):
    """An approved message template to send, with its parameters: the body's, in order, the
    header's (if it takes one) and the payloads of its quick-reply buttons, in order. Made by
    :func:`fsm.template`, which checks it."""

    name: str
    language: str
    body: tuple[BodyParam, ...] = ()
    header: HeaderParam | None = None
    buttons: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"Template({self.name!r}, {self.language!r}, body={len(self.body)} params, "
            f"header={header_kind(self.header)}, buttons={len(self.buttons)})"
        )

    def render(self) -> str:
        """Plain-text rendering, as a transcript shows a template that went out: its name and
        language, the parameters (a currency or a date-time by its fallback text), and the
        buttons' payloads. The approved text itself is Meta's: not known here.

        >>> Template("credex_reminder", "en", body=(TextParam("10.00 USD"),),
        ...          buttons=("yes", "no")).render()
        '[template credex_reminder en] 10.00 USD [buttons: yes, no]'
        """
        parts = [f"[template {self.name} {self.language}]"]
        if self.header is not None:
            head = self.header.text if isinstance(self.header, TextParam) else self.header.kind
            parts.append(f"[header: {head}]")
        if self.body:
            parts.append(" | ".join(_shown(param) for param in self.body))
        if self.buttons:
            parts.append(f"[buttons: {', '.join(self.buttons)}]")
        return " ".join(parts)


def _shown(param: BodyParam) -> str:
    return param.text if isinstance(param, TextParam) else param.fallback


def currency(amount: Decimal | int | str | float, code: str, fallback: str) -> Currency:
    """A currency parameter: ``amount`` (at most 3 decimals) of ``code`` (``"USD"``), shown
    as ``fallback`` (``"$12.50"``) where the app cannot format it.

    >>> currency("12.5", "USD", "$12.50").amount_1000
    12500
    """
    if isinstance(amount, bool):
        raise TypeError("a currency amount is a number, not a bool")
    try:
        thousandths = Decimal(str(amount)) * 1000
    except InvalidOperation:
        raise ValueError("a currency amount must be a number") from None
    if not thousandths.is_finite() or thousandths != thousandths.to_integral_value():
        raise ValueError("a currency amount must be finite, with at most 3 decimals")
    if not isinstance(code, str) or not _CURRENCY.fullmatch(code):
        raise ValueError("a currency code is 3 capital letters (ISO 4217), such as USD")
    _check_text(fallback, "a currency's fallback", TEMPLATE_BODY_TEXT)
    return Currency(int(thousandths), code, fallback)


def date_time(fallback: str) -> DateTime:
    """A date-time parameter, shown as ``fallback`` (``"March 3, 2026, 10:00"``)."""
    _check_text(fallback, "a date-time's fallback", TEMPLATE_BODY_TEXT)
    return DateTime(fallback)


def media(kind: MediaKind, *, id: str = "", link: str = "") -> Media:
    """A media header parameter: ``kind`` is image, document or video; give either the
    ``id`` of a file uploaded to Meta or an http(s) ``link`` to it."""
    if kind not in MEDIA_KINDS:
        raise ValueError(f"a media header is one of {', '.join(MEDIA_KINDS)}, got {kind!r}")
    if bool(id) == bool(link):
        raise ValueError("a media header takes either an id or a link")
    if link and not link.startswith(("https://", "http://")):
        raise ValueError("a media header's link must be an http(s) URL")
    return Media(kind, id=id, link=link)


def make_template(
    name: str,
    language: str,
    *,
    params: Iterable[BodyParam | str] = (),
    header: HeaderParam | str | None = None,
    buttons: Iterable[str] = (),
) -> Template:
    """A :class:`Template`, checked against Meta's limits (``ValueError`` naming every
    problem, never a parameter's text); a ``str`` parameter is a :class:`TextParam`."""
    if isinstance(params, str) or isinstance(buttons, str):
        raise TypeError("params and buttons take a list, not a single string")
    body = tuple(TextParam(p) if isinstance(p, str) else p for p in params)
    head = TextParam(header) if isinstance(header, str) else header
    made = Template(name, language, body, head, tuple(buttons))
    problems = template_problems(made)
    if problems:
        raise ValueError(f"template {name!r} cannot be sent: " + "; ".join(problems))
    return made


def template_problems(template: Template) -> list[str]:
    """Every way ``template`` breaks Meta's limits (empty: it can be sent)."""
    problems = _name_problems(template.name, template.language)
    for n, param in enumerate(template.body, start=1):
        if not isinstance(param, TextParam | Currency | DateTime):
            problems.append(
                f"body parameter {n} is a {type(param).__name__}, not text, currency or date-time"
            )
        elif isinstance(param, TextParam):
            problems += _text_problems(param.text, f"body parameter {n}", TEMPLATE_BODY_TEXT)
    head = template.header
    if isinstance(head, TextParam):
        problems += _text_problems(head.text, "the header parameter", TEMPLATE_HEADER_TEXT)
    elif head is not None and not isinstance(head, Media):
        problems.append(f"the header parameter is a {type(head).__name__}, not text or media")
    if len(template.buttons) > TEMPLATE_BUTTONS:
        problems.append(
            f"at most {TEMPLATE_BUTTONS} quick-reply buttons, got {len(template.buttons)}"
        )
    for n, payload in enumerate(template.buttons, start=1):
        if not isinstance(payload, str) or not 1 <= len(payload) <= TEMPLATE_PAYLOAD:
            problems.append(
                f"button {n}'s payload must be a str of 1 to {TEMPLATE_PAYLOAD} characters"
            )
    return problems


def header_kind(header: HeaderParam | None) -> HeaderKind | None:
    """What a header parameter is: ``"text"``, a media kind, or None (no parameter)."""
    if header is None:
        return None
    return "text" if isinstance(header, TextParam) else header.kind


def _name_problems(name: object, language: object) -> list[str]:
    problems = []
    if not isinstance(name, str) or not (_NAME.fullmatch(name) and len(name) <= TEMPLATE_NAME):
        problems.append(
            f"the name must be 1 to {TEMPLATE_NAME} lowercase letters, digits or "
            "underscores, as Meta's dashboard shows it"
        )
    if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
        problems.append("the language is a code such as en or en_US")
    return problems


def _text_problems(text: object, what: str, limit: int) -> list[str]:
    if not isinstance(text, str) or not text.strip():
        return [f"{what} is empty"]
    problems = []
    if len(text) > limit:
        problems.append(f"{what} is {len(text)} characters (at most {limit})")
    if _REFUSED_TEXT.search(text):
        problems.append(
            f"{what} has a new line, a tab or more than 4 spaces in a row "
            "(Meta refuses them in a parameter)"
        )
    return problems


def _check_text(text: object, what: str, limit: int) -> None:
    problems = _text_problems(text, what, limit)
    if problems:
        raise ValueError("; ".join(problems))


# -- the flow's declarations ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """A template the flow uses, as approved in Meta's dashboard (``Flow.templates``): its
    ``name`` and ``language``, how many body parameters it takes, the kind of its header's
    parameter (``"text"`` for a text header with a variable, ``"image"``, ``"document"`` or
    ``"video"`` for a media header; None for no header or a fixed text one), and how many
    quick-reply buttons it has (a reply gives one payload for each)."""

    name: str
    language: str
    body_params: int = 0
    header: HeaderKind | None = None
    buttons: int = 0


def spec_problems(spec: TemplateSpec) -> list[str]:
    """Every way a declaration is unusable (empty: it is fine)."""
    problems = _name_problems(spec.name, spec.language)
    for what, count, most in (
        ("body_params", spec.body_params, None),
        ("buttons", spec.buttons, TEMPLATE_BUTTONS),
    ):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            problems.append(f"`{what}` must be an int >= 0")
        elif most is not None and count > most:
            problems.append(f"`{what}` is at most {most}")
    if spec.header is not None and spec.header not in HEADER_KINDS:
        problems.append(f"`header` is None or one of {', '.join(HEADER_KINDS)}")
    return problems


def mismatch(declared: Mapping[tuple[str, str], TemplateSpec], template: Template) -> str | None:
    """Why ``template`` does not fit the flow's declarations, or None (it does)."""
    where = f"template {template.name!r} ({template.language})"
    spec = declared.get((template.name, template.language))
    if spec is None:
        known = ", ".join(f"{n} ({lang})" for n, lang in sorted(declared)) or "none"
        return f"{where} is not declared in the flow's `templates` (declared: {known})"
    body, buttons, given = len(template.body), len(template.buttons), header_kind(template.header)
    if body != spec.body_params:
        return f"{where} takes {spec.body_params} body parameters, the reply gives {body}"
    if given != spec.header:
        return f"{where} declares header {spec.header!r}, the reply gives {given!r}"
    if buttons != spec.buttons:
        return f"{where} has {spec.buttons} quick-reply buttons, the reply gives {buttons}"
    return None
