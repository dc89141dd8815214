"""The monitoring for real: every metric the rules and the dashboard read is one a live bot
(``fsm serve``) or the store exporter (``fsm metrics --serve``) exposes, and a real Prometheus
scraping a bot under load fires FsmStoreDown when the test kills its redis-server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fsm.ops.monitoring import ALERTS, dashboard, metric_names, rules_yaml
from tests.redis_servers import RedisServer, free_port
from tests.support import wait_http
from tests.whatsapp import payloads as p
from tests.whatsapp.fake_graph import fake_graph
from tests.whatsapp.test_serve import Served, serve_env

FSM = str(Path(sys.executable).with_name("fsm"))
PROMETHEUS = shutil.which("prometheus")
ROOT = Path(__file__).parents[2]


class Exporter:
    """``fsm metrics --serve`` on a free port, stopped by PID."""

    def __init__(self, store_url: str, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.log = (tmp / f"exporter-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            [FSM, "metrics", "--store", store_url, "--serve", f"127.0.0.1:{self.port}"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        wait_http(self.url, self.process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.log.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(name="monitoring").start()
    try:
        yield server
    finally:
        server.stop()


def exposed(text: str) -> set[str]:
    """Metric names in a Prometheus text exposition, histograms with their series names."""
    names = set()
    for kind_line in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        name, kind = kind_line.groups()
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
    names |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE))
    return {n for n in names if not n.endswith("_created")}  # prometheus_client's timestamps


def families(text: str) -> set[str]:
    """The metric families of an exposition (its ``# TYPE`` lines)."""
    found = set(re.findall(r"^# TYPE (fsm_\S+) ", text, re.MULTILINE))
    return {n for n in found if not n.endswith("_created")}


def test_every_metric_the_rules_and_dashboard_read_is_exposed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with fake_graph() as graph:
        bot = Served(serve_env(graph, FSM_STORE=redis_server.url), tmp_path)
        exporter = Exporter(redis_server.url, tmp_path)
        try:
            assert bot.post(p.body([p.text("263770000001", "hi")])).status_code == 200
            texts = httpx.get(f"{bot.url}/metrics").text + httpx.get(exporter.url).text
        finally:
            bot.stop()
            exporter.stop()
    live = exposed(texts)
    board = dashboard()
    read = metric_names(
        [rule["expr"] for rule in (a.rendered({"job": '"x"'} | _defaults(), "") for a in ALERTS)]
        + [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    )
    assert read - {"up"} <= live, f"not exposed: {sorted(read - {'up'} - live)}"
    shown = metric_names(t["expr"] for panel in board["panels"] for t in panel["targets"])
    unshown = {
        family
        for family in families(texts)
        if not {family, f"{family}_total", f"{family}_bucket"} & shown
    }
    assert unshown == set(), f"exported but on no panel: {sorted(unshown)}"


def _defaults() -> dict[str, str]:
    from fsm.ops.monitoring import resolve_thresholds

    values = resolve_thresholds()
    values.pop("job")
    return values


# --- a real Prometheus ----------------------------------------------------------------------


class Prometheus:
    """A prometheus server on a free loopback port, in the test's tmp dir, stopped by PID."""

    def __init__(self, tmp: Path, targets: dict[str, str], rules: str) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "rules.yml").write_text(rules)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "rules.yml")],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = (tmp / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp,
        )
        wait_http(f"{self.url}/-/ready", self.process, log=tmp / "prometheus.log")

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/alerts", timeout=5)
        found: list[dict[str, Any]] = answer.json()["data"]["alerts"]
        return found

    def until(self, what: str, check: Any, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.5)
        raise AssertionError(f"Prometheus: no {what} within {timeout:g}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.log.close()


def load(bot: Served, stop: threading.Event, sent: list[int]) -> None:
    """Messages from 20 users, until told to stop (at most 3,000, each with a timeout)."""
    for n in range(3000):
        if stop.is_set():
            return
        user = f"2637700{n % 20:05d}"
        try:
            bot.post(p.body([p.text(user, "hi")]), timeout=5)
            sent.append(n)
        except httpx.HTTPError:
            pass
        time.sleep(0.02)


def screenshots(prometheus: Prometheus, where: Path) -> None:
    """Prometheus's alert and graph pages as they are now, where a browser is installed (for
    the record: docs/monitoring.md shows one)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By

        from tests.whatsapp.test_simulator_page import CHROMIUM, DRIVER, FLAGS
    except ImportError:
        return
    if CHROMIUM is None or DRIVER is None:
        return
    where.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={where / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        query = httpx.QueryParams({"g0.expr": "fsm_store_up", "g0.tab": "0"})
        driver.get(f"{prometheus.url}/graph?{query}&g0.range_input=1m")
        time.sleep(1.5)
        driver.save_screenshot(str(where / "graph.png"))
        driver.find_element(By.LINK_TEXT, "Alerts").click()
        time.sleep(1.5)
        driver.save_screenshot(str(where / "alerts.png"))
    finally:
        driver.quit()


@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="no prometheus: scripts/dev test installs Debian's prometheus package with apt-get; "
    "here it could not be installed",
)
def test_prometheus_fires_store_down_when_redis_is_killed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    rules = rules_yaml({"store_down_for": "3s"}, runbook_base="https://docs.example/operations")
    with fake_graph() as graph:
        bot = Served(serve_env(graph, FSM_STORE=redis_server.url), tmp_path)
        prometheus = Prometheus(tmp_path, {"fsm-bot": f"127.0.0.1:{bot.port}"}, rules)
        stop, sent = threading.Event(), []
        loader = threading.Thread(target=load, args=(bot, stop, sent), daemon=True)
        try:
            loader.start()
            prometheus.until(
                "messages applied",
                lambda: [
                    r
                    for r in prometheus.query('fsm_messages_applied_total{job="fsm-bot"}')
                    if float(r["value"][1]) > 0
                ],
            )
            assert prometheus.query('fsm_store_up{job="fsm-bot"}')[0]["value"][1] == "1"
            assert not [
                a for a in prometheus.alerts() if a["labels"]["alertname"] == "FsmStoreDown"
            ]

            redis_server.kill()
            firing = prometheus.until(
                "firing FsmStoreDown",
                lambda: [
                    a
                    for a in prometheus.alerts()
                    if a["labels"]["alertname"] == "FsmStoreDown" and a["state"] == "firing"
                ],
            )
            screenshots(prometheus, tmp_path / "screens")
        finally:
            stop.set()
            loader.join(15)
            prometheus.stop()
            bot.stop()
    alert = firing[0]
    assert alert["labels"]["severity"] == "page" and alert["labels"]["job"] == "fsm-bot"
    assert alert["annotations"]["runbook_url"] == "https://docs.example/operations#fsmstoredown"
    assert sent  # the bot was under load when its store went away
