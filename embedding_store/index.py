"""A vectorised open-addressing hash map from 64-bit fids to row numbers.

Keyed by the full fid, never folded modulo a table size: two ids share a row
only if they are the same id. Every operation takes a whole batch of fids and
probes it in numpy rounds (linear probing), so the per-fid cost is a few
vector instructions rather than a Python-level dict access.
"""

from __future__ import annotations

import numpy as np

from headrace.embedding_store._hashing import salted

_EMPTY = -1
_TOMBSTONE = -2
# Linear probing stays short while at most 70% of the positions hold live
# keys or tombstones; a rehash brings the load back to at most half, so that
# rehashes do not follow each other.
_MAX_LOAD = 0.7
_REHASH_LOAD = 0.5
_HASH_SALT = 0x5EED_1D5
_PLACE_WINDOW = 8
# Keys placed at a time when the table grows.
_REHASH_CHUNK = 1 << 16


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

    def _home(self, fids: np.ndarray) -> np.ndarray:
        return (salted(fids, _HASH_SALT) & self._mask).astype(np.int64)

    def _probe(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions and rows of ``fids``; -1 for both where a fid is absent."""
        n = len(fids)
        positions = np.full(n, -1, dtype=np.int64)
        rows = np.full(n, -1, dtype=np.int64)
        pending = np.arange(n)
        pos = self._home(fids)
        mask = int(self._mask)
        window = np.arange(_PLACE_WINDOW)
        while len(pending):
            # A window of each chain per round: chains at 70% load run to
            # a dozen positions, and a round costs the same for one or eight.
            where = (pos[:, None] + window) & mask
            entries = np.take(self._entries, where, axis=0)
            slot_rows = entries[:, :, 1]
            hit = (slot_rows >= 0) & (entries[:, :, 0] == fids[pending][:, None])
            # The chain ends at the key or at an empty position, whichever
            # comes first; tombstones and other keys let it go on.
            ends = hit | (slot_rows == _EMPTY)
            ended = ends.any(axis=1)
            first = ends.argmax(axis=1)
            taken = np.arange(len(pending))
            found = ended & hit[taken, first]
            positions[pending[found]] = where[found, first[found]]
            rows[pending[found]] = slot_rows[found, first[found]]
            pending = pending[~ended]
            pos = (pos[~ended] + _PLACE_WINDOW) & mask
        return positions, rows

    def find(self, fids: np.ndarray) -> np.ndarray:
        """Row of each fid (int64), -1 where the fid is absent."""
        return self._probe(fids)[1]

    def insert(self, fids: np.ndarray, rows: np.ndarray) -> None:
        """Add distinct fids that are not in the index yet, with their rows."""
        if self._used + len(fids) > _MAX_LOAD * len(self._keys):
            self._rehash(self._live + len(fids))
        self._place(fids, np.asarray(rows, dtype=np.int64))

    def _place(self, fids: np.ndarray, rows: np.ndarray) -> None:
        pending = np.arange(len(fids))
        pos = self._home(fids)
        mask = int(self._mask)
        window = np.arange(_PLACE_WINDOW)
        while len(pending):
            # Each key looks for the first free position in a window of its
            # chain; every position before it is taken, so no empty position
            # ever separates a key from its home.
            where = (pos[:, None] + window) & mask
            free = self._rows[where] < 0
            has_free = np.flatnonzero(free.any(axis=1))
            target = where[has_free, free[has_free].argmax(axis=1)]
            # Several keys may want the same position: the first takes it,
            # the others look on from there in the next round.
            claimed, first = np.unique(target, return_index=True)
            winners = pending[has_free[first]]
            self._used += int(np.count_nonzero(self._rows[claimed] == _EMPTY))
            self._keys[claimed] = fids[winners]
            self._rows[claimed] = rows[winners]
            pos[has_free] = target
            pos = np.where(free.any(axis=1), pos, (pos + _PLACE_WINDOW) & mask)
            placed = np.zeros(len(pending), dtype=bool)
            placed[has_free[first]] = True
            pending, pos = pending[~placed], pos[~placed]
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
        # In chunks: a probe round holds ~90 bytes per key placed, so
        # placing 1.5M keys at once took ~130 MB on top of both tables.
        for start in range(0, len(fids), _REHASH_CHUNK):
            self._place(fids[start : start + _REHASH_CHUNK], rows[start : start + _REHASH_CHUNK])
