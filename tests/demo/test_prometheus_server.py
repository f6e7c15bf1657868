"""Debian's Prometheus server scrapes a running trainer and serving worker.

Also loads deploy/prometheus/rules.yml, so every alert rule is evaluated on
live series without an error.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from headrace.processes import wait_or_kill
from headrace.tansu import free_port
from tests.demo.conftest import DemoStack, get_json
from tests.deploy.conftest import RULES, find_prometheus_binary

SCRAPE_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: headrace-trainer
    static_configs:
      - targets: ["{trainer}"]
  - job_name: headrace-serving
    static_configs:
      - targets: ["{worker}"]
"""


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        body = get_json(f"{self.url}/api/v1/{path}?{query}")
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def wait_for(self, what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text(errors="replace")[-3000:]
            if result := check():
                return result
            time.sleep(0.5)
        pytest.fail(
            f"Prometheus: timed out waiting for {what}; last log lines:\n"
            + self.log.read_text(errors="replace")[-2000:]
        )


@pytest.fixture
def prometheus(demo_stack: DemoStack, tmp_path: Path) -> Iterator[Prometheus]:
    binary = find_prometheus_binary("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        SCRAPE_CONFIG.format(
            rules=json.dumps(str(RULES)),
            trainer=demo_stack.trainer_url.removeprefix("http://"),
            worker=demo_stack.serving_urls[0].removeprefix("http://"),
        )
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        server.wait_for("readiness", lambda: _ready(server.url))
        yield server
    finally:
        process.terminate()
        wait_or_kill(process, timeout_s=20)


def _ready(url: str) -> bool:
    try:
        get_json(f"{url}/api/v1/status/buildinfo")
    except (OSError, urllib.error.URLError):
        return False
    return True


def _value(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_trainer_and_worker(prometheus: Prometheus) -> None:
    def both_up() -> dict[str, float] | None:
        up = {r["metric"]["job"]: float(r["value"][1]) for r in prometheus.query("up")}
        return up if up == {"headrace-trainer": 1.0, "headrace-serving": 1.0} else None

    prometheus.wait_for("up == 1 for the trainer and the worker", both_up)
    first = prometheus.wait_for(
        "a first headrace_train_examples_total",
        lambda: _value(prometheus.query("headrace_train_examples_total")),
    )
    prometheus.wait_for(
        "headrace_train_examples_total to grow",
        lambda: (_value(prometheus.query("headrace_train_examples_total")) or 0) > first,
    )
    assert _value(prometheus.query("headrace_serving_version")) >= 1


def test_alert_rules_evaluate_on_live_series(prometheus: Prometheus) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = prometheus.wait_for("every rule to be evaluated", evaluated)
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, broken
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    # Everything runs: no target-down alert may fire.
    assert not [name for name in firing if name.endswith("Down")], firing
