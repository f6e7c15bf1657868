"""The running trainer (with --publish) and a serving worker export every listed metric.

deploy/metrics.txt lists each metric the Prometheus rules and the Grafana
dashboard may reference (tests/deploy checks that they reference no other);
here the real processes of a running demo are scraped.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.demo.conftest import DemoStack, get_text
from tests.deploy.conftest import MetricSpec, read_metric_list

# Labelled counters whose series appear with the first event of their kind
# (a dead letter, a drift detection, a refused update): until then the
# process declares the family (HELP, TYPE) without samples.
ON_FIRST_EVENT = {
    "headrace_ingest_dead_letters_total",
    "headrace_drift_detections_total",
    "headrace_serving_rejected_updates_total",
}


def family_name(spec: MetricSpec) -> str:
    """The family name the Prometheus text parser reports (counters lose ``_total``)."""
    return spec.name.removesuffix("_total") if spec.type == "counter" else spec.name


def scrape(url: str) -> dict[str, tuple[str, list[dict[str, str]]]]:
    """Family name -> (type, label sets of its samples)."""
    return {
        family.name: (family.type, [sample.labels for sample in family.samples])
        for family in text_string_to_metric_families(get_text(f"{url}/metrics"))
    }


def test_every_listed_metric_is_exported(demo_stack: DemoStack) -> None:
    specs = read_metric_list()
    scraped = {
        "trainer": scrape(demo_stack.trainer_url),
        "serving": scrape(demo_stack.serving_urls[0]),
    }
    missing, empty, wrong = [], [], []
    # The joiner is no part of this demo; tests/joiner scrapes a running one.
    for spec in (s for s in specs.values() if s.exporter in scraped):
        family = scraped[spec.exporter].get(family_name(spec))
        if family is None:
            missing.append(f"{spec.name} ({spec.exporter})")
            continue
        kind, label_sets = family
        if kind != spec.type:
            wrong.append(f"{spec.name}: exported as {kind}, listed as {spec.type}")
        if not label_sets and spec.name not in ON_FIRST_EVENT:
            empty.append(spec.name)
        for labels in label_sets:
            extra = set(labels) - spec.labels - {"le"}
            if extra:
                wrong.append(f"{spec.name}: labels {sorted(extra)} are not in metrics.txt")
    assert not missing, f"listed in deploy/metrics.txt but not exported: {missing}"
    assert not empty, f"exported without any sample: {empty}"
    assert not wrong, wrong
