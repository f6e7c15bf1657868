"""Drift detection on per-batch signals with River's detectors.

Signals: the batch's mean log loss (concept drift), its label rate (prior
drift) and, per slot, the share of ids that had no row before the batch
(feature drift: a new population of users or items).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from river import drift

from headrace.trainer.config import DriftConfig

__all__ = ["Detection", "DriftMonitor", "SignalWindow"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    """One drift alarm: which detector, on which signal, at which event time."""

    detector: str
    signal: str
    event_time: float


class SignalWindow:
    """Sums the per-step drift signals until a window of ``events`` events is full.

    The detectors then see one mean per window, so what they see (and the
    cost of feeding them) does not depend on the batch size.

    Parameters
    ----------
    events
        Events per window.
    slots
        Slots whose lookups are counted, in the order of ``lookups`` arrays.

    Examples
    --------
    >>> window = SignalWindow(4, ("item",))
    >>> window.add(loss_sum=2.0, label_sum=1.0, events=2, lookups=np.array([2]))
    False
    >>> window.add(loss_sum=1.0, label_sum=1.0, events=2, lookups=np.array([3]))
    True
    >>> window.take({"item": 1})
    (0.75, 0.5, {'item': 0.2})
    """

    def __init__(self, events: int, slots: tuple[str, ...]) -> None:
        self.events = events
        self.slots = slots
        self._clear()

    def _clear(self) -> None:
        self._loss = self._labels = 0.0
        self._count = 0
        self._lookups = np.zeros(len(self.slots), dtype=np.int64)

    def add(self, loss_sum: float, label_sum: float, events: int, lookups: np.ndarray) -> bool:
        """Count one step; True when the window is full (then :meth:`take` it)."""
        self._loss += loss_sum
        self._labels += label_sum
        self._count += events
        self._lookups += lookups
        return self._count >= self.events

    def take(self, unseen: Mapping[str, int]) -> tuple[float, float, dict[str, float]]:
        """Mean loss, label rate and per-slot unseen share of the window; starts a new one.

        ``unseen`` holds, per slot, the lookups of the window that found no row.
        """
        count = max(self._count, 1)
        shares = {
            slot: unseen.get(slot, 0) / int(n)
            for slot, n in zip(self.slots, self._lookups, strict=True)
            if n
        }
        signals = (self._loss / count, self._labels / count, shares)
        self._clear()
        return signals


class DriftMonitor:
    """One River detector per signal; counts and logs every detection.

    Parameters
    ----------
    config
        Detector kind and sensitivity.
    slots
        Slots watched for feature drift.
    """

    def __init__(self, config: DriftConfig, slots: tuple[str, ...]) -> None:
        self.config = config
        signals = ["loss", "label_rate"]
        if config.feature_drift:
            signals += [f"unseen_ids.{slot}" for slot in slots]
        self._detectors = {signal: self._new_detector() for signal in signals}
        self.counts: Counter[tuple[str, str]] = Counter()

    def _new_detector(self) -> drift.ADWIN | drift.PageHinkley:
        if self.config.detector == "adwin":
            return drift.ADWIN(delta=self.config.adwin_delta)
        return drift.PageHinkley(threshold=self.config.ph_threshold)

    def update(
        self, loss: float, label_rate: float, unseen: Mapping[str, float], event_time: float
    ) -> list[Detection]:
        """Feed one batch's signals; returns (and logs) the detections it triggered."""
        values = {"loss": loss, "label_rate": label_rate}
        values.update((f"unseen_ids.{slot}", share) for slot, share in unseen.items())
        found = []
        for signal, value in values.items():
            detector = self._detectors.get(signal)
            if detector is None:
                continue
            detector.update(value)
            if detector.drift_detected:
                found.append(Detection(self.config.detector, signal, event_time))
        for detection in found:
            self.counts[(detection.detector, detection.signal)] += 1
            when = datetime.fromtimestamp(detection.event_time, UTC).isoformat()
            log.warning(
                "drift detected by %s on %s at event time %s (%.3f); watch the rolling "
                "AUC and log loss: the model adapts online, no action is needed unless "
                "they stay degraded",
                detection.detector,
                detection.signal,
                when,
                detection.event_time,
            )
        return found
