"""The joiner's Prometheus metrics (``headrace_join_*``)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from headrace.metrics import CounterTotals

__all__ = ["JoinTelemetry"]


class JoinTelemetry:
    """Exports the joiner's counters and gauges to ``registry``.

    Counters follow the joiner's own running totals (which survive restarts
    in its state): :meth:`update` adds what changed since the last call.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "headrace_join_input_records", "Records read, by input.", ["input"], registry=registry
        )
        self.dead_letters = Counter(
            "headrace_join_dead_letters",
            "Input records sent to dead letters.",
            ["input", "reason"],
            registry=registry,
        )
        self.emitted = Counter(
            "headrace_join_emitted_events",
            "Labelled events emitted, by label (1 positive, 0 negative).",
            ["label"],
            registry=registry,
        )
        self.dropped = Counter(
            "headrace_join_negatives_dropped",
            "Negatives left out by negative downsampling.",
            registry=registry,
        )
        self.late = Counter(
            "headrace_join_late_actions",
            "Actions that joined nothing, by reason (after_window, no_impression, buffer_full).",
            ["reason"],
            registry=registry,
        )
        self.actions = Counter(
            "headrace_join_actions", "Actions taken in (of the positive types).", registry=registry
        )
        self.pending = Gauge(
            "headrace_join_pending_impressions",
            "Impressions whose window is open.",
            registry=registry,
        )
        self.early = Gauge(
            "headrace_join_early_actions",
            "Actions waiting for their impression.",
            registry=registry,
        )
        self.occupancy = Gauge(
            "headrace_join_window_occupancy_ratio",
            "Share of the window the pending impressions span.",
            registry=registry,
        )
        self.watermark = Gauge(
            "headrace_join_watermark_timestamp_seconds",
            "Event time up to which windows are closed.",
            registry=registry,
        )
        self.commit_duration = Histogram(
            "headrace_join_commit_duration_seconds",
            "Flushing the output and committing state and positions.",
            registry=registry,
        )
        self._totals = CounterTotals()
        # Labelled counters with known labels start at 0, so rate() works at once.
        for label in ("0", "1"):
            self.emitted.labels(label=label)
        for reason in ("after_window", "no_impression", "buffer_full"):
            self.late.labels(reason=reason)

    def update(self, counters: Mapping[str, int]) -> None:
        """Fold the joiner's running totals into the exported counters."""
        for name, total in counters.items():
            if name == "positives":
                self._totals.advance(self.emitted, name, total, label="1")
            elif name == "negatives":
                self._totals.advance(self.emitted, name, total, label="0")
            elif name == "negatives_dropped":
                self._totals.advance(self.dropped, name, total)
            elif name == "actions":
                self._totals.advance(self.actions, name, total)
            elif name.startswith("late_"):
                reason = name.removeprefix("late_")
                self._totals.advance(self.late, name, total, reason=reason)
            elif name.startswith("records_"):
                source = name.removeprefix("records_")
                self._totals.advance(self.records, name, total, input=source)
            elif name.startswith("dead_"):
                source, _, reason = name.removeprefix("dead_").partition(":")
                self._totals.advance(self.dead_letters, name, total, input=source, reason=reason)
