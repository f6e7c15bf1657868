"""A vectorised open-addressing hash map from 64-bit fids to row numbers.

Keyed by the full fid, never folded modulo a table size: two ids share a row
only if they are the same id. Every operation takes a whole batch of fids and
probes it in one compiled call (linear probing, see
:mod:`~headrace.embedding_store._kernels`), so the per-fid cost is a few
machine instructions rather than a Python-level dict access.
"""

from __future__ import annotations

import numpy as np

from headrace.embedding_store import _kernels
from headrace.embedding_store._hashing import mixed_salts

_EMPTY = _kernels.EMPTY
_TOMBSTONE = _kernels.TOMBSTONE
# Linear probing stays short while at most 70% of the positions hold live
# keys or tombstones; a rehash brings the load back to at most half, so that
# rehashes do not follow each other.
_MAX_LOAD = 0.7
_REHASH_LOAD = 0.5
# A position's home is ``salted(fid, 0x5EED_1D5) & mask``: this is the salt mixed.
_SALT = mixed_salts(np.array([0x5EED_1D5]))[0]


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
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._allocate(max(16, 1 << (int(capacity) - 1).bit_length()))
        self._live = 0

    def _allocate(self, capacity: int) -> None:
        self._mask = np.uint64(capacity - 1)
        # Key and row side by side, so a probe costs one cache miss, not two.
        self._entries = np.zeros((capacity, 2), dtype=np.int64)
        self._keys = self._entries[:, 0]
        self._rows = self._entries[:, 1]
        self._rows[:] = _EMPTY
        self._used = 0  # live keys plus tombstones

    def __len__(self) -> int:
        return self._live

    @property
    def nbytes(self) -> int:
        return self._entries.nbytes

    def _probe(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions and rows of ``fids``; -1 for both where a fid is absent."""
        return _kernels.probe(self._entries, self._mask, _SALT, _int64(fids))

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

        Call :meth:`reserve` first.
        """
        return self._entries, self._mask, _SALT

    def added(self, fids: int, empty: int) -> None:
        """Count ``fids`` added by a kernel, ``empty`` of them at empty positions."""
        self._live += fids
        self._used += empty

    def _place(self, fids: np.ndarray, rows: np.ndarray) -> None:
        # Each key takes the first free position of its chain (a tombstone
        # or an empty one): no empty position ever separates a key from its home.
        self._used += _kernels.place(self._entries, self._mask, _SALT, _int64(fids), _int64(rows))
        self._live += len(fids)

    def remove(self, fids: np.ndarray) -> np.ndarray:
        """Remove fids; returns the rows they had (-1 where absent)."""
        positions, rows = self._probe(fids)
        present = positions >= 0
        self._rows[positions[present]] = _TOMBSTONE
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
