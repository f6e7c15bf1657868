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
    weights = None if batch.weights is None else batch.weights.astype(np.float64)
    if batch.sample_rates is not None and (batch.sample_rates < 1).any():
        y = batch.labels.astype(np.float64)
        represented = y + (1.0 - y) / batch.sample_rates.astype(np.float64)
        weights = represented if weights is None else weights * represented
    if weights is not None and (weights == 1).all():
        return None
    return weights
