"""Grafana provisioning and the "headrace drift" dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    DASHBOARDS,
    DRIFT_DASHBOARD,
    GRAFANA,
    dashboard_queries,
    load_yaml,
    run_promtool,
)

GRID_COLUMNS = 24


def datasource() -> dict[str, Any]:
    provisioned = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")
    assert provisioned["apiVersion"] == 1
    [source] = provisioned["datasources"]
    return source


def dashboard() -> dict[str, Any]:
    return json.loads(DRIFT_DASHBOARD.read_text(encoding="utf-8"))


def test_datasource_is_the_default_prometheus_with_a_fixed_uid() -> None:
    source = datasource()
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    assert source["uid"], "dashboards refer to the datasource by uid"


def test_dashboard_provider_loads_files() -> None:
    provisioned = load_yaml(GRAFANA / "provisioning/dashboards/headrace.yml")
    assert provisioned["apiVersion"] == 1
    [provider] = provisioned["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/"), "a path inside the container"


def test_dashboard_identity() -> None:
    board = dashboard()
    assert board["title"] == "headrace drift"
    assert board["uid"] == "headrace-drift"
    assert board["refresh"], "an operator's dashboard refreshes itself"
    uids = [json.loads(p.read_text(encoding="utf-8"))["uid"] for p in DASHBOARDS.glob("*.json")]
    assert len(uids) == len(set(uids)), "Grafana loads only one dashboard per uid"


def test_every_query_uses_the_provisioned_datasource() -> None:
    uid = datasource()["uid"]
    board = dashboard()
    queried = 0
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]
            queried += 1
    assert queried >= 12
    drift = [a for a in board["annotations"]["list"] if "headrace_drift" in a.get("expr", "")]
    assert drift, "drift detections should mark the charts as annotations"
    assert all(a["datasource"]["uid"] == uid and a["enable"] for a in drift)


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_queries_are_valid_promql(promtool: Path, tmp_path: Path) -> None:
    """promtool parses every query, each wrapped as a recording rule."""
    queries = dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": query}
                    for i, query in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = run_promtool(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout + result.stderr


@pytest.mark.parametrize("query", ["rate(headrace_ingest_records_total[1m]", "sum by (x"])
def test_promql_check_rejects_a_broken_query(promtool: Path, tmp_path: Path, query: str) -> None:
    """The validity check above can fail: promtool rejects malformed PromQL."""
    path = tmp_path / "broken.yml"
    rules = {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": query}]}]}
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    assert run_promtool(promtool, "check", "rules", path).returncode != 0
