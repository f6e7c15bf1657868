"""Which rows stay in memory when a store has a memory budget.

With a budget, RocksDB holds every row as of the last checkpoint and memory
holds a cache of rows: the rows changed since then (dirty, pinned until the
next checkpoint writes them) and clean rows kept because they are hot. A
training lookup that misses memory reads every missing row of the batch in
one multi-get and keeps them; when memory is full, clean rows leave it in
the order the eviction policy gives:

- ``"lfu"`` (the default): the fewest batches that used the row, counted in
  a 16-bit counter per row that is halved whenever the table has counted as
  many uses as it holds rows ten times over (aging, so that yesterday's hot
  rows make way); ties go to the least recently used. On Zipf traffic it
  keeps the head of the distribution that LRU lets one-off ids push out.
- ``"lru"``: the least recently used.

Eviction runs in bulk down to a low-water mark (``SLACK`` of the budget
below what a lookup needs), so its O(rows in memory) selection runs once per
many batches rather than on every one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from headrace.embedding_store.table import RowTable

__all__ = ["SLACK", "CacheCounters", "EvictionPolicy", "UseClock", "choose_victims"]

EvictionPolicy = Literal["lfu", "lru"]

# Share of the budget freed below a lookup's need when memory is full.
SLACK = 0.05
# Aging: halve the use counts after this many uses per row in memory.
_AGING_USES_PER_ROW = 10
_FREQ_MAX = np.uint16(0xFFFF)


@dataclass
class CacheCounters:
    """Counters of a budgeted store, since it was opened.

    ``hits`` and ``misses`` count looked-up positions served from memory and
    positions that needed a disk read (whether or not the row was there);
    ``read_ahead`` the distinct pairs of misses that a read-ahead had read.
    """

    hits: int = 0
    misses: int = 0
    disk_reads: int = 0
    read_ahead: int = 0
    evictions: int = 0


class UseClock:
    """The use counts and recency of rows of one table, and their aging.

    Examples
    --------
    >>> from headrace.embedding_store.config import SlotConfig
    >>> table = RowTable(SlotConfig(name="a", dim=2), ["a"], [0], seed=0)
    >>> rows = table.create(0, np.array([5, 6, 7], dtype=np.int64), 0.0)
    >>> clock = UseClock()
    >>> clock.note(table, rows[:2]); clock.note(table, rows[:1])
    >>> choose_victims(table, np.ones(3, dtype=bool), 2, "lfu").tolist()  # 7 unused, 6 used once
    [1, 2]
    """

    def __init__(self) -> None:
        self.time = 0
        self.uses_since_aging = 0

    def note(self, table: RowTable, rows: np.ndarray) -> None:
        """Count one use of ``rows`` (a batch's rows; a repeated row counts once)."""
        self.time += 1
        freq = table.freq[rows]
        table.freq[rows] = freq + (freq < _FREQ_MAX)
        table.used[rows] = self.time
        self.uses_since_aging += len(rows)
        if self.uses_since_aging > _AGING_USES_PER_ROW * max(len(table), 1):
            table.freq >>= 1
            self.uses_since_aging = 0


def choose_victims(
    table: RowTable, candidates: np.ndarray, n: int, policy: EvictionPolicy
) -> np.ndarray:
    """The ``n`` rows that the policy evicts first among ``candidates``, in row order.

    ``candidates`` is a mask ``(m,)`` bool of rows ``0 .. m - 1``. The rows
    are found by thresholds (the use count below which every row goes, then
    the last use among the rows at that count) rather than by sorting every
    candidate's score: on the bench's 20M-row table that sort held ~30 MB
    of temporaries for 2M rows in memory, at every eviction.
    """
    m = len(candidates)
    n = min(n, int(np.count_nonzero(candidates)))
    chosen = np.zeros(m, dtype=bool)
    tier = candidates
    if policy == "lfu" and n:
        freq = table.freq[:m]
        # The least count ``level`` at which at least n candidates have a count <= level.
        level = int(np.searchsorted(np.cumsum(np.bincount(freq[candidates])), n))
        chosen = candidates & (freq < level)
        tier = candidates & (freq == level)
        n -= int(np.count_nonzero(chosen))
    if n:
        used = table.used[:m]
        times = used[tier]
        times.partition(n - 1)
        cutoff = times[n - 1]
        del times
        older = tier & (used < cutoff)
        chosen |= older
        n -= int(np.count_nonzero(older))
        # Rows last used at the cutoff (a whole batch's rows share one time).
        chosen[np.flatnonzero(tier & (used == cutoff))[:n]] = True
    return np.flatnonzero(chosen)
