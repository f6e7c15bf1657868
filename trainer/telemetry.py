"""Prometheus metrics of one trainer, in a registry of its own.

Names and units follow the Prometheus conventions (seconds, bytes, ``_total``
for counters). Labels are bounded: slots, dead-letter reasons, detectors,
signals, Kafka partitions and the two windows ``run`` and ``rolling``; never
an id.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from headrace.embedding_store import StoreStats
from headrace.metrics import CounterTotals
from headrace.trainer.evaluation import ProgressiveMetrics

__all__ = ["TrainerTelemetry"]

_STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
_CHECKPOINT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class TrainerTelemetry:
    """The trainer's Prometheus metrics.

    Parameters
    ----------
    registry
        Where the metrics are registered; one per trainer, so several can
        live in one process (tests) and ``--metrics-port`` serves just this.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.records = Counter(
            "headrace_ingest_records", "Records read from the source", registry=r
        )
        self.dead_letters = Counter(
            "headrace_ingest_dead_letters", "Records sent to dead letters", ["reason"], registry=r
        )
        self.lag = Gauge(
            "headrace_kafka_consumer_lag_records",
            "Records between the trainer's position and the partition's end",
            ["topic", "partition"],
            registry=r,
        )
        self.examples = Counter("headrace_train_examples", "Examples trained on", registry=r)
        self.step_duration = Histogram(
            "headrace_train_step_duration_seconds",
            "Wall time of one training step (lookup, forward, backward, updates)",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.auc = Gauge(
            "headrace_eval_auc",
            "Progressive AUC (predicted before training)",
            ["window"],
            registry=r,
        )
        self.logloss = Gauge(
            "headrace_eval_logloss", "Progressive log loss", ["window"], registry=r
        )
        self.label_rate = Gauge(
            "headrace_eval_label_rate", "Mean label over the rolling window", registry=r
        )
        self.calibration = Gauge(
            "headrace_eval_calibration_ratio",
            "Mean predicted probability over the mean label (1 is calibrated)",
            ["window"],
            registry=r,
        )
        self.drift = Counter(
            "headrace_drift_detections",
            "Drift detections",
            ["detector", "signal"],
            registry=r,
        )
        self.rows = Gauge("headrace_embedding_rows", "Rows in the store", ["slot"], registry=r)
        self.memory = Gauge(
            "headrace_embedding_memory_bytes", "Memory of the store's tables and filter", registry=r
        )
        self.admitted = Counter("headrace_embedding_admitted", "Rows created", ["slot"], registry=r)
        self.filtered = Counter(
            "headrace_embedding_filtered",
            "Lookups of ids without a row, held back by the admission filter",
            ["slot"],
            registry=r,
        )
        self.expired = Counter(
            "headrace_embedding_expired", "Rows removed by expiry", ["slot"], registry=r
        )
        self.memory_rows = Gauge(
            "headrace_embedding_memory_rows", "Rows of the store in memory", registry=r
        )
        self.memory_budget = Gauge(
            "headrace_embedding_memory_budget_bytes",
            "The store's memory budget for rows (0: unlimited, every row in memory)",
            registry=r,
        )
        self.disk_rows = Gauge(
            "headrace_embedding_disk_rows",
            "Rows in RocksDB as of the last checkpoint",
            registry=r,
        )
        self.disk_bytes = Gauge(
            "headrace_embedding_disk_bytes", "Size of the store's RocksDB files", registry=r
        )
        self.cache_hits = Counter(
            "headrace_embedding_cache_hits",
            "Looked-up ids whose row was in memory (stores with a memory budget)",
            registry=r,
        )
        self.cache_misses = Counter(
            "headrace_embedding_cache_misses",
            "Looked-up ids that needed a RocksDB read (stores with a memory budget)",
            registry=r,
        )
        self.read_ahead = Counter(
            "headrace_embedding_read_ahead",
            "Distinct missed ids whose rows a read-ahead had read while the batch before trained",
            registry=r,
        )
        self.evictions = Counter(
            "headrace_embedding_evictions", "Clean rows dropped from memory", registry=r
        )
        self.forced_checkpoints = Counter(
            "headrace_checkpoint_forced",
            "Checkpoints taken early because changed rows filled half the memory budget",
            registry=r,
        )
        self.checkpoint_duration = Histogram(
            "headrace_checkpoint_duration_seconds",
            "Wall time of one checkpoint",
            buckets=_CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.last_event = Gauge(
            "headrace_last_event_timestamp_seconds",
            "Event time of the newest event trained on",
            registry=r,
        )
        self._totals = CounterTotals()

    def store(self, stats: StoreStats) -> None:
        """Publish the store's figures (its counters count since it was opened)."""
        self.memory.set(stats.memory_bytes)
        self.memory_rows.set(stats.memory_rows)
        self.memory_budget.set(stats.memory_budget or 0)
        self.disk_rows.set(stats.disk_rows)
        self.disk_bytes.set(stats.disk_bytes)
        self._totals.advance(self.cache_hits, "cache_hits", stats.cache_hits)
        self._totals.advance(self.cache_misses, "cache_misses", stats.cache_misses)
        self._totals.advance(self.read_ahead, "read_ahead", stats.read_ahead)
        self._totals.advance(self.evictions, "evictions", stats.evictions)
        for slot, rows in stats.rows.items():
            self.rows.labels(slot=slot).set(rows)
            self._totals.advance(self.admitted, f"admitted:{slot}", stats.admitted[slot], slot=slot)
            self._totals.advance(self.filtered, f"filtered:{slot}", stats.filtered[slot], slot=slot)
            self._totals.advance(self.expired, f"expired:{slot}", stats.expired[slot], slot=slot)

    def ingest(self, records: int, dead_letters: Mapping[str, int]) -> None:
        """Publish the stream's cumulative record and dead-letter counts of this process."""
        self._totals.advance(self.records, "records", records)
        for reason, count in dead_letters.items():
            self._totals.advance(self.dead_letters, f"dead:{reason}", count, reason=reason)

    def kafka_lag(self, lag: Mapping[str, int]) -> None:
        """Publish lag per ``"<topic>:<partition>"``."""
        for key, records in lag.items():
            topic, _, partition = key.rpartition(":")
            self.lag.labels(topic=topic, partition=partition).set(records)

    def evaluation(self, m: ProgressiveMetrics) -> None:
        """Publish progressive metrics over the whole run and the rolling window."""
        self.auc.labels(window="run").set(m.auc())
        self.auc.labels(window="rolling").set(m.rolling_auc())
        self.logloss.labels(window="run").set(m.logloss())
        self.logloss.labels(window="rolling").set(m.rolling_logloss())
        self.label_rate.set(m.rolling_label_rate())
        self.calibration.labels(window="run").set(m.calibration())
        self.calibration.labels(window="rolling").set(m.rolling_calibration())
