"""A serving worker's sync loop: read updates, apply whole ones, count the rest."""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from headrace.serving.params import ParameterState, RejectedUpdate
from headrace.serving.protocol import CorruptUpdate, SyncKey, UpdateAssembler, decode_part
from headrace.serving.transport import UpdateReader

__all__ = ["SyncLoop"]

log = logging.getLogger(__name__)


class SyncLoop:
    """Keeps a :class:`ParameterState` at the newest published version.

    :meth:`step` reads what is new and applies it; :meth:`start` runs it in
    a background thread every ``poll_interval`` seconds. A damaged or
    unfitting update is logged, counted by reason in
    ``headrace_serving_rejected_updates_total`` and skipped: the state keeps
    its last good version (after a gap it waits for the next snapshot).
    With ``key`` only updates signed with it apply; the others count as
    ``signature``.
    """

    def __init__(
        self,
        reader: UpdateReader,
        state: ParameterState,
        *,
        poll_interval: float = 0.1,
        registry: CollectorRegistry | None = None,
        key: SyncKey | None = None,
    ) -> None:
        self.reader = reader
        self.state = state
        self.key = key
        self.poll_interval = poll_interval
        self._assembler = UpdateAssembler()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lag_seconds = 0.0
        registry = registry if registry is not None else CollectorRegistry()
        self._rejected = Counter(
            "headrace_serving_rejected_updates",
            "Parameter updates refused (damaged, unsigned or forged, incomplete, out of order).",
            ["reason"],
            registry=registry,
        )
        Gauge(
            "headrace_serving_version", "Version this worker serves.", registry=registry
        ).set_function(lambda: state.version or 0)
        Gauge(
            "headrace_serving_model_timestamp_seconds",
            "Event time of the newest update applied.",
            registry=registry,
        ).set_function(lambda: state.event_time)
        Gauge(
            "headrace_serving_sync_lag_seconds",
            "Seconds from publishing the newest applied update to applying it.",
            registry=registry,
        ).set_function(lambda: self.lag_seconds)
        registry.register(_RowCollector(state))

    def step(self, timeout_s: float = 0.0) -> int:
        """Apply what the transport has now; returns how many updates applied."""
        applied = 0
        incomplete = self._assembler.incomplete
        for frame in self.reader.read(timeout_s):
            try:
                update = self._assembler.add(decode_part(frame, self.key))
                if update is None:
                    continue
                self.state.apply(update)
            except (CorruptUpdate, RejectedUpdate) as exc:
                log.warning(
                    "parameter update rejected (%s): %s; serving version %s",
                    exc.reason,
                    exc,
                    self.state.version,
                )
                self._rejected.labels(exc.reason).inc()
                continue
            self.lag_seconds = max(0.0, time.time() - update.published_at)
            applied += 1
        if dropped := self._assembler.incomplete - incomplete:
            self._rejected.labels("incomplete").inc(dropped)
        return applied

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="headrace-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.step(timeout_s=self.poll_interval):
                    self._stop.wait(self.poll_interval)
            except Exception:  # a transport hiccup must not end serving
                log.exception("parameter sync failed; retrying in 1 s")
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.reader.close()


class _RowCollector:
    """Where the worker's rows are: in memory, and the replica cache's hits and misses."""

    def __init__(self, state: ParameterState) -> None:
        self.state = state

    def collect(self):
        stats = self.state.cache_stats()
        yield GaugeMetricFamily(
            "headrace_serving_memory_rows",
            "Embedding rows in this worker's memory (with a memory budget, the cached ones).",
            value=stats["memory_rows"],
        )
        yield GaugeMetricFamily(
            "headrace_serving_memory_bytes",
            "Bytes of memory the embedding rows in memory take.",
            value=stats["memory_bytes"],
        )
        yield CounterMetricFamily(
            "headrace_serving_cache_hits",
            "Looked-up ids found in memory (with a memory budget).",
            value=stats["hits"],
        )
        yield CounterMetricFamily(
            "headrace_serving_cache_misses",
            "Looked-up ids read from the local replica (with a memory budget).",
            value=stats["misses"],
        )
