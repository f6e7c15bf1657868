"""Corrections for how the joiner shaped the stream: downsampled negatives and weights.

A negative kept with probability ``r`` makes the model's odds ``1 / r`` too
high, so its logit is ``ln(r)`` too high (Monolith's log-odds correction):
adding ``ln(r)`` calibrates it. For metrics, such a negative stands for
``1 / r`` negatives of the full stream.
"""

from __future__ import annotations

import numpy as np

from headrace.stream import Batch

__all__ = ["calibrated_probabilities", "metric_weights"]


def calibrated_probabilities(logits: np.ndarray, sample_rates: np.ndarray | None) -> np.ndarray:
    """``sigmoid(logit + ln(r))`` per event (``r`` = 1 where ``sample_rates`` is None).

    >>> calibrated_probabilities(np.array([0.0]), np.array([0.5], dtype=np.float32))
    array([0.33333333])
    """
    z = np.asarray(logits, dtype=np.float64)
    if sample_rates is not None:
        z = z + np.log(sample_rates.astype(np.float64))
    return 1.0 / (1.0 + np.exp(-z))


def metric_weights(batch: Batch) -> np.ndarray | None:
    """How many events of the full stream each event stands for (None: one each).

    A label ``y`` weighs ``y + (1 - y) / r`` (negatives were kept at ``r``,
    positives always), times the event's own ``weight``.
    """
    weights = batch.weights
    if batch.sample_rates is None or not (batch.sample_rates < 1).any():
        # The events' own weights; checked before the float64 copy (the common case is all 1).
        return None if weights is None or (weights == 1).all() else weights.astype(np.float64)
    y = batch.labels.astype(np.float64)
    represented = y + (1.0 - y) / batch.sample_rates.astype(np.float64)
    if weights is not None:
        represented = weights.astype(np.float64) * represented
    return None if (represented == 1).all() else represented
