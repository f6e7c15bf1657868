"""A bounded time series of the trainer's figures, for the built-in dashboard.

Prometheus keeps history for an operator who runs one; the dashboard on the
trainer's own HTTP port must show trends without it. :class:`TrainingHistory`
is an after-step hook that samples the trainer about once a second of wall
time and keys every sample by event time, so a replayed log draws the same
curves as the live stream it came from. Given a file, it appends every sample
and detection to it as a JSON line and reads them back on start, so a
restarted trainer's dashboard goes on from where the last run's left off.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headrace.trainer.loop import StepResult, Trainer

__all__ = [
    "DriftMark",
    "JoinerStatus",
    "RankStatus",
    "RanksStatus",
    "Sample",
    "TrainingHistory",
    "WorkerStatus",
]

_log = logging.getLogger(__name__)


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
class JoinerStatus:
    """What one joiner (``headrace join``) reported at its last poll.

    Attributes
    ----------
    up
        Whether it answered.
    emitted, actions, late
        Running totals: labelled events emitted, actions taken in, actions
        that joined nothing (every reason).
    pending, early
        Impressions whose window is open; actions waiting for their impression.
    occupancy
        Share of the window the pending impressions span.
    """

    up: bool
    emitted: int | None = None
    actions: int | None = None
    late: int | None = None
    pending: int | None = None
    early: int | None = None
    occupancy: float | None = None


@dataclass(frozen=True)
class RankStatus:
    """One rank of a distributed run, as of the ranks' last exchange of figures.

    Attributes
    ----------
    records, trained
        Records it read and events it trained (running totals of this run).
    ingest_rate
        Records it read per wall second since the exchange before.
    consumer_lag
        Records behind the end of its Kafka partitions (``None``: not Kafka).
    """

    records: int
    trained: int
    ingest_rate: float
    consumer_lag: int | None = None


@dataclass(frozen=True)
class RanksStatus:
    """Progressive metrics over every rank's events, and each rank's ingest (rank 0 shows it).

    ``metrics`` holds ``auc``, ``logloss``, ``calibration`` (whole run) and
    ``rolling_auc``, ``rolling_logloss`` (the ranks' rolling windows
    together); ``None`` where undefined yet.
    """

    metrics: Mapping[str, float | None]
    ranks: Mapping[str, RankStatus]


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
    #: The store's rows in memory, its memory budget (None: every row in
    #: memory) and its cache hits and misses since it was opened.
    memory_rows: int = 0
    memory_budget: int | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    #: Each joiner's status by URL (none unless the trainer polls joiners).
    joiners: Mapping[str, JoinerStatus] = field(default_factory=dict)
    #: The figures of all ranks (rank 0 of a distributed run only).
    ranks: RanksStatus | None = None


def _sample_from_json(record: dict[str, Any]) -> Sample:
    workers = {url: WorkerStatus(**status) for url, status in record["workers"].items()}
    joiners = {url: JoinerStatus(**status) for url, status in record.get("joiners", {}).items()}
    ranks = record.get("ranks")
    if ranks is not None:
        each = {rank: RankStatus(**status) for rank, status in ranks["ranks"].items()}
        ranks = RanksStatus(ranks["metrics"], each)
    return Sample(**(record | {"workers": workers, "joiners": joiners, "ranks": ranks}))


def _idle_since(last: Sample, sample: Sample) -> bool:
    """Whether ``sample`` goes on the idle stretch that ``last`` is part of."""
    return last.ingest_rate == sample.ingest_rate == 0 and last.trained == sample.trained


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


class TrainingHistory:
    """Samples a trainer at its ticks, events or not; readable from other threads.

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
    joiners
        Returns the latest status of each joiner, by URL.
    ranks
        Returns the latest figures of all ranks of a distributed run.
    clock
        Wall-clock seconds (injectable for tests).
    path
        A JSON-lines file that keeps the samples and detections across
        restarts; read on start, appended to after, and rewritten with the
        newest ``capacity`` of each whenever it holds twice as many lines.
    """

    def __init__(
        self,
        *,
        every_s: float = 1.0,
        capacity: int = 3600,
        sync_version: Callable[[], int | None] | None = None,
        workers: Callable[[], Mapping[str, WorkerStatus]] | None = None,
        joiners: Callable[[], Mapping[str, JoinerStatus]] | None = None,
        ranks: Callable[[], RanksStatus | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        path: Path | None = None,
    ) -> None:
        self.every_s = every_s
        self.sync_version = sync_version
        self.workers = workers
        self.joiners = joiners
        self.ranks = ranks
        self.clock = clock
        self._samples: deque[Sample] = deque(maxlen=capacity)
        self._drifts: deque[DriftMark] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._last: tuple[float, int] | None = None  # wall time, records read
        self._event_time: float | None = None  # the newest of the last step's events
        # Detections already shown; see attach().
        self._drift_seen: Counter[tuple[str, str]] = Counter()
        self._path = path
        self._file: IO[str] | None = None
        self._lines = 0  # in the file
        if path is not None:
            self._load(path)
            self._rewrite()

    def _load(self, path: Path) -> None:
        """Read what earlier runs saved; a line a crash cut short is skipped."""
        if not path.exists():
            return
        skipped = 0
        for line in path.read_text().splitlines():
            try:
                [(kind, record)] = json.loads(line).items()
                if kind == "sample":
                    self._samples.append(_sample_from_json(record))
                elif kind == "drift":
                    self._drifts.append(DriftMark(**record))
            except (ValueError, TypeError, KeyError, AttributeError):
                skipped += 1
        if skipped:
            _log.warning("skipped %d unreadable lines of the dashboard history %s", skipped, path)

    def _rewrite(self) -> None:
        """Replace the file with the samples and detections held now, atomically."""
        assert self._path is not None
        if self._file is not None:
            self._file.close()
        temporary = self._path.with_name(self._path.name + ".tmp")
        with temporary.open("w") as out:
            out.writelines(self._lines_of("drift", self._drifts))
            out.writelines(self._lines_of("sample", self._samples))
        os.replace(temporary, self._path)
        self._lines = len(self._drifts) + len(self._samples)
        self._file = self._path.open("a")

    @staticmethod
    def _lines_of(kind: str, items: Iterable[Sample | DriftMark]) -> list[str]:
        return [json.dumps({kind: asdict(item)}) + "\n" for item in items]

    def _save(self, kind: str, items: list[Sample] | list[DriftMark]) -> None:
        """Append to the file (called holding the lock)."""
        if self._file is None:
            return
        self._file.writelines(self._lines_of(kind, items))
        self._file.flush()
        self._lines += len(items)
        if self._lines > 2 * self._samples.maxlen:  # type: ignore[operator]
            self._rewrite()

    def close(self) -> None:
        """Close the history file (the samples stay readable)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def attach(self, trainer: Trainer) -> None:
        """Note drift after each of ``trainer``'s steps and sample at its ticks.

        The hooks run after those added before this call.
        """
        # A restored drift monitor already counts the detections of earlier runs.
        self._drift_seen = Counter(trainer.drift.counts)
        trainer.after_step.append(self.after_step)
        trainer.tick_hooks.append(self.tick)

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        """Note the step's drift detections and its newest event time."""
        self._event_time = float(result.batch.ts.max())
        self._note_drift(trainer, self._event_time)

    def tick(self, trainer: Trainer) -> None:
        """Sample when one is due, events or not (an idle source samples ingest 0).

        Samples begin after the first step, which gives them an event time.
        An idle stretch is one sample, brought up to date at every tick (and
        saved once), so that a quiet night does not push the day's samples out.
        """
        now = self.clock()
        records = trainer.stream.records_read
        if self._last is None or self._event_time is None:
            self._last = (now, records)
            return
        elapsed = now - self._last[0]
        if elapsed < self.every_s:
            return
        rate = (records - self._last[1]) / elapsed
        self._last = (now, records)
        sample = self._sample(trainer, self._event_time, rate)
        with self._lock:
            last = self._samples[-1] if self._samples else None
            if last is not None and _idle_since(last, sample):
                self._samples[-1] = sample
                return
        self._append(sample)

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
        self._append_drifts(marks)

    def _append_drifts(self, marks: list[DriftMark]) -> None:
        with self._lock:
            self._drifts.extend(marks)
            self._save("drift", marks)

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
            memory_rows=stats.memory_rows,
            memory_budget=stats.memory_budget,
            cache_hits=stats.cache_hits,
            cache_misses=stats.cache_misses,
            joiners=dict(self.joiners()) if self.joiners else {},
            ranks=self.ranks() if self.ranks else None,
        )

    def _append(self, sample: Sample) -> None:
        with self._lock:
            self._samples.append(sample)
            self._save("sample", [sample])

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
