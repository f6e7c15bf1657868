"""The rows of one slot: vectors, optimizer state and last-seen times in memory."""

from __future__ import annotations

import numpy as np

from headrace.embedding_store import optimizers
from headrace.embedding_store._hashing import initial_rows
from headrace.embedding_store.config import SlotConfig
from headrace.embedding_store.index import FidIndex

_GROWTH = 1.5
_MIN_CAPACITY = 1024


class ChangeLog:
    """Rows changed and fids removed since the last :meth:`clear`.

    Unbounded on purpose: it never forgets a change, and its size is there
    for the reader to decide on a snapshot instead.
    """

    def __init__(self, capacity: int) -> None:
        self._rows = np.zeros(capacity, dtype=bool)
        self._removed: list[np.ndarray] = []

    def grow(self, capacity: int) -> None:
        self._rows = _grown(self._rows, capacity)

    def mark(self, rows: np.ndarray) -> None:
        self._rows[rows] = True

    def mark_removed(self, rows: np.ndarray, fids: np.ndarray) -> None:
        self._rows[rows] = False
        self._removed.append(fids)

    def pending(self) -> tuple[np.ndarray, np.ndarray]:
        """Changed rows and removed fids (distinct), without clearing them."""
        removed = np.unique(np.concatenate(self._removed)) if self._removed else _NO_FIDS
        return np.flatnonzero(self._rows), removed

    def size(self) -> int:
        """Number of pending changes (removals of one id counted once per removal)."""
        return int(np.count_nonzero(self._rows)) + sum(len(f) for f in self._removed)

    def clear(self) -> None:
        self._rows[:] = False
        self._removed = []

    @property
    def nbytes(self) -> int:
        return self._rows.nbytes + sum(f.nbytes for f in self._removed)


_NO_FIDS = np.empty(0, dtype=np.int64)


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


class SlotTable:
    """Rows of one slot, addressed by row number through a :class:`FidIndex`.

    Removed rows go to a free list and are reused, so memory follows the live
    row count. Two change logs see every creation, update and removal: one
    for checkpoints (``dirty``) and one for parameter sync (``touched``).
    """

    def __init__(self, config: SlotConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.index = FidIndex()
        width = optimizers.state_width(config.optimizer) * config.dim
        self.weights = np.zeros((_MIN_CAPACITY, config.dim), dtype=np.float32)
        self.state = np.zeros((_MIN_CAPACITY, width), dtype=np.float32)
        self.last_seen = np.zeros(_MIN_CAPACITY, dtype=np.float64)
        self.row_fid = np.zeros(_MIN_CAPACITY, dtype=np.int64)
        self.live = np.zeros(_MIN_CAPACITY, dtype=bool)
        # Per-row scratch space for finding duplicate rows without sorting.
        self._scratch = np.zeros(_MIN_CAPACITY, dtype=np.int32)
        self._high_water = 0
        self._free = np.empty(0, dtype=np.int64)
        self.dirty = ChangeLog(_MIN_CAPACITY)
        self.touched = ChangeLog(_MIN_CAPACITY)
        self.admitted = 0
        self.filtered = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        arrays = (
            self.weights,
            self.state,
            self.last_seen,
            self.row_fid,
            self.live,
            self._scratch,
            self._free,
        )
        return (
            sum(a.nbytes for a in arrays)
            + self.index.nbytes
            + self.dirty.nbytes
            + self.touched.nbytes
        )

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of ``rows``; a zero vector where the row is -1."""
        # np.take copies whole rows, several times faster than fancy indexing.
        values = np.take(self.weights, rows, axis=0, mode="clip")
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            values[missing] = 0.0
        return values

    def create(self, fids: np.ndarray, last_seen: np.ndarray | float) -> np.ndarray:
        """Rows for distinct new fids, initialised from ``(seed, fid)``."""
        cfg = self.config
        init = cfg.initializer
        rows = self.load(
            fids,
            initial_rows(fids, cfg.dim, self.seed, init.kind, init.scale),
            optimizers.initial_state(cfg.optimizer, len(fids), cfg.dim),
            last_seen,
        )
        self.dirty.mark(rows)
        self.touched.mark(rows)
        self.admitted += len(fids)
        return rows

    def load(
        self,
        fids: np.ndarray,
        weights: np.ndarray,
        state: np.ndarray,
        last_seen: np.ndarray | float,
    ) -> np.ndarray:
        """Place rows of distinct new fids with the given contents; returns their rows."""
        rows = self._allocate(len(fids))
        self.weights[rows] = weights
        self.state[rows] = state
        self.last_seen[rows] = last_seen
        self.row_fid[rows] = fids
        self.live[rows] = True
        self.index.insert(fids, rows)
        return rows

    def _allocate(self, n: int) -> np.ndarray:
        keep = len(self._free) - min(n, len(self._free))
        reused, self._free = self._free[keep:], self._free[:keep]
        fresh = n - len(reused)
        if self._high_water + fresh > len(self.weights):
            self._grow(self._high_water + fresh)
        rows = np.concatenate([reused, np.arange(self._high_water, self._high_water + fresh)])
        self._high_water += fresh
        return rows

    def _grow(self, needed: int) -> None:
        capacity = max(needed, int(len(self.weights) * _GROWTH))
        self.weights = _grown(self.weights, capacity)
        self.state = _grown(self.state, capacity)
        self.last_seen = _grown(self.last_seen, capacity)
        self.row_fid = _grown(self.row_fid, capacity)
        self.live = _grown(self.live, capacity)
        self._scratch = _grown(self._scratch, capacity)
        self.dirty.grow(capacity)
        self.touched.grow(capacity)

    def see(self, rows: np.ndarray, event_time: np.ndarray | float) -> None:
        """Record a training lookup of existing ``rows`` at ``event_time``."""
        if np.ndim(event_time) == 0:
            self.last_seen[rows] = np.maximum(np.take(self.last_seen, rows), event_time)
        else:
            np.maximum.at(self.last_seen, rows, event_time)
        self.dirty.mark(rows)

    def sum_by_row(self, rows: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct ``rows`` (live, >= 0) and the sums of their ``grads``.

        Each row's gradients are added in batch order, so the sums are the
        same in every run.
        """
        n = len(rows)
        positions = np.arange(n, dtype=np.int32)
        # The last position of each row wins the scratch cell and stands for it.
        self._scratch[rows] = positions
        representative = self._scratch[rows]
        is_first = representative == positions
        compact = np.cumsum(is_first) - 1
        # Unbuffered adds over the flattened sums: numpy's fast path for
        # np.add.at is 1-d. (torch's index_add_ is faster alone, but its
        # worker threads stall badly when the other core is busy.)
        dim = grads.shape[1]
        summed = np.zeros((int(compact[-1]) + 1, dim), dtype=np.float32)
        targets = compact[representative][:, None] * dim + np.arange(dim)
        np.add.at(summed.reshape(-1), targets.reshape(-1), grads.reshape(-1))
        return rows[is_first], summed

    def update(self, rows: np.ndarray, grads: np.ndarray) -> None:
        """Apply summed gradients to distinct ``rows``."""
        weights, state = optimizers.update(
            self.config.optimizer,
            np.take(self.weights, rows, axis=0),
            np.take(self.state, rows, axis=0),
            grads,
        )
        self.weights[rows] = weights
        self.state[rows] = state
        self.dirty.mark(rows)
        self.touched.mark(rows)

    def remove(self, rows: np.ndarray) -> np.ndarray:
        """Remove live ``rows``; returns their fids."""
        fids = self.row_fid[rows]
        self.index.remove(fids)
        self.live[rows] = False
        self.dirty.mark_removed(rows, fids)
        self.touched.mark_removed(rows, fids)
        self._free = np.concatenate([self._free, rows])
        return fids

    def expire(self, now: float) -> int:
        """Remove rows whose last training lookup is ``expire_after`` or more before ``now``."""
        if self.config.expire_after is None:
            return 0
        cutoff = now - self.config.expire_after
        rows = np.flatnonzero(
            self.live[: self._high_water] & (self.last_seen[: self._high_water] <= cutoff)
        )
        self.remove(rows)
        self.expired += len(rows)
        return len(rows)

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.live[: self._high_water])
