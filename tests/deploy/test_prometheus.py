"""Prometheus config and alert rules: promtool checks, unit tests and coverage."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    PROMETHEUS_CONFIG,
    RULES,
    RULES_TEST,
    find_promtool,
    load_yaml,
    run_promtool,
)

# The alerts issue 6 asks for, and what each must be built on.
REQUIRED_ALERTS = {
    "HeadraceDriftDetected": "increase(headrace_drift_detections_total[",
    "HeadraceAucDropped": 'avg_over_time(headrace_eval_auc{window="rolling"}[1h])',
    "HeadraceConsumerLagGrowing": "deriv(headrace_kafka_consumer_lag_records[",
    "HeadraceServingSyncLagHigh": "headrace_serving_sync_lag_seconds",
    "HeadraceTrainerDown": 'up{job="headrace-trainer"} == 0',
    "HeadraceServingWorkerDown": 'up{job="headrace-serving"} == 0',
}
DURATION = re.compile(r"^(\d+[smhd])+$")


def alerts() -> dict[str, dict[str, Any]]:
    rules = [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]
    named = {rule["alert"]: rule for rule in rules if "alert" in rule}
    assert len(named) == len([r for r in rules if "alert" in r]), "duplicate alert names"
    return named


def test_promtool_check_config(promtool: Path) -> None:
    result = run_promtool(promtool, "check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_rules(promtool: Path) -> None:
    result = run_promtool(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout + result.stderr


def test_promtool_test_rules(promtool: Path) -> None:
    result = run_promtool(promtool, "test", "rules", RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("mutant_expr", "what"),
    [
        ("vector(0) > 1", "never fires: every alert's firing case must notice"),
        ("vector(1)", "always fires: every alert's quiet case must notice"),
    ],
)
def test_rule_tests_catch_a_broken_expression(
    promtool: Path, tmp_path: Path, mutant_expr: str, what: str
) -> None:
    """Swapping every alert's expression for a constant makes each alert's tests fail."""
    rules = load_yaml(RULES)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["expr"] = mutant_expr
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules), encoding="utf-8")
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    result = run_promtool(promtool, "test", "rules", tmp_path / RULES_TEST.name)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{what}, yet promtool passed:\n{output}"
    failing = set(re.findall(r"alertname: (\w+), time:", output))
    assert failing == set(alerts()), f"{what}; unnoticed: {set(alerts()) - failing}"


def test_required_alerts_exist_and_use_the_right_signals() -> None:
    defined = alerts()
    for name, fragment in REQUIRED_ALERTS.items():
        assert name in defined, f"missing alert {name}"
        expr = " ".join(defined[name]["expr"].split())
        assert fragment in expr, f"{name} should use {fragment!r}, has {expr!r}"


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_has_for_severity_and_annotations(name: str) -> None:
    rule = alerts()[name]
    assert DURATION.match(str(rule.get("for", ""))), f"{name}: `for` missing or not a duration"
    assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, name
    annotations = rule.get("annotations", {})
    for key in ("summary", "description"):
        assert len(annotations.get(key, "").split()) >= 3, f"{name}: {key} says too little"


def test_rules_name_only_scraped_jobs() -> None:
    """A job label in a rule must be a job Prometheus scrapes, or `up` never matches."""
    jobs = {job["job_name"] for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    used = set(re.findall(r'job="([^"]+)"', RULES.read_text(encoding="utf-8")))
    assert used, "the down alerts should select jobs by name"
    assert used <= jobs, f"rules name jobs that are not scraped: {used - jobs}"
    headrace_jobs = {job for job in jobs if job.startswith("headrace-")}
    assert used >= headrace_jobs, f"no down alert for {headrace_jobs - used}"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    suite = load_yaml(RULES_TEST)
    assert suite["rule_files"] == [RULES.name]
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alerts()) - firing == set(), "alerts never shown to fire"
    assert set(alerts()) - quiet == set(), "alerts never shown to stay quiet"
    assert (firing | quiet) <= set(alerts()), "tests name alerts that do not exist"


def test_missing_promtool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("HEADRACE_REQUIRE_PROMETHEUS", "1")
    with pytest.raises(pytest.fail.Exception, match="promtool"):
        find_promtool()
    monkeypatch.delenv("HEADRACE_REQUIRE_PROMETHEUS")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="promtool"):
        find_promtool()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="promtool"):
        find_promtool()
