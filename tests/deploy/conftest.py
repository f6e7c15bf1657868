"""Shared helpers for the deploy/ checks: paths, YAML loading and ``promtool``.

``promtool`` comes from Debian's ``prometheus`` package (installed by
``.ci/run``). Without it the promtool tests skip locally, but fail when ``CI``
is set or ``HEADRACE_REQUIRE_PROMETHEUS=1``, so CI never passes on skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DRIFT_DASHBOARD = DASHBOARDS / "headrace-drift.json"
METRICS_LIST = DEPLOY / "metrics.txt"


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def prometheus_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("HEADRACE_REQUIRE_PROMETHEUS") == "1"


def find_prometheus_binary(name: str) -> Path:
    """``promtool`` or ``prometheus``; skips the test without it, or fails it under CI."""
    found = shutil.which(name)
    if found is None:
        reason = f"{name} not on PATH (Debian: apt-get install prometheus)"
        if prometheus_required():
            pytest.fail(f"CI or HEADRACE_REQUIRE_PROMETHEUS=1 but {reason}")
        pytest.skip(reason)
    return Path(found)


def find_promtool() -> Path:
    """The promtool binary; skips the test without it, or fails it under CI."""
    return find_prometheus_binary("promtool")


@pytest.fixture(scope="session")
def promtool() -> Path:
    return find_promtool()


def run_promtool(promtool: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool, returning its exit status and combined output."""
    return subprocess.run(
        [str(promtool), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass(frozen=True)
class MetricSpec:
    """One line of deploy/metrics.txt."""

    name: str
    type: str
    exporter: str
    labels: frozenset[str]


def read_metric_list(path: Path = METRICS_LIST) -> dict[str, MetricSpec]:
    """deploy/metrics.txt: the metric names issues 4 and 5 define, by name."""
    specs: dict[str, MetricSpec] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        assert len(fields) == 4, f"{path.name}:{number}: want name type exporter labels"
        name, kind, exporter, labels = fields
        assert name not in specs, f"{path.name}:{number}: {name} listed twice"
        specs[name] = MetricSpec(
            name, kind, exporter, frozenset() if labels == "-" else frozenset(labels.split(","))
        )
    return specs


def dashboard_queries(path: Path = DRIFT_DASHBOARD) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and annotation queries."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    queries = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    queries += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    return queries
