"""Prometheus counters that follow running totals counted elsewhere."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["CounterTotals"]


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
