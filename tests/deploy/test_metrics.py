"""Every headrace_* metric that rules or dashboards reference is one the issues define.

The list is deploy/metrics.txt (issues 4, 5 and 14); tests with the running
trainer, workers and joiner check that they export every name in it.
"""

from __future__ import annotations

import re

import pytest

from tests.deploy.conftest import (
    DRIFT_DASHBOARD,
    RULES,
    dashboard_queries,
    load_yaml,
    read_metric_list,
)

NAME = re.compile(r"\bheadrace_[a-z0-9_]+")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
# Labels every scraped series carries; `le` is on histogram buckets.
TARGET_LABELS = {"job", "instance"}
# A selector with matchers: name{label="v", other=~"w"}.
SELECTOR = re.compile(r"(headrace_[a-z0-9_]+)\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
# Units in base units (Prometheus naming), or plain counts of a thing.
UNIT_SUFFIXES = (
    *("_seconds", "_bytes", "_records", "_rows", "_auc", "_logloss", "_rate", "_ratio"),
    *("_impressions", "_actions"),
)


def family(name: str) -> str:
    """The metric family a series name belongs to (histogram series -> histogram)."""
    specs = read_metric_list()
    for suffix in HISTOGRAM_SERIES:
        base = name.removesuffix(suffix)
        if base != name and specs.get(base) and specs[base].type == "histogram":
            return base
    return name


def rule_texts() -> list[str]:
    """Expressions and annotations of every rule: all that may name a metric."""
    texts = []
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            texts.append(rule["expr"])
            texts += list(rule.get("annotations", {}).values())
    return texts


SOURCES = {
    "rules.yml": rule_texts,
    "dashboard": lambda: [DRIFT_DASHBOARD.read_text(encoding="utf-8")],
}


def test_metric_list_is_well_formed() -> None:
    specs = read_metric_list()
    assert len(specs) >= 25, "issues 4 and 5 define at least 25 metrics"
    for spec in specs.values():
        assert re.fullmatch(r"headrace_[a-z0-9_]+", spec.name), spec.name
        assert spec.type in {"counter", "gauge", "histogram"}, spec
        assert spec.exporter in {"trainer", "rank-0", "serving", "joiner"}, spec
        # prometheus-client appends _total to counters; nothing else may end so.
        assert (spec.type == "counter") == spec.name.endswith("_total"), spec
        if spec.type == "histogram":
            assert spec.name.endswith("_seconds"), f"{spec.name}: durations are in seconds"
        if spec.type == "gauge":
            assert spec.name.endswith(UNIT_SUFFIXES) or spec.name.endswith("_version"), spec
        assert not spec.labels & (TARGET_LABELS | {"le"}), f"{spec.name}: reserved label"
        assert not {"id", "fid", "user", "item"} & spec.labels, f"{spec.name}: per-id label"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_referenced_metrics_are_defined(source: str) -> None:
    specs = read_metric_list()
    referenced = {name for text in SOURCES[source]() for name in NAME.findall(text)}
    assert len(referenced) >= 5, f"found too few names in {source}: the scan is broken"
    unknown = {name for name in referenced if family(name) not in specs}
    assert not unknown, f"{source} references metrics no issue defines: {sorted(unknown)}"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_selectors_use_defined_labels(source: str) -> None:
    specs = read_metric_list()
    checked = 0
    for text in SOURCES[source]():
        for name, matchers in SELECTOR.findall(text.replace('\\"', '"')):
            spec = specs[family(name)]
            allowed = spec.labels | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
            used = set(MATCHER_LABEL.findall(matchers))
            assert used <= allowed, f"{name}{{{matchers}}}: {used - allowed} not a label of it"
            checked += 1
    assert checked, f"no selector with label matchers in {source}"


def test_histograms_are_queried_through_their_series() -> None:
    """A bare histogram name selects nothing: PromQL needs _bucket, _sum or _count."""
    specs = read_metric_list()
    queries = [
        *dashboard_queries(),
        *(r["expr"] for g in load_yaml(RULES)["groups"] for r in g["rules"]),
    ]
    for query in queries:
        for name in NAME.findall(query):
            assert specs.get(name) is None or specs[name].type != "histogram", query


def test_dashboard_covers_the_issue_panels() -> None:
    """The panels issue 6 lists for the drift dashboard query these series."""
    text = " ".join(" ".join(dashboard_queries()).split())
    for fragment in [
        'headrace_eval_auc{window="rolling"}',
        'headrace_eval_logloss{window="rolling"}',
        "headrace_drift_detections_total",
        "headrace_eval_label_rate",
        "rate(headrace_ingest_records_total[1m])",
        "headrace_kafka_consumer_lag_records",
        "headrace_embedding_rows",
        "headrace_embedding_admitted_total",
        "headrace_embedding_filtered_total",
        "headrace_embedding_expired_total",
        "headrace_sync_version",
        "headrace_serving_sync_lag_seconds",
        # Issue 14: the joiner.
        "rate(headrace_join_emitted_events_total[1m])",
        "headrace_join_pending_impressions",
        "headrace_join_early_actions",
        "headrace_join_late_actions_total",
        "headrace_join_window_occupancy_ratio",
    ]:
        assert fragment in text, f"the dashboard has no query with {fragment}"
