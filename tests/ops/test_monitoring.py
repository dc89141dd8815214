"""The shipped alerting rules, checked and unit-tested by promtool (Debian's prometheus package;
scripts/dev installs it), every alert both firing and quiet; and the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fsm.ops.monitoring import ALERTS, PANELS, THRESHOLDS, dashboard, metric_names, rules_yaml

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="no promtool: scripts/dev test installs Debian's prometheus package with apt-get; "
    "here it could not be installed",
)
ROOT = Path(__file__).parents[2]
JOB = {"job": "fsm-bot", "instance": "bot-1"}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    every = {**JOB, **labels}
    text = ",".join(f'{k}="{v}"' for k, v in every.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def flat(name: str, value: float, **labels: str) -> dict[str, str]:
    return series(name, f"{value}x40", **labels)


def counter(name: str, per_minute: float, **labels: str) -> dict[str, str]:
    return series(name, f"0+{per_minute}x40", **labels)


def latency(seconds: float, operation: str = "save") -> list[dict[str, str]]:
    """store_seconds buckets for 60 operations a minute, each taking ``seconds``."""
    out = []
    for bound in ("0.001", "0.01", "0.1", "0.5", "1.0", "+Inf"):
        rate = 60 if bound == "+Inf" or float(bound) >= seconds else 0
        out.append(counter("fsm_store_seconds_bucket", rate, le=bound, operation=operation))
    return out


#: alert -> (series that make it fire, series that keep it quiet), one sample a minute.
CASES: dict[str, tuple[list[dict[str, str]], list[dict[str, str]]]] = {
    "FsmStoreDown": ([flat("fsm_store_up", 0)], [flat("fsm_store_up", 1)]),
    "FsmBotDown": ([series("up", "0x40")], [series("up", "1x40")]),
    "FsmStoreLatencyHigh": (latency(0.4), latency(0.005)),  # and lock waits, below
    "FsmConflictRateHigh": (
        [counter("fsm_conflicts_total", 30), counter("fsm_messages_applied_total", 100)],
        [counter("fsm_conflicts_total", 1), counter("fsm_messages_applied_total", 100)],
    ),
    "FsmLockTimeouts": (
        [counter("fsm_lock_timeouts_total", 2)],
        [counter("fsm_lock_timeouts_total", 0.4)],  # 4 in 10 minutes: under the 5
    ),
    "FsmLeasesLost": ([counter("fsm_leases_lost_total", 1)], [flat("fsm_leases_lost_total", 3)]),
    "FsmCorruptSnapshots": (
        [counter("fsm_corrupt_snapshots_total", 1)],
        [flat("fsm_corrupt_snapshots_total", 2)],
    ),
    "FsmVersionRegression": (
        [series("fsm_version_regressions_total", "0x20 1x20")],
        [flat("fsm_version_regressions_total", 0)],
    ),
    "FsmRedisMemoryHigh": (
        [flat("fsm_redis_used_memory_bytes", 95e6), flat("fsm_redis_maxmemory_bytes", 100e6)],
        [flat("fsm_redis_used_memory_bytes", 50e6), flat("fsm_redis_maxmemory_bytes", 100e6)],
    ),
    "FsmRedisEvictions": (
        [counter("fsm_store_evicted_keys_total", 3)],
        [flat("fsm_store_evicted_keys_total", 7)],
    ),
    "FsmActionsAbandoned": (
        [counter("fsm_actions_abandoned_total", 1)],
        [flat("fsm_actions_abandoned_total", 1)],
    ),
    "FsmSessionsPoisoned": (
        [counter("fsm_sessions_poisoned_total", 1)],
        [flat("fsm_sessions_poisoned_total", 4)],
    ),
    "FsmStepFailureRateHigh": (
        [counter("fsm_step_failures_total", 20), counter("fsm_messages_applied_total", 100)],
        [counter("fsm_step_failures_total", 1), counter("fsm_messages_applied_total", 100)],
    ),
    "FsmWebhookSignatureFailures": (
        [counter("fsm_whatsapp_signature_failures_total", 5, reason="mismatch")],
        [counter("fsm_whatsapp_signature_failures_total", 0.5, reason="mismatch")],
    ),
    "FsmWhatsAppSendFailures": (
        [counter("fsm_whatsapp_sends_total", 2, outcome="failed", code="131047")],
        [counter("fsm_whatsapp_sends_total", 0.4, outcome="failed", code="131047")],
    ),
    "FsmWhatsAppTokenRefused": (
        [counter("fsm_whatsapp_sends_total", 1, outcome="held", code="190")],
        [counter("fsm_whatsapp_sends_total", 1, outcome="failed", code="131047")],
    ),
    "FsmRepliesPending": (
        [series("fsm_whatsapp_replies_pending", "6x40")],
        [series("fsm_whatsapp_replies_pending", "0x20 9x5 0x15")],  # pending, then sent
    ),
    "FsmTimersBehind": (
        [series("fsm_timers_overdue_seconds", "0x20 60+60x20")],  # a ticker stopped at 20m
        [series("fsm_timers_overdue_seconds", "0x20 180x3 0x17")],  # late a moment, caught up
    ),
    "FsmRepliesOutsideWindow": (
        [series("fsm_whatsapp_window_closed_total", "0x25 1x15", outcome="dropped")],
        [counter("fsm_whatsapp_window_closed_total", 5, outcome="template")],  # all went out
    ),
}
EVAL_AT = "30m"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    assert set(CASES) == {a.name for a in ALERTS}


def unit_tests(rules: Path) -> dict[str, Any]:
    tests = []
    for alert in ALERTS:
        firing, quiet = CASES[alert.name]
        elsewhere = [{**x, "series": x["series"].replace('job="fsm-bot"', 'job="node"')}
                     for x in firing]  # fmt: skip
        extra = [(latency(0.9, "lock"), False)] if alert.name == "FsmStoreLatencyHigh" else []
        for input_series, fires in ((firing, True), (quiet, False), (elsewhere, False), *extra):
            expected = [{"exp_labels": _labels(alert.name, s)} for s in input_series[:1]]
            tests.append(
                {
                    "name": f"{alert.name} {'fires' if fires else 'stays quiet'}"
                    + ("" if input_series is not elsewhere else " for another job"),
                    "interval": "1m",
                    "input_series": input_series,
                    "alert_rule_test": [
                        {
                            "eval_time": EVAL_AT,
                            "alertname": alert.name,
                            "exp_alerts": expected if fires else [],
                        }
                    ],
                }
            )
    return {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}


def _labels(alert: str, first: dict[str, str]) -> dict[str, str]:
    """The labels the firing alert carries: its severity plus what its expression keeps."""
    severity = next(a.severity for a in ALERTS if a.name == alert)
    kept: dict[str, str] = {"severity": severity, "job": JOB["job"]}
    if alert in ("FsmStoreDown", "FsmBotDown", "FsmRedisMemoryHigh"):
        kept |= JOB
    if alert == "FsmStoreLatencyHigh":
        kept["operation"] = "save"
    if alert == "FsmWhatsAppSendFailures":
        kept["code"] = "131047"
    if alert == "FsmWhatsAppTokenRefused":
        kept["code"] = "190"
    return kept


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_the_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = tmp_path / "fsm-rules.yml"
    rules.write_text(rules_yaml())
    done = promtool("check", "rules", str(rules))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


@needs_promtool
def test_every_alert_fires_and_stays_quiet_under_promtool(tmp_path: Path) -> None:
    """The expressions, alert by alert (annotations left out: promtool compares them whole)."""
    rules = tmp_path / "fsm-rules.yml"
    rules.write_text(rules_yaml(annotations=False))
    tests = tmp_path / "fsm-rules.test.yml"
    tests.write_text(json.dumps(unit_tests(rules), indent=1))  # JSON is YAML
    done = promtool("test", "rules", str(tests))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_a_firing_alert_carries_its_words_and_runbook(tmp_path: Path) -> None:
    rules = tmp_path / "fsm-rules.yml"
    rules.write_text(rules_yaml({"store_down_for": "2m"}, runbook_base="https://d.example/ops"))
    suite = unit_tests(rules)
    suite["tests"] = [t for t in suite["tests"] if t["name"] == "FsmStoreDown fires"]
    suite["tests"][0]["alert_rule_test"][0]["exp_alerts"][0]["exp_annotations"] = {
        "summary": "The bot cannot reach its store",
        "description": "bot-1 has not reached its store for 2m (a probe of 1 s at each "
        "scrape): messages are answered 503 and wait for Meta's re-delivery.",
        "runbook_url": "https://d.example/ops#fsmstoredown",
    }
    tests = tmp_path / "t.yml"
    tests.write_text(json.dumps(suite))
    done = promtool("test", "rules", str(tests))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_thresholds_are_adjustable(tmp_path: Path) -> None:
    """Raise the conflict threshold above the firing case's ratio: it no longer fires."""
    rules = tmp_path / "fsm-rules.yml"
    rules.write_text(rules_yaml({"conflict_ratio": "0.5", "job": 'fsm"-bot'}))
    assert 'job=~\\"fsm\\\\\\"-bot\\"' in rules.read_text()  # a quote cannot break out
    assert promtool("check", "rules", str(rules)).returncode == 0
    rules.write_text(rules_yaml({"conflict_ratio": "0.5"}, annotations=False))
    suite = unit_tests(rules)
    suite["tests"] = [t for t in suite["tests"] if t["name"] == "FsmConflictRateHigh fires"]
    suite["tests"][0]["alert_rule_test"][0]["exp_alerts"] = []
    tests = tmp_path / "t.yml"
    tests.write_text(json.dumps(suite))
    done = promtool("test", "rules", str(tests))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_bad_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown threshold nope"):
        rules_yaml({"nope": "1"})
    with pytest.raises(ValueError, match="must be a number"):
        rules_yaml({"conflict_ratio": "0.5) or vector(1"})
    with pytest.raises(ValueError, match="must be a duration"):
        rules_yaml({"store_down_for": "5"})
    with pytest.raises(ValueError, match="must be a number"):
        dashboard({"conflict_ratio": "5m"})
    assert 'job=~\\"fsm-bot\\"' in rules_yaml({"job": '"fsm-bot"'})  # quotes copied: dropped


def test_every_alert_has_words_a_runbook_section_and_a_severity() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    headings = {
        m.group(1).lower() for m in re.finditer(r"^### (Fsm\w+)$", operations, re.MULTILINE)
    }
    text = rules_yaml(runbook_base="https://docs.example/operations")
    for alert in ALERTS:
        assert alert.anchor in headings, f"docs/operations.md has no '### {alert.name}'"
        assert alert.severity in ("page", "warning")
        assert f"https://docs.example/operations#{alert.anchor}" in text
    assert "{{ $value" in text  # the descriptions carry the current value


def test_the_dashboard_draws_every_threshold_it_names() -> None:
    board = dashboard({"store_latency_p99": "0.5"})
    assert len(board["panels"]) == len(PANELS)
    by_title = {p["title"]: p for p in board["panels"]}
    steps = by_title["Store latency p99"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1] == {"color": "red", "value": 0.5}
    drawn = {p.threshold for p in PANELS if p.threshold}
    assert drawn <= set(THRESHOLDS)
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert all("{job}" not in e for e in exprs) and metric_names(exprs)
