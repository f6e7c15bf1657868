"""Figures shared by the trainer, the generator and the joiner: Prometheus counters that
follow running totals counted elsewhere, and the AUC of binned scores."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import Counter

__all__ = ["CounterTotals", "histogram_auc"]


def histogram_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from per-bin counts of positives and negatives (ties in a bin count 1/2).

    Bins are in increasing order of score. Returns NaN until both labels
    have been seen.

    Examples
    --------
    >>> histogram_auc(np.array([0, 1, 1]), np.array([1, 1, 0]))
    0.875
    >>> histogram_auc(np.array([1, 0]), np.array([0, 0]))
    nan
    """
    positives, negatives = pos.sum(), neg.sum()
    if positives == 0 or negatives == 0:
        return math.nan
    negatives_below = np.cumsum(neg) - neg
    wins = float((pos * negatives_below).sum()) + 0.5 * float((pos * neg).sum())
    return wins / (float(positives) * float(negatives))


class CounterTotals:
    """Moves counters up to cumulative figures read elsewhere, never backwards.

    A component that counts in its own state (a trainer's checkpointed
    counters, the joiner's) hands its totals here; each call adds what
    changed since the last one.

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> registry = CollectorRegistry()
    >>> records = Counter("records", "Records read", ["topic"], registry=registry)
    >>> totals = CounterTotals()
    >>> totals.advance(records, "read:a", 5, topic="a")
    >>> totals.advance(records, "read:a", 7, topic="a")
    >>> registry.get_sample_value("records_total", {"topic": "a"})
    7.0
    """

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def advance(self, counter: Counter, key: str, total: int, **labels: str) -> None:
        """Move ``counter`` (with ``labels``) to ``total``, the figure tracked as ``key``."""
        # The child exists from the first call, at 0: a series that appears only
        # with its first increment hides that increment from rate() and increase().
        child = counter.labels(**labels) if labels else counter
        delta = total - self._seen.get(key, 0)
        if delta > 0:
            child.inc(delta)
            self._seen[key] = total
