"""A vectorised open-addressing hash map from 64-bit fids to row numbers.

Keyed by the full fid, never folded modulo a table size: two ids share a row
only if they are the same id. Every operation takes a whole batch of fids and
probes it with linear probing, in one compiled call (see
:mod:`~headrace.embedding_store._kernels`) or in numpy rounds, so the per-fid
cost is a few machine instructions rather than a Python-level dict access.

The numpy rounds are there for stores under a memory budget: numba, which
compiles the kernels, costs a process ~150 MB of RSS once a kernel runs
(LLVM's shared libraries ~90 MB, its compiler state and code ~60 MB), a
third of the bench's 410 MB budget, while a budgeted store's lookups wait
on RocksDB, not on probes. So the kernels module (and numba) is imported
only when a compiled index or table first needs it.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import numpy as np

from headrace.embedding_store._hashing import mix64, mixed_salts

#: A position's row: ``EMPTY`` ends a chain, ``TOMBSTONE`` (a removed key) lets it go on.
EMPTY = -1
TOMBSTONE = -2
# Linear probing stays short while at most 70% of the positions hold live
# keys or tombstones; a rehash brings the load back to at most half, so that
# rehashes do not follow each other.
_MAX_LOAD = 0.7
_REHASH_LOAD = 0.5
# A position's home is ``salted(fid, 0x5EED_1D5) & mask``: this is the salt mixed.
_SALT = mixed_salts(np.array([0x5EED_1D5]))[0]
# Positions a key looks through for a free one in a round of the numpy placement.
_PLACE_WINDOW = 8
# Keys placed at a time in numpy rounds: a rehash of 1M keys at once held
# ~180 MB of temporaries (positions of each key's window, sorts).
_PLACE_CHUNK = 1 << 14


@functools.cache  # a dict lookup, not import machinery, on the per-step path
def kernels() -> ModuleType:
    """The compiled kernels (:mod:`~headrace.embedding_store._kernels`), imported on first use."""
    return importlib.import_module("headrace.embedding_store._kernels")


def _int64(fids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(fids, dtype=np.int64)


class FidIndex:
    """Map int64 fids to row numbers.

    Examples
    --------
    >>> import numpy as np
    >>> index = FidIndex()
    >>> index.insert(np.array([7, 2**62], dtype=np.int64), np.array([0, 1]))
    >>> index.find(np.array([2**62, 5, 7], dtype=np.int64)).tolist()
    [1, -1, 0]
    >>> numpy_index = FidIndex(compiled=False)  # the same map, without numba
    >>> numpy_index.insert(np.array([7, 2**62], dtype=np.int64), np.array([0, 1]))
    >>> numpy_index.find(np.array([2**62, 5, 7], dtype=np.int64)).tolist()
    [1, -1, 0]

    Parameters
    ----------
    capacity
        Positions to start with (rounded up to a power of two).
    compiled
        Probe and place with the compiled kernels (the in-memory training
        path); ``False``: in numpy rounds, ~5x slower a key and without
        numba in the process (see the module's docstring).
    """

    def __init__(self, capacity: int = 1024, compiled: bool = True) -> None:
        self.compiled = compiled
        self._allocate(max(16, 1 << (int(capacity) - 1).bit_length()))
        self._live = 0

    def _allocate(self, capacity: int) -> None:
        self._mask = np.uint64(capacity - 1)
        # Key and row side by side, so a probe costs one cache miss, not two.
        self._entries = np.zeros((capacity, 2), dtype=np.int64)
        self._keys = self._entries[:, 0]
        self._rows = self._entries[:, 1]
        self._rows[:] = EMPTY
        self._used = 0  # live keys plus tombstones

    def __len__(self) -> int:
        return self._live

    @property
    def nbytes(self) -> int:
        return self._entries.nbytes

    def _probe(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions and rows of ``fids``; -1 for both where a fid is absent."""
        fids = _int64(fids)
        if self.compiled:
            return kernels().probe(self._entries, self._mask, _SALT, fids)
        n = len(fids)
        positions = np.full(n, -1, dtype=np.int64)
        rows = np.full(n, -1, dtype=np.int64)
        pending = np.arange(n)
        pos = self._home(fids)
        mask = int(self._mask)
        while len(pending):
            entries = np.take(self._entries, pos, axis=0)
            at_rows = entries[:, 1]
            hit = (at_rows >= 0) & (entries[:, 0] == fids[pending])
            positions[pending[hit]] = pos[hit]
            rows[pending[hit]] = at_rows[hit]
            # A tombstone or another key: the chain goes on; an empty position ends it.
            go_on = ~hit & (at_rows != EMPTY)
            pending = pending[go_on]
            pos = (pos[go_on] + 1) & mask
        return positions, rows

    def _home(self, fids: np.ndarray) -> np.ndarray:
        """Home positions of int64 ``fids``, as the kernels compute them."""
        return (mix64(fids.view(np.uint64) ^ _SALT) & self._mask).view(np.int64)

    def find(self, fids: np.ndarray) -> np.ndarray:
        """Row of each fid (int64), -1 where the fid is absent."""
        return self._probe(fids)[1]

    def insert(self, fids: np.ndarray, rows: np.ndarray) -> None:
        """Add distinct fids that are not in the index yet, with their rows."""
        self.reserve(len(fids))
        self._place(fids, rows)

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more fids (a rehash if they would pass the load limit)."""
        if self._used + n > _MAX_LOAD * len(self._keys):
            self._rehash(self._live + n)

    @property
    def arrays(self) -> tuple[np.ndarray, np.uint64, np.uint64]:
        """(entries, mask, salt) for a kernel that adds fids itself (see :meth:`added`).

        Call :meth:`reserve` first. Only for a ``compiled`` index.
        """
        return self._entries, self._mask, _SALT

    def added(self, fids: int, empty: int) -> None:
        """Count ``fids`` added by a kernel, ``empty`` of them at empty positions."""
        self._live += fids
        self._used += empty

    def _place(self, fids: np.ndarray, rows: np.ndarray) -> None:
        # Each key takes the first free position of its chain (a tombstone
        # or an empty one): no empty position ever separates a key from its home.
        fids, rows = _int64(fids), _int64(rows)
        if self.compiled:
            self._used += kernels().place(self._entries, self._mask, _SALT, fids, rows)
        else:
            for start in range(0, len(fids), _PLACE_CHUNK):
                stop = start + _PLACE_CHUNK
                self._place_rounds(fids[start:stop], rows[start:stop])
        self._live += len(fids)

    def _place_rounds(self, fids: np.ndarray, rows: np.ndarray) -> None:
        """:meth:`_place` in numpy rounds."""
        pending = np.arange(len(fids))
        pos = self._home(fids)
        mask = int(self._mask)
        window = np.arange(_PLACE_WINDOW)
        while len(pending):
            # Each key looks for the first free position in a window of its
            # chain; every position before it is taken.
            where = (pos[:, None] + window) & mask
            free = self._rows[where] < 0
            any_free = free.any(axis=1)
            has_free = np.flatnonzero(any_free)
            target = where[has_free, free[has_free].argmax(axis=1)]
            # Several keys may want one position: the first takes it, the
            # others look on from there in the next round.
            claimed, first = np.unique(target, return_index=True)
            winners = pending[has_free[first]]
            self._used += int(np.count_nonzero(self._rows[claimed] == EMPTY))
            self._keys[claimed] = fids[winners]
            self._rows[claimed] = rows[winners]
            pos[has_free] = target
            pos = np.where(any_free, pos, (pos + _PLACE_WINDOW) & mask)
            placed = np.zeros(len(pending), dtype=bool)
            placed[has_free[first]] = True
            pending, pos = pending[~placed], pos[~placed]

    def remove(self, fids: np.ndarray) -> np.ndarray:
        """Remove fids; returns the rows they had (-1 where absent)."""
        positions, rows = self._probe(fids)
        present = positions >= 0
        self._rows[positions[present]] = TOMBSTONE
        self._live -= int(np.count_nonzero(present))
        return rows

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All (fids, rows) pairs, in position order."""
        live = self._rows >= 0
        return self._keys[live], self._rows[live]

    def _rehash(self, needed: int) -> None:
        """Grow so that ``needed`` keys fit, dropping tombstones on the way."""
        fids, rows = self.items()
        capacity = len(self._keys)
        while needed > _REHASH_LOAD * capacity:
            capacity *= 2
        # Let the old table go before the new one is made: a rehash that
        # only clears tombstones (after evictions) held both, +67 MB at 4M
        # positions.
        del self._entries, self._keys, self._rows
        self._allocate(capacity)
        self._live = 0
        self._place(fids, rows)
