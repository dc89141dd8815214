"""``fsm whatsapp templates check``: a flow's declared message templates against the account's,
read over HTTP from the fake Graph API's template list (paged as Meta pages it). Each declared
template is ok, missing, not approved or mismatched (body variables, header kind, quick-reply
buttons); exit 0 when all are ok, 1 otherwise, 2 for a missing setting or a Graph API that
refuses or cannot be reached. The access token never shows."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner, Result

from adapters import AsyncMemoryStore
from adapters.whatsapp.fake_graph import Answer, FakeGraph, fake_graph, message_template
from adapters.whatsapp.templates_api import AccountTemplate, account_template, shape_problems
from fsm import Context, Flow, Outcome, Stage, TemplateSpec, step
from fsm.async_engine import AsyncEngine
from fsm.cli import main
from tests.redis_servers import free_port

TOKEN = "EAAG-templates-check-token-0123456789"
ACCOUNT = "102290129340398"
HERE = "tests.whatsapp.test_templates_check"
#: No setting from the shell reaches the command.
BARE = {k: None for k in os.environ if k.startswith(("WHATSAPP_", "FSM_"))}


class Notices(Flow):
    """A flow that declares one template of each shape the check compares."""

    name = "notices"
    takes_first_message = True
    stages = (Stage("main", ("home",)),)
    transitions = ()
    templates = (
        TemplateSpec("order_update", "en_US", body_params=2, header="text", buttons=2),
        TemplateSpec("parcel_label", "en", body_params=1, header="document"),
        TemplateSpec("plain_notice", "pt_BR"),
    )

    @step("main", "home")
    def home(self, ctx: Context) -> Outcome:
        return ctx.stay("Noted.")


class Quiet(Notices):
    """The same flow, declaring no templates."""

    name = "quiet"
    templates = ()


def notices_engine(store: AsyncMemoryStore) -> AsyncEngine:
    return AsyncEngine(Notices(), store)


def matching() -> list[dict[str, Any]]:
    """The account's templates as Notices declares them, and one it does not use."""
    return [
        message_template("order_update", "en_US", body_params=2, header="text", buttons=2),
        message_template("parcel_label", "en", body_params=1, header="document"),
        message_template("plain_notice", "pt_BR", header="fixed"),
        message_template("unused_promo", "en", body_params=3, category="MARKETING"),
    ]


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with fake_graph(token=TOKEN) as fake:
        fake.account_id = ACCOUNT
        yield fake


def settings(graph: FakeGraph, **changes: str | None) -> dict[str, str | None]:
    env: dict[str, str | None] = {
        "WHATSAPP_BUSINESS_ACCOUNT_ID": ACCOUNT,
        "WHATSAPP_ACCESS_TOKEN": TOKEN,
        "WHATSAPP_API_URL": graph.url,
    }
    return {**BARE, **env, **changes}


def check(env: dict[str, str | None], *args: str) -> Result:
    done = CliRunner().invoke(main, ["whatsapp", "templates", "check", *args], env=env)
    assert TOKEN not in done.output, "the access token was printed"
    return done


def checked(graph: FakeGraph, *args: str) -> tuple[int, dict[str, Any]]:
    """Exit code and the ``--json`` report of checking Notices against ``graph``'s account."""
    done = check(settings(graph), "--flow", f"{HERE}:Notices", "--json", *args)
    assert done.exit_code in (0, 1), done.output
    return done.exit_code, json.loads(done.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in report["templates"]}


# -- the outcomes ------------------------------------------------------------------------------
def test_all_declared_templates_approved_and_matching_exit_0(graph: FakeGraph) -> None:
    graph.set_templates(*matching())
    done = check(settings(graph), "--flow", f"{HERE}:Notices")
    assert done.exit_code == 0, done.output
    for name in ("order_update", "parcel_label", "plain_notice"):
        assert name in done.stdout
    assert "unused_promo" not in done.stdout  # the account's others are not the flow's concern
    assert "3 template(s) checked: 3 ok" in done.stderr
    code, report = checked(graph)
    assert code == 0 and report["ok"] is True and report["flow"] == "notices"
    assert [t["outcome"] for t in report["templates"]] == ["ok", "ok", "ok"]
    assert {t["status"] for t in report["templates"]} == {"APPROVED"}


def test_a_template_the_account_lacks_is_missing(graph: FakeGraph) -> None:
    graph.set_templates(*matching()[:2])
    code, report = checked(graph)
    assert code == 1 and report["ok"] is False
    missing = by_name(report)["plain_notice"]
    assert missing["outcome"] == "missing" and missing["status"] is None
    assert missing["problems"] == ["the account has no template of this name"]


def test_a_template_in_another_language_only_is_missing_and_says_which(graph: FakeGraph) -> None:
    graph.set_templates(*matching()[:2], message_template("plain_notice", "pt_PT"))
    code, report = checked(graph)
    assert code == 1
    assert by_name(report)["plain_notice"]["problems"] == ["the account has it in pt_PT, not pt_BR"]


@pytest.mark.parametrize("status", ["PENDING", "REJECTED", "PAUSED", "DISABLED"])
def test_a_template_not_approved_is_reported_with_its_status(graph: FakeGraph, status: str) -> None:
    templates = matching()
    templates[1] = message_template(
        "parcel_label", "en", body_params=1, header="document", status=status
    )
    graph.set_templates(*templates)
    code, report = checked(graph)
    assert code == 1
    found = by_name(report)["parcel_label"]
    assert (found["outcome"], found["status"]) == ("not_approved", status)
    assert found["problems"] == [f"status {status}"]
    assert by_name(report)["order_update"]["outcome"] == "ok"


def test_a_body_with_another_number_of_variables_is_mismatched(graph: FakeGraph) -> None:
    templates = matching()
    templates[0] = message_template(
        "order_update", "en_US", body_params=3, header="text", buttons=2
    )
    graph.set_templates(*templates)
    code, report = checked(graph)
    assert code == 1
    found = by_name(report)["order_update"]
    assert found["outcome"] == "mismatched"
    assert found["problems"] == ["body has 3 variables, the flow declares 2"]


@pytest.mark.parametrize(
    ("name", "header", "problem"),
    [
        (
            "parcel_label",
            "image",
            "header is image, the flow declares document",
        ),
        (
            "order_update",
            "fixed",
            "header is none (or a fixed text), the flow declares a text with a variable",
        ),
        (
            "plain_notice",
            "text",
            "header is a text with a variable, the flow declares none (or a fixed text)",
        ),
        (
            "plain_notice",
            "video",
            "header is video, the flow declares none (or a fixed text)",
        ),
    ],
)
def test_a_header_of_another_kind_is_mismatched(
    graph: FakeGraph, name: str, header: str, problem: str
) -> None:
    shapes = {
        "order_update": ("en_US", 2, 2),
        "parcel_label": ("en", 1, 0),
        "plain_notice": ("pt_BR", 0, 0),
    }
    language, body, buttons = shapes[name]
    changed = message_template(name, language, body_params=body, header=header, buttons=buttons)
    graph.set_templates(*[changed if t["name"] == name else t for t in matching()])
    code, report = checked(graph)
    assert code == 1
    assert by_name(report)[name]["outcome"] == "mismatched"
    assert by_name(report)[name]["problems"] == [problem]


def test_another_number_of_quick_reply_buttons_is_mismatched(graph: FakeGraph) -> None:
    templates = matching()
    templates[0] = message_template(
        "order_update", "en_US", body_params=2, header="text", buttons=3
    )
    templates[2] = message_template("plain_notice", "pt_BR", header="fixed", buttons=1)
    graph.set_templates(*templates)
    code, report = checked(graph)
    assert code == 1
    assert by_name(report)["order_update"]["problems"] == [
        "3 quick-reply buttons, the flow declares 2"
    ]
    assert by_name(report)["plain_notice"]["problems"] == [
        "1 quick-reply buttons, the flow declares 0"
    ]


def test_a_template_not_approved_and_mismatched_says_both(graph: FakeGraph) -> None:
    templates = matching()
    templates[1] = message_template("parcel_label", "en", body_params=2, status="PENDING")
    graph.set_templates(*templates)
    _, report = checked(graph)
    assert by_name(report)["parcel_label"] == {
        "name": "parcel_label",
        "language": "en",
        "outcome": "not_approved",
        "status": "PENDING",
        "problems": [
            "status PENDING",
            "body has 2 variables, the flow declares 1",
            "header is none (or a fixed text), the flow declares document",
        ],
    }


def test_the_table_shows_each_template_and_what_is_wrong(graph: FakeGraph) -> None:
    templates = matching()
    templates[0] = message_template(
        "order_update", "en_US", body_params=1, header="text", buttons=2
    )
    graph.set_templates(*templates[:2])
    done = check(settings(graph), "--flow", f"{HERE}:Notices")
    assert done.exit_code == 1
    for shown in ("order_update", "mismatched", "plain_notice", "missing", "APPROVED"):
        assert shown in done.stdout
    assert "3 template(s) checked: 1 mismatched, 1 missing, 1 ok" in done.stderr


# -- how Meta's components are read -------------------------------------------------------------
def seen(raw: dict[str, Any]) -> AccountTemplate:
    """What the check reads of one template record of Meta's answer."""
    from adapters.whatsapp.templates_api import _Template

    return account_template(msgspec.convert(raw, _Template))


def test_named_variables_are_counted_once_each_and_reported() -> None:
    body = {"type": "BODY", "text": "Hi {{first_name}}, order {{order}} for {{ first_name }}"}
    named = seen({"name": "shipped", "language": "en", "status": "APPROVED", "components": [body]})
    assert (named.body_params, named.named, named.header, named.buttons) == (2, True, None, 0)
    assert shape_problems(TemplateSpec("shipped", "en", body_params=2), named) == [
        "body variables are named ({{name}}); the transport sends positional ones"
    ]


def test_only_quick_replies_count_as_buttons_and_a_url_variable_is_reported() -> None:
    buttons = [
        {"type": "URL", "text": "Track", "url": "https://x.example/t/{{1}}"},
        {"type": "QUICK_REPLY", "text": "Stop"},
        {"type": "PHONE_NUMBER", "text": "Call", "phone_number": "+15550000000"},
    ]
    track = seen(
        {
            "name": "track",
            "language": "en",
            "status": "APPROVED",
            "components": [
                {"type": "HEADER", "format": "LOCATION"},
                {"type": "BODY", "text": "Track it.", "example": {"body_text": [[]]}},
                {"type": "FOOTER", "text": "Reply STOP to stop"},
                {"type": "BUTTONS", "buttons": buttons},
            ],
        }
    )
    assert (track.header, track.buttons, track.url_variables) == ("location", 1, 1)
    assert shape_problems(TemplateSpec("track", "en", buttons=1), track) == [
        "header is location, the flow declares none (or a fixed text)",
        "1 URL button(s) take a variable; the transport sends none",
    ]


# -- paging ------------------------------------------------------------------------------------
def test_every_page_is_read_following_the_after_cursor(graph: FakeGraph) -> None:
    fillers = [message_template(f"filler_{n}", "en") for n in range(5)]
    graph.set_templates(*fillers, *matching())  # the declared ones on the last pages
    graph.templates_page = 2
    code, report = checked(graph)
    assert code == 0, report
    reads = graph.template_reads
    assert len(reads) == 5  # 9 templates, 2 a page
    assert all(r.authorization == f"Bearer {TOKEN}" for r in reads)
    assert all(r.path.startswith(f"/v99.0/{ACCOUNT}/message_templates?") for r in reads)
    assert "after=" not in reads[0].path
    assert all("after=" in r.path for r in reads[1:])
    assert "fields=name%2Clanguage%2Cstatus%2Ccomponents" in reads[0].path


# -- the flow: --flow, --engine, the reference bot ------------------------------------------------
def test_the_default_is_the_reference_bot(graph: FakeGraph) -> None:
    graph.set_templates(
        message_template("credex_offer_received", "en", body_params=3, buttons=2),
        message_template("credex_reminder", "en", body_params=1, buttons=2),
    )
    done = check(settings(graph), "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["flow"] == "credex"
    assert sorted(by_name(report)) == ["credex_offer_received", "credex_reminder"]


def test_the_engine_factory_fsm_serve_takes_names_the_flow(graph: FakeGraph) -> None:
    graph.set_templates(*matching())
    done = check(settings(graph), "--engine", f"{HERE}:notices_engine", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["flow"] == "notices"


def test_flow_and_engine_together_is_a_usage_error(graph: FakeGraph) -> None:
    done = check(settings(graph), "--flow", f"{HERE}:Notices", "--engine", f"{HERE}:x")
    assert done.exit_code == 2 and "not both" in done.output
    assert graph.template_reads == []


def test_a_flow_without_templates_needs_no_account(graph: FakeGraph) -> None:
    done = check(BARE, "--flow", f"{HERE}:Quiet")
    assert done.exit_code == 0, done.output
    assert "declares no templates" in done.stderr
    assert graph.template_reads == []


# -- settings and the Graph API's failures --------------------------------------------------------
@pytest.mark.parametrize("missing", ["WHATSAPP_BUSINESS_ACCOUNT_ID", "WHATSAPP_ACCESS_TOKEN"])
def test_a_missing_setting_exits_2_naming_it(graph: FakeGraph, missing: str) -> None:
    done = check(settings(graph, **{missing: None}), "--flow", f"{HERE}:Notices")
    assert done.exit_code == 2
    assert f"missing setting: {missing}" in done.stderr
    assert graph.template_reads == []


def test_an_account_id_that_is_not_a_number_exits_2(graph: FakeGraph) -> None:
    done = check(settings(graph, WHATSAPP_BUSINESS_ACCOUNT_ID="../me"), "--flow", f"{HERE}:Notices")
    assert done.exit_code == 2 and "numeric id" in done.stderr
    assert graph.template_reads == []


def test_an_unreachable_graph_api_exits_2(graph: FakeGraph) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v99.0"
    done = check(settings(graph, WHATSAPP_API_URL=closed), "--flow", f"{HERE}:Notices")
    assert done.exit_code == 2, done.output
    assert "cannot read the account's templates: cannot reach 127.0.0.1: ConnectError" in (
        done.stderr
    )


def test_a_graph_api_error_exits_2(graph: FakeGraph) -> None:
    graph.set_templates(*matching())
    graph.plan_templates(Answer(status=503, code=2))
    done = check(settings(graph), "--flow", f"{HERE}:Notices")
    assert done.exit_code == 2, done.output
    assert "answered 503" in done.stderr


def test_a_dropped_connection_exits_2(graph: FakeGraph) -> None:
    graph.set_templates(*matching())
    graph.templates_page = 2
    graph.plan_templates(Answer(), Answer(drop=True))  # the second page never comes
    done = check(settings(graph), "--flow", f"{HERE}:Notices")
    assert done.exit_code == 2, done.output
    assert "cannot reach 127.0.0.1" in done.stderr


def test_a_refused_token_exits_2_with_a_hint_and_never_shows_it(graph: FakeGraph) -> None:
    done = check(
        settings(graph, WHATSAPP_ACCESS_TOKEN="EAAG-wrong-token-555"), "--flow", f"{HERE}:Notices"
    )
    assert done.exit_code == 2
    assert "Graph API 401" in done.stderr and "invalid or expired" in done.stderr
    assert "EAAG-wrong-token-555" not in done.output


def test_another_account_id_exits_2_with_a_hint(graph: FakeGraph) -> None:
    done = check(
        settings(graph, WHATSAPP_BUSINESS_ACCOUNT_ID="106540352242922"),
        "--flow",
        f"{HERE}:Notices",
    )
    assert done.exit_code == 2
    assert "(code 100)" in done.stderr and "not the phone number's id" in done.stderr
