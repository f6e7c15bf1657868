"""A bounded time series of the trainer's figures, for the built-in dashboard.

Prometheus keeps history for an operator who runs one; the dashboard on the
trainer's own HTTP port must show trends without it. :class:`TrainingHistory`
is an after-step hook that samples the trainer about once a second of wall
time and keys every sample by event time, so a replayed log draws the same
curves as the live stream it came from.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headrace.trainer.loop import StepResult, Trainer

__all__ = ["DriftMark", "Sample", "TrainingHistory", "WorkerStatus"]


@dataclass(frozen=True)
class WorkerStatus:
    """What one serving worker reported at its last poll.

    Attributes
    ----------
    up
        Whether it answered.
    version
        Parameter version it serves (``None`` before its first snapshot).
    lag_s
        Its ``headrace_serving_sync_lag_seconds``: wall time since the
        update it applied last was published.
    """

    up: bool
    version: int | None = None
    lag_s: float | None = None


@dataclass(frozen=True)
class DriftMark:
    """A drift detection, at the event time of the batch that raised it."""

    event_time: float
    signal: str
    detector: str


@dataclass(frozen=True)
class Sample:
    """The trainer's figures at one moment, keyed by event time."""

    event_time: float
    wall_time: float
    trained: int
    rolling_auc: float | None
    rolling_logloss: float | None
    label_rate: float | None
    ingest_rate: float
    consumer_lag: int | None
    rows: Mapping[str, int]
    admitted: Mapping[str, int]
    filtered: Mapping[str, int]
    expired: Mapping[str, int]
    sync_version: int | None
    workers: Mapping[str, WorkerStatus] = field(default_factory=dict)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


class TrainingHistory:
    """Samples a trainer after its steps; readable from other threads.

    Parameters
    ----------
    every_s
        Wall seconds between samples.
    capacity
        Samples kept (the oldest go first): an hour at one a second.
    sync_version
        Returns the version the parameter publisher wrote last, if one runs.
    workers
        Returns the latest status of each serving worker, by URL.
    clock
        Wall-clock seconds (injectable for tests).
    """

    def __init__(
        self,
        *,
        every_s: float = 1.0,
        capacity: int = 3600,
        sync_version: Callable[[], int | None] | None = None,
        workers: Callable[[], Mapping[str, WorkerStatus]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_s = every_s
        self.sync_version = sync_version
        self.workers = workers
        self.clock = clock
        self._samples: deque[Sample] = deque(maxlen=capacity)
        self._drifts: deque[DriftMark] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._last: tuple[float, int] | None = None  # wall time, records read
        # Detections already shown; see attach().
        self._drift_seen: Counter[tuple[str, str]] = Counter()

    def attach(self, trainer: Trainer) -> None:
        """Run after each of ``trainer``'s steps (after hooks added before this one)."""
        # A restored drift monitor already counts the detections of earlier runs.
        self._drift_seen = Counter(trainer.drift.counts)
        trainer.after_step.append(self)

    def __call__(self, trainer: Trainer, result: StepResult) -> None:
        """The after-step hook: note drift detections, and sample when one is due."""
        event_time = float(result.batch.ts.max())
        self._note_drift(trainer, event_time)
        now = self.clock()
        records = trainer.stream.records_read
        if self._last is None:
            self._last = (now, records)
            return
        elapsed = now - self._last[0]
        if elapsed < self.every_s:
            return
        rate = (records - self._last[1]) / elapsed
        self._last = (now, records)
        self._append(self._sample(trainer, event_time, rate))

    def _note_drift(self, trainer: Trainer, event_time: float) -> None:
        counts = trainer.drift.counts
        new = counts - self._drift_seen
        if not new:
            return
        marks = [
            DriftMark(event_time, signal, detector)
            for (detector, signal), times in new.items()
            for _ in range(times)
        ]
        self._drift_seen = Counter(counts)
        with self._lock:
            self._drifts.extend(marks)

    def _sample(self, trainer: Trainer, event_time: float, rate: float) -> Sample:
        m = trainer.metrics
        stats = trainer.store.stats()
        return Sample(
            event_time=event_time,
            wall_time=time.time(),
            trained=trainer.state.trained,
            rolling_auc=_finite(m.rolling_auc()),
            rolling_logloss=_finite(m.rolling_logloss()),
            label_rate=_finite(m.rolling_label_rate()),
            ingest_rate=round(rate, 1),
            consumer_lag=sum(trainer.lag.values()) if trainer.lag else None,
            rows=dict(stats.rows),
            admitted=dict(stats.admitted),
            filtered=dict(stats.filtered),
            expired=dict(stats.expired),
            sync_version=self.sync_version() if self.sync_version else None,
            workers=dict(self.workers()) if self.workers else {},
        )

    def _append(self, sample: Sample) -> None:
        with self._lock:
            self._samples.append(sample)

    def samples(self) -> list[Sample]:
        """A copy of the samples, oldest first."""
        with self._lock:
            return list(self._samples)

    def drifts(self) -> list[DriftMark]:
        """A copy of the drift detections seen by this process, oldest first."""
        with self._lock:
            return list(self._drifts)

    def to_json(self, last: int | None = None) -> dict[str, Any]:
        """Samples and drift detections as JSON-ready dicts (``GET /api/history``).

        Parameters
        ----------
        last
            Only the newest ``last`` samples and detections (all when ``None``);
            ``drift_count`` counts them all.
        """
        samples, drifts = self.samples(), self.drifts()
        if last is not None:
            samples, drifts = samples[len(samples) - last :], drifts[len(drifts) - last :]
        return {
            "samples": [asdict(sample) for sample in samples],
            "drifts": [asdict(mark) for mark in drifts],
            "drift_count": len(self.drifts()),
        }
