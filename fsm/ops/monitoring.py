"""Alerting rules and a Grafana dashboard for the figures the bot and the store exporter expose
(``fsm monitoring rules``, ``fsm monitoring dashboard``).

Theory of operation: every alert is data (:class:`Alert`): its PromQL with ``{threshold}``
placeholders, how long it must hold, its severity, its words, and the runbook section that says
what to do. :data:`THRESHOLDS` holds the defaults with what each means; ``--set name=value``
changes one. :func:`rules_yaml` writes a Prometheus rule file (YAML; every string quoted, so
no value can change its structure) and :func:`dashboard` a Grafana dashboard whose panels draw
the same thresholds. Nothing here talks to Prometheus or Grafana.

Metric names: the bot process (``fsm serve``'s ``/metrics``) exports the engine's counters and
store latency (:class:`fsm.ops.prometheus.EngineCollector`), ``fsm_store_up`` and the WhatsApp
transport's metrics (with the timers' backlog, ``fsm_timers_*``, read from the store's index
at each scrape); the store exporter (``fsm metrics --serve``) exports the store-wide gauges
and Redis's own memory and eviction figures (:class:`fsm.ops.prometheus.StoreCollector`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ALERTS",
    "PANELS",
    "THRESHOLDS",
    "Alert",
    "Panel",
    "Threshold",
    "dashboard",
    "metric_names",
    "resolve_thresholds",
    "rules_yaml",
]


@dataclass(frozen=True, slots=True)
class Threshold:
    default: str
    meaning: str


#: Every adjustable figure, with its default. Durations are Prometheus durations (30s, 5m).
THRESHOLDS: dict[str, Threshold] = {
    "job": Threshold('"fsm.*"', "regex of the bot's and the exporter's scrape job names"),
    "store_down_for": Threshold("1m", "how long the store may be unreachable before paging"),
    "bot_down_for": Threshold("1m", "how long a bot or exporter may fail its scrape"),
    "store_latency_p99": Threshold("0.25", "seconds: p99 of a store operation"),
    "conflict_ratio": Threshold("0.05", "compare-and-set conflicts per applied message"),
    "lock_timeouts": Threshold("5", "lock timeouts in 10 minutes"),
    "memory_ratio": Threshold("0.9", "Redis used_memory / maxmemory"),
    "step_failure_ratio": Threshold("0.05", "failed steps per applied message"),
    "signature_failures": Threshold("10", "webhook POSTs with a bad signature in 10 minutes"),
    "send_failures": Threshold("5", "Graph API sends given up, per error code, in 10 minutes"),
    "replies_pending": Threshold("5", "replies pending for 15 minutes"),
    "timers_overdue": Threshold("120", "seconds: how late the oldest due timer may be"),
    "window_unsent": Threshold(
        "0", "replies not sent in 30 minutes: the 24-hour window closed, no template"
    ),
    "sustained": Threshold("10m", "how long a rate must stay high before it alerts"),
}

DURATIONS = frozenset({"store_down_for", "bot_down_for", "sustained"})
_PLACEHOLDER = re.compile(r"\{([a-z0-9_]+)\}")


def resolve_thresholds(overrides: Mapping[str, str] = {}) -> dict[str, str]:
    """The defaults with ``overrides`` applied; an unknown name is a ValueError naming the
    known ones."""
    unknown = sorted(set(overrides) - set(THRESHOLDS))
    if unknown:
        raise ValueError(
            f"unknown threshold {', '.join(unknown)}; known: {', '.join(sorted(THRESHOLDS))}"
        )
    values = {name: t.default for name, t in THRESHOLDS.items()}
    for name, value in overrides.items():
        if name == "job":
            values[name] = json.dumps(value.strip().strip("\"'"))
        elif name in DURATIONS:
            if not re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", value):
                raise ValueError(f"threshold {name} must be a duration such as 30s or 5m")
            values[name] = value
        else:
            try:
                float(value)
            except ValueError:
                raise ValueError(f"threshold {name} must be a number, not {value!r}") from None
            values[name] = value
    return values


@dataclass(frozen=True, slots=True)
class Alert:
    """One alerting rule; ``expr``, ``hold``, ``summary`` and ``description`` may name
    thresholds as ``{name}``; ``description`` may use ``{{ $value }}`` and labels."""

    name: str
    severity: str  # "page" wakes someone; "warning" is for working hours
    expr: str
    hold: str
    summary: str
    description: str

    @property
    def anchor(self) -> str:
        """The runbook section: docs/operations.md's ``### <name>`` heading."""
        return self.name.lower()

    def rendered(self, values: Mapping[str, str], runbook_base: str) -> dict[str, Any]:
        def fill(text: str) -> str:
            return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)

        return {
            "alert": self.name,
            "expr": fill(self.expr),
            "for": fill(self.hold),
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": fill(self.summary),
                "description": fill(self.description),
                "runbook_url": f"{runbook_base}#{self.anchor}",
            },
        }


JOB = "job=~{job}"
#: Graph API answers that refuse the account itself (see adapters.whatsapp.graph).
ACCOUNT_CODES = '"190|10|200|http_401|http_403"'
ALERTS: tuple[Alert, ...] = (
    Alert(
        "FsmStoreDown",
        "page",
        f"min by (job, instance) (fsm_store_up{{{JOB}}}) == 0",
        "{store_down_for}",
        "The bot cannot reach its store",
        "{{ $labels.instance }} has not reached its store for {store_down_for} (a probe "
        "of 1 s at each scrape): messages are answered 503 and wait for Meta's re-delivery.",
    ),
    Alert(
        "FsmBotDown",
        "page",
        f"up{{{JOB}}} == 0",
        "{bot_down_for}",
        "A bot or exporter cannot be scraped",
        "{{ $labels.instance }} ({{ $labels.job }}) has not answered /metrics for {bot_down_for}.",
    ),
    Alert(
        "FsmStoreLatencyHigh",
        "warning",
        "histogram_quantile(0.99, sum by (job, le, operation) "
        f'(rate(fsm_store_seconds_bucket{{operation!="lock",{JOB}}}[5m]))) '
        "> {store_latency_p99}",
        "{sustained}",
        "Store operations are slow",
        "p99 of store {{ $labels.operation }} is {{ $value | humanizeDuration }} "
        "(threshold {store_latency_p99}s).",
    ),
    Alert(
        "FsmConflictRateHigh",
        "warning",
        f"sum by (job) (rate(fsm_conflicts_total{{{JOB}}}[5m])) / "
        f"clamp_min(sum by (job) (rate(fsm_messages_applied_total{{{JOB}}}[5m])), 1e-9) "
        "> {conflict_ratio}",
        "{sustained}",
        "Many compare-and-set conflicts",
        "{{ $value | humanizePercentage }} of applied messages hit a conflict "
        "(threshold {conflict_ratio}): workers race on the same users.",
    ),
    Alert(
        "FsmLockTimeouts",
        "warning",
        f"sum by (job) (increase(fsm_lock_timeouts_total{{{JOB}}}[10m])) > {{lock_timeouts}}",
        "0s",
        "Messages time out waiting for a user's lock",
        "{{ $value }} lock timeouts in 10 minutes (threshold {lock_timeouts}).",
    ),
    Alert(
        "FsmLeasesLost",
        "warning",
        f"sum by (job) (increase(fsm_leases_lost_total{{{JOB}}}[10m])) > 0",
        "0s",
        "A lease expired under a running step",
        "{{ $value }} leases were lost in 10 minutes: a step ran longer than lock_ttl.",
    ),
    Alert(
        "FsmCorruptSnapshots",
        "warning",
        f"sum by (job) (increase(fsm_corrupt_snapshots_total{{{JOB}}}[15m])) > 0",
        "0s",
        "Corrupt snapshots were quarantined",
        "{{ $value }} sessions did not decode in 15 minutes and were quarantined.",
    ),
    Alert(
        "FsmVersionRegression",
        "page",
        f"sum by (job) (increase(fsm_version_regressions_total{{{JOB}}}[15m])) > 0",
        "0s",
        "A session's version went backwards",
        "{{ $value }} stored versions went backwards: a failover or restore lost "
        "acknowledged writes.",
    ),
    Alert(
        "FsmRedisMemoryHigh",
        "warning",
        f"fsm_redis_used_memory_bytes{{{JOB}}} / (fsm_redis_maxmemory_bytes{{{JOB}}} > 0) "
        "> {memory_ratio}",
        "5m",
        "Redis is close to its maxmemory",
        "Redis uses {{ $value | humanizePercentage }} of its maxmemory (threshold "
        "{memory_ratio}); past it, writes fail or sessions are evicted.",
    ),
    Alert(
        "FsmRedisEvictions",
        "page",
        f"sum by (job) (increase(fsm_store_evicted_keys_total{{{JOB}}}[10m])) > 0",
        "0s",
        "Redis evicted keys",
        "{{ $value }} keys were evicted in 10 minutes: an evicted session is a lost conversation.",
    ),
    Alert(
        "FsmActionsAbandoned",
        "warning",
        f"sum by (job) (increase(fsm_actions_abandoned_total{{{JOB}}}[15m])) > 0",
        "0s",
        "Actions were given up",
        "{{ $value }} actions (API calls with side effects) were abandoned after repeated "
        "failure in 15 minutes.",
    ),
    Alert(
        "FsmSessionsPoisoned",
        "warning",
        f"sum by (job) (increase(fsm_sessions_poisoned_total{{{JOB}}}[30m])) > 0",
        "0s",
        "A user's steps keep failing",
        "{{ $value }} sessions were reset in 30 minutes after failing on every message.",
    ),
    Alert(
        "FsmStepFailureRateHigh",
        "warning",
        f"sum by (job) (rate(fsm_step_failures_total{{{JOB}}}[5m])) / "
        f"clamp_min(sum by (job) (rate(fsm_messages_applied_total{{{JOB}}}[5m])), 1e-9) "
        "> {step_failure_ratio}",
        "{sustained}",
        "Many steps fail",
        "{{ $value | humanizePercentage }} failed steps per applied message "
        "(threshold {step_failure_ratio}).",
    ),
    Alert(
        "FsmWebhookSignatureFailures",
        "warning",
        f"sum by (job) (increase(fsm_whatsapp_signature_failures_total{{{JOB}}}[10m])) "
        "> {signature_failures}",
        "0s",
        "Webhook POSTs with a bad signature",
        "{{ $value }} webhook POSTs were refused for their signature in 10 minutes: "
        "someone is probing, or the app secret changed without a redeploy.",
    ),
    Alert(
        "FsmWhatsAppSendFailures",
        "warning",
        'sum by (job, code) (increase(fsm_whatsapp_sends_total{outcome="failed",'
        f"{JOB}}}[10m])) > {{send_failures}}",
        "0s",
        "Graph API sends fail",
        "{{ $value }} sends failed with error code {{ $labels.code }} in 10 minutes.",
    ),
    Alert(
        "FsmWhatsAppTokenRefused",
        "page",
        f"sum by (job, code) (increase(fsm_whatsapp_sends_total{{code=~{ACCOUNT_CODES},{JOB}}}"
        "[15m])) > 0",
        "0s",
        "The Graph API refuses the access token",
        "Sends are refused for the account (code {{ $labels.code }}: 190 the access token, "
        "10/200 a permission, or HTTP 401/403): no reply reaches users until it is fixed.",
    ),
    Alert(
        "FsmRepliesPending",
        "warning",
        f"sum by (job) (fsm_whatsapp_replies_pending{{{JOB}}}) > {{replies_pending}}",
        "15m",
        "Replies are left pending",
        "{{ $value }} replies have been pending for 15 minutes (their retries ran out, or the "
        "account is refused); they go out at the user's next message or Meta's re-delivery.",
    ),
    Alert(
        "FsmTimersBehind",
        "warning",
        f"max by (job) (fsm_timers_overdue_seconds{{{JOB}}}) > {{timers_overdue}}",
        "5m",
        "Timers fire late",
        "The oldest due timer is {{ $value | humanizeDuration }} late (threshold "
        "{timers_overdue}s): no ticker runs, or the tickers cannot keep up or reach the store.",
    ),
    Alert(
        "FsmRepliesOutsideWindow",
        "warning",
        'sum by (job) (increase(fsm_whatsapp_window_closed_total{outcome=~"dropped|kept",'
        f"{JOB}}}[30m])) > {{window_unsent}}",
        "0s",
        "Replies without a template met a closed 24-hour window",
        "{{ $value }} replies were not sent in 30 minutes (dropped, or kept until the user "
        "writes): the user's 24-hour window was closed and the reply has no message template.",
    ),
)


def rules_yaml(
    overrides: Mapping[str, str] = {},
    *,
    runbook_base: str = "docs/operations.md",
    annotations: bool = True,
) -> str:
    """The Prometheus rule file: one group, every alert of :data:`ALERTS` (without their
    annotations if ``annotations`` is false: what promtool unit tests of expressions need)."""
    values = resolve_thresholds(overrides)
    lines = ["# Generated by `fsm monitoring rules`; thresholds: `fsm monitoring thresholds`.",
             "groups:", "  - name: convo-fsm", "    rules:"]  # fmt: skip
    for alert in ALERTS:
        rule = alert.rendered(values, runbook_base)
        lines.append(f"      - alert: {_q(rule['alert'])}")
        for key in ("expr", "for"):
            lines.append(f"        {key}: {_q(rule[key])}")
        for group in ("labels", "annotations") if annotations else ("labels",):
            lines.append(f"        {group}:")
            lines += [f"          {k}: {_q(v)}" for k, v in rule[group].items()]
    return "\n".join(lines) + "\n"


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of it)."""
    return json.dumps(value, ensure_ascii=False)


# --- the dashboard -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    exprs: tuple[str, ...]  # PromQL, ``{job}`` filled in
    unit: str = "short"
    threshold: str | None = None  # a THRESHOLDS name drawn as a red line
    legend: str = ""


def _rate(metric: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping}(rate({metric}{{{JOB}}}[5m]))"


PANELS: tuple[Panel, ...] = (
    Panel("Store up", (f"min by (instance) (fsm_store_up{{{JOB}}})",), "bool"),
    Panel(
        "Store latency p99",
        (
            "histogram_quantile(0.99, sum by (le, operation) "
            f"(rate(fsm_store_seconds_bucket{{{JOB}}}[5m])))",
        ),
        "s",
        "store_latency_p99",
        "{{operation}}",
    ),
    Panel("Messages applied /s", (_rate("fsm_messages_applied_total"),), "reqps"),
    Panel(
        "Conflicts per applied message",
        (
            f"{_rate('fsm_conflicts_total')} / clamp_min({_rate('fsm_messages_applied_total')}, "
            "1e-9)",
        ),
        "percentunit",
        "conflict_ratio",
    ),
    Panel(
        "Locks",
        tuple(
            _rate(f"fsm_{name}_total")
            for name in ("lock_waits", "lock_acquisitions", "lock_timeouts", "leases_lost")
        ),
        "ops",
    ),
    Panel(
        "Step failures per applied message",
        (
            f"{_rate('fsm_step_failures_total')} / "
            f"clamp_min({_rate('fsm_messages_applied_total')}, 1e-9)",
        ),
        "percentunit",
        "step_failure_ratio",
    ),
    Panel(
        "Sessions: corrupt, poisoned, regressions",
        tuple(
            _rate(f"fsm_{name}_total")
            for name in ("corrupt_snapshots", "sessions_poisoned", "version_regressions")
        ),
        "ops",
    ),
    Panel(
        "Auth and expiry",
        tuple(
            _rate(f"fsm_{name}_total")
            for name in (
                "token_refusals",
                "sessions_expired",
                "sessions_expired_unfinished",
                "dedupe_hits",
                "flow_migrations",
            )
        ),
        "ops",
    ),
    Panel(
        "Actions",
        (_rate("fsm_actions_total"), _rate("fsm_actions_abandoned_total")),
        "ops",
    ),
    Panel(
        "Outbox",
        tuple(
            _rate(f"fsm_outbox_{name}_total")
            for name in ("confirmed", "dropped", "confirm_failures")
        ),
        "ops",
    ),
    Panel(
        "Transitions /s",
        (_rate("fsm_transitions_total", "from_stage, to_stage"),),
        "ops",
        legend="{{from_stage}} -> {{to_stage}}",
    ),
    Panel(
        "Webhook POSTs by outcome",
        (_rate("fsm_whatsapp_updates_total", "outcome"),),
        "reqps",
        legend="{{outcome}}",
    ),
    Panel(
        "User messages by outcome",
        (_rate("fsm_whatsapp_messages_total", "outcome"),),
        "ops",
        legend="{{outcome}}",
    ),
    Panel(
        "Signature failures (10m)",
        (f"sum(increase(fsm_whatsapp_signature_failures_total{{{JOB}}}[10m]))",),
        "short",
        "signature_failures",
    ),
    Panel(
        "Sends by outcome and code",
        (_rate("fsm_whatsapp_sends_total", "outcome, code"),),
        "ops",
        legend="{{outcome}} {{code}}",
    ),
    Panel(
        "Send latency p99",
        (
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(fsm_whatsapp_send_seconds_bucket{{{JOB}}}[5m])))",
        ),
        "s",
    ),
    Panel(
        "Replies pending",
        (f"sum(fsm_whatsapp_replies_pending{{{JOB}}})",),
        "short",
        "replies_pending",
    ),
    Panel(
        "Timers due / firing lag",
        (
            f"max(fsm_timers_overdue_seconds{{{JOB}}})",
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(fsm_timer_lag_seconds_bucket{{{JOB}}}[5m])))",
        ),
        "s",
        "timers_overdue",
    ),
    Panel(
        "Timers backlog",
        (f"max(fsm_timers_due{{{JOB}}})", f"max(fsm_timers_claimed{{{JOB}}})"),
    ),
    Panel(
        "Timers /s",
        (
            *(
                _rate(f"fsm_{name}_total")
                for name in (
                    "timers_armed",
                    "timers_fired",
                    "timers_cancelled",
                    "timers_dropped_late",
                    "timers_failed",
                    "timer_errors",
                )
            ),
            _rate("fsm_timer_ticks_total", "outcome"),
        ),
        "ops",
    ),
    Panel(
        "Replies outside the 24-hour window",
        (_rate("fsm_whatsapp_window_closed_total", "outcome"),),
        "ops",
        legend="{{outcome}}",
    ),
    Panel(
        "Messaging limit: users reached in 24 h, waiting, limit",
        (
            f"max(fsm_whatsapp_messaging_limit_users{{{JOB}}})",
            f"max(fsm_whatsapp_messaging_limit_waiting{{{JOB}}})",
            f"max(fsm_whatsapp_messaging_limit{{{JOB}}})",
        ),
    ),
    Panel(
        "Media: files uploaded, attachments a step did not accept /s",
        (_rate("fsm_media_uploads_total"), _rate("fsm_attachments_refused_total")),
        "ops",
    ),
    Panel(
        "Replies held for the messaging limit /s",
        (_rate("fsm_whatsapp_messaging_limit_held_total"),),
        "ops",
    ),
    Panel(
        "Messages Meta failed to deliver, by code",
        (_rate("fsm_whatsapp_delivery_failures_total", "code"),),
        "ops",
        legend="{{code}}",
    ),
    Panel(
        "Events by outcome",
        (_rate("fsm_whatsapp_events_total", "outcome"),),
        "reqps",
        legend="{{outcome}}",
    ),
    Panel(
        "Delivery statuses, read marks",
        (
            _rate("fsm_whatsapp_statuses_total", "status"),
            _rate("fsm_whatsapp_mark_read_total", "outcome"),
        ),
        "ops",
    ),
    Panel(
        "Sessions",
        tuple(
            f"sum(fsm_{name}{{{JOB}}})"
            for name in (
                "sessions",
                "sessions_locked",
                "sessions_expiring_soon",
                "sessions_unreadable",
                "sessions_newer_schema",
                "quarantined",
            )
        ),
    ),
    Panel(
        "Sessions by stage",
        (f"sum by (stage) (fsm_sessions_by_stage{{{JOB}}})",),
        legend="{{stage}}",
    ),
    Panel("Average TTL left", (f"avg(fsm_session_ttl_average_seconds{{{JOB}}})",), "s"),
    Panel(
        "Redis memory used / maxmemory",
        (f"fsm_redis_used_memory_bytes{{{JOB}}} / (fsm_redis_maxmemory_bytes{{{JOB}}} > 0)",),
        "percentunit",
        "memory_ratio",
    ),
    Panel(
        "Redis memory",
        (f"fsm_redis_used_memory_bytes{{{JOB}}}", f"fsm_redis_maxmemory_bytes{{{JOB}}}"),
        "bytes",
    ),
    Panel(
        "Redis keys expired and evicted /s",
        (_rate("fsm_store_expired_keys_total"), _rate("fsm_store_evicted_keys_total")),
        "ops",
    ),
)


def dashboard(overrides: Mapping[str, str] = {}) -> dict[str, Any]:
    """An import-ready Grafana dashboard (a Prometheus data source chosen at import)."""
    values = resolve_thresholds(overrides)
    panels = [_panel(n, p, values) for n, p in enumerate(PANELS)]
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "title": "convo-fsm",
        "uid": "convo-fsm",
        "tags": ["convo-fsm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "panels": panels,
    }


def _panel(n: int, panel: Panel, values: Mapping[str, str]) -> dict[str, Any]:
    def fill(text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)

    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if panel.threshold is not None:
        steps.append({"color": "red", "value": float(values[panel.threshold])})
    return {
        "id": n + 1,
        "type": "timeseries",
        "title": panel.title,
        "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "custom": {"thresholdsStyle": {"mode": "line" if panel.threshold else "off"}},
            },
            "overrides": [],
        },
        "targets": [
            {"refId": chr(65 + i), "expr": fill(expr), "legendFormat": panel.legend}
            for i, expr in enumerate(panel.exprs)
        ],
    }


_NAME = re.compile(r"\b(fsm_[a-z0-9_]+|up)\b")


def metric_names(exprs: Iterable[str]) -> set[str]:
    """The metric names the PromQL ``exprs`` read (``fsm_*``, and ``up``)."""
    return {name for expr in exprs for name in _NAME.findall(expr)}
