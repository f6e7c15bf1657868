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

from river import drift

from headrace.trainer.config import DriftConfig

__all__ = ["Detection", "DriftMonitor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    """One drift alarm: which detector, on which signal, at which event time."""

    detector: str
    signal: str
    event_time: float


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
