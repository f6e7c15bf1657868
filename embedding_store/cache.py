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
    positions that needed a disk read (whether or not the row was there).
    """

    hits: int = 0
    misses: int = 0
    disk_reads: int = 0
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
    >>> choose_victims(table, rows, 2, "lfu").tolist()  # 7 unused, then 6 used once
    [2, 1]
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
    """The ``n`` of ``candidates`` (rows) that the policy evicts first, in that order."""
    if n >= len(candidates):
        n = len(candidates)
    if n == 0:
        return candidates[:0]
    used = table.used[candidates].astype(np.int64)
    score = used if policy == "lru" else (table.freq[candidates].astype(np.int64) << 32) | used
    if n < len(candidates):
        chosen = np.argpartition(score, n - 1)[:n]
    else:
        chosen = np.arange(len(candidates))
    return candidates[chosen[np.argsort(score[chosen], kind="stable")]]
