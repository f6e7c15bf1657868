"""Frequency filters that decide when an id earns a row.

:class:`CountingFilter` counts the occurrences of ids that have no row yet in
bounded memory; :func:`probabilistic_admit` is Monolith's counter-free
alternative.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from headrace.embedding_store._hashing import mix64, salted, unit_uniform
from headrace.embedding_store.config import FilterConfig

_COUNT_MAX = 255
# Buckets per persisted chunk: a checkpoint rewrites only the chunks that
# changed since the last one.
CHUNK_BUCKETS = 4096


class CountingFilter:
    """Occurrence counts of pending ids in a fixed-size fingerprint table.

    Each pending id takes one entry, a 16-bit fingerprint and an 8-bit
    saturating count, in a bucket chosen by its hash. Memory is fixed at
    ``3 * capacity`` bytes whatever the number of distinct ids. Two ids that
    share a bucket and a fingerprint share a count (a false admission, about
    ``bucket_size / 65535`` per pending id in a full bucket); a full bucket
    evicts its lowest count, which delays an admission but never hastens one.

    Examples
    --------
    >>> import numpy as np
    >>> f = CountingFilter(FilterConfig(capacity=1024, bucket_size=8))
    >>> keys = np.array([11, 12], dtype=np.uint64)
    >>> f.add(keys, np.array([1, 2])).tolist()
    [1, 2]
    >>> f.add(keys, np.array([1, 1])).tolist()
    [2, 3]
    >>> f.discard(keys[:1]); f.add(keys[:1], np.array([1])).tolist()
    [1]
    """

    def __init__(self, config: FilterConfig) -> None:
        self.config = config
        self._n_buckets = config.capacity // config.bucket_size
        shape = (self._n_buckets, config.bucket_size)
        self._fingerprints = np.zeros(shape, dtype=np.uint16)
        self._counts = np.zeros(shape, dtype=np.uint8)
        self._dirty = np.zeros(self.n_chunks, dtype=bool)

    @property
    def n_chunks(self) -> int:
        return -(-self._n_buckets // CHUNK_BUCKETS)

    @property
    def nbytes(self) -> int:
        return self._fingerprints.nbytes + self._counts.nbytes

    def _locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bucket and nonzero fingerprint of each key (keys are uint64 hashes)."""
        h = mix64(keys)
        buckets = (h % np.uint64(self._n_buckets)).astype(np.int64)
        fingerprints = (h >> np.uint64(48)).astype(np.uint16)
        fingerprints[fingerprints == 0] = 1  # 0 marks an empty entry
        return buckets, fingerprints

    def add(self, keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Add ``counts`` occurrences of distinct ``keys``; return their new counts."""
        buckets, fingerprints = self._locate(keys)
        return self._add_entries(buckets, fingerprints, counts)

    def merge(self, other: CountingFilter) -> None:
        """Add every count of ``other`` (of the same config) here, as if its ids came here.

        For re-sharding: ids are not kept, only their fingerprints, so a
        rank takes the pending counts of every old shard; those of ids it
        does not own are never asked for (they take room, as in one process).

        Examples
        --------
        >>> import numpy as np
        >>> a, b = (CountingFilter(FilterConfig(capacity=1024, bucket_size=8)) for _ in "ab")
        >>> _ = a.add(np.array([11, 12], dtype=np.uint64), np.array([1, 2]))
        >>> b.merge(a)
        >>> b.add(np.array([11, 12, 13], dtype=np.uint64), np.array([1, 1, 1])).tolist()
        [2, 3, 1]
        """
        if other.config != self.config:
            raise ValueError(f"filters differ: {other.config!r} is not {self.config!r}")
        buckets, columns = np.nonzero(other._counts)
        self._add_entries(
            buckets,
            other._fingerprints[buckets, columns],
            other._counts[buckets, columns].astype(np.int64),
        )

    def _add_entries(
        self, buckets: np.ndarray, fingerprints: np.ndarray, counts: np.ndarray
    ) -> np.ndarray:
        """Add ``counts`` to the entries (bucket, fingerprint); return their new counts."""
        # Keys with the same (bucket, fingerprint) are one entry to the filter.
        entry = buckets * 65536 + fingerprints
        entries, first, inverse = np.unique(entry, return_index=True, return_inverse=True)
        added = np.bincount(inverse, weights=counts, minlength=len(entries)).astype(np.int64)
        buckets, fingerprints = buckets[first], fingerprints[first]

        match = self._fingerprints[buckets] == fingerprints[:, None]
        found = match.any(axis=1)
        columns = match.argmax(axis=1)
        totals = np.empty(len(entries), dtype=np.int64)
        b, c = buckets[found], columns[found]
        totals[found] = np.minimum(self._counts[b, c].astype(np.int64) + added[found], _COUNT_MAX)
        self._counts[b, c] = totals[found]

        new = np.flatnonzero(~found)
        totals[new] = np.minimum(added[new], _COUNT_MAX)
        self._insert(buckets[new], fingerprints[new], totals[new])
        self._dirty[buckets // CHUNK_BUCKETS] = True
        return totals[inverse]

    def _insert(self, buckets: np.ndarray, fingerprints: np.ndarray, counts: np.ndarray) -> None:
        # One new entry per bucket per round, into an empty column if there is
        # one, else over the lowest count (an empty column has count 0).
        while len(buckets):
            _, first = np.unique(buckets, return_index=True)
            b = buckets[first]
            columns = self._counts[b].argmin(axis=1)
            self._fingerprints[b, columns] = fingerprints[first]
            self._counts[b, columns] = counts[first]
            rest = np.ones(len(buckets), dtype=bool)
            rest[first] = False
            buckets, fingerprints, counts = buckets[rest], fingerprints[rest], counts[rest]

    def discard(self, keys: np.ndarray) -> None:
        """Forget the counts of ``keys`` (ids that were admitted)."""
        if len(keys) == 0:
            return
        buckets, fingerprints = self._locate(keys)
        match = self._fingerprints[buckets] == fingerprints[:, None]
        rows, columns = np.nonzero(match)
        self._fingerprints[buckets[rows], columns] = 0
        self._counts[buckets[rows], columns] = 0
        self._dirty[buckets // CHUNK_BUCKETS] = True

    def dirty_chunks(self) -> Iterator[tuple[int, bytes]]:
        """(chunk number, bytes) of each chunk changed since :meth:`clear_dirty`."""
        for chunk in np.flatnonzero(self._dirty).tolist():
            yield chunk, self._chunk_bytes(chunk)

    def clear_dirty(self) -> None:
        self._dirty[:] = False

    def _chunk_bytes(self, chunk: int) -> bytes:
        part = slice(chunk * CHUNK_BUCKETS, (chunk + 1) * CHUNK_BUCKETS)
        return self._fingerprints[part].tobytes() + self._counts[part].tobytes()

    def load_chunk(self, chunk: int, blob: bytes) -> None:
        """Restore one chunk written by :meth:`dirty_chunks`."""
        part = slice(chunk * CHUNK_BUCKETS, (chunk + 1) * CHUNK_BUCKETS)
        target = self._fingerprints[part]
        if not 0 <= chunk < self.n_chunks or len(blob) != 3 * target.size:
            raise ValueError(
                f"filter chunk {chunk} has {len(blob)} bytes, expected {3 * target.size}"
            )
        split = 2 * target.size
        target[:] = np.frombuffer(blob[:split], dtype=np.uint16).reshape(target.shape)
        self._counts[part] = np.frombuffer(blob[split:], dtype=np.uint8).reshape(target.shape)


def probabilistic_admit(
    keys: np.ndarray, counts: np.ndarray, probability: float, seed: int, draw: int
) -> np.ndarray:
    """Monolith's probabilistic filter, for distinct ``keys`` seen ``counts`` times.

    Each occurrence is admitted with ``probability``, so an id seen ``c``
    times in one call is admitted with ``1 - (1 - probability) ** c``. The
    draw is a hash of ``(seed, draw, key)``, so a replay that repeats the same
    calls admits the same ids.
    """
    u = unit_uniform(salted(keys.view(np.int64), seed * 1_000_003 + draw))
    return u < 1.0 - (1.0 - probability) ** counts
