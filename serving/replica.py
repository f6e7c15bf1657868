"""A serving worker's rows under a memory budget: a local RocksDB replica and a cache.

Without a budget a worker holds every row of its version in memory. With
one, the rows of the snapshot a worker bootstrapped from live in a RocksDB
database of its own (the replica, one directory per snapshot, written as one
ingested SST file), deltas change it in one write batch each, and memory
holds a cache of the rows requests used last, at most the budget's bytes
(vectors, their fids, use stamps and the index), shared among the slots by
their share of the rows. A lookup that misses the cache reads the missing
rows in one multi-get and keeps them, evicting the least recently used.

Versions stay whole as they are in memory: requests and deltas take the
state's lock in turn, a delta changes the replica and the cache only after
its write batch is in, and a snapshot builds a new replica beside the old
one, which it replaces under the lock. The replica needs no durability: a
restarted worker bootstraps from the next snapshot, so it is written without
the WAL and removed when replaced or closed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from headrace.embedding_store import _layout as layout
from headrace.embedding_store import rocks
from headrace.embedding_store.index import FidIndex
from headrace.embedding_store.rocks import Checkpoint
from headrace.serving.protocol import SlotRows

__all__ = ["CachedSlot", "Replica"]

# Share of a slot's cache freed below the need when it is full, so that the
# O(cache) choice of victims runs once per many lookups.
_SLACK = 0.05
# Worst-case bytes of index per cached row: 16-byte entries, at least a
# quarter of them live (the index is sized at twice the rows, rounded up).
_INDEX_BYTES_PER_ROW = 64


class CachedSlot:
    """The rows of one slot: in the replica, the recently used ones also in memory."""

    def __init__(self, db: Rdict, slot_id: int, dim: int, rows: int, budget: int) -> None:
        self._db = db
        self.slot_id = slot_id
        self.dim = dim
        self.rows = rows
        self.capacity = max(1, budget // (4 * dim + 16 + _INDEX_BYTES_PER_ROW))
        self.index = FidIndex(capacity=2 * self.capacity, compiled=False)  # no numba, as in params
        self.vectors = np.zeros((self.capacity, dim), dtype=np.float32)
        self.fid_of = np.zeros(self.capacity, dtype=np.int64)
        self.used = np.zeros(self.capacity, dtype=np.int64)
        self.free = np.arange(self.capacity)[::-1].copy()  # a stack of free rows
        self.n_free = self.capacity
        self.clock = 0
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        arrays = (self.vectors, self.fid_of, self.used, self.free)
        return self.index.nbytes + sum(a.nbytes for a in arrays)

    def __len__(self) -> int:
        return self.rows

    def cached(self) -> int:
        return len(self.index)

    def gather(self, fids: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
        """Vectors of ``fids`` ``(n, dim)``; ``fill`` (or zeros) for ids the version lacks."""
        self.clock += 1
        rows = self.index.find(fids)
        values = np.zeros((len(fids), self.dim), dtype=np.float32)
        hit = rows >= 0
        values[hit] = self.vectors[rows[hit]]
        self.used[rows[hit]] = self.clock
        self.hits += int(np.count_nonzero(hit))
        missing = np.flatnonzero(~hit)
        self.misses += len(missing)
        if not len(missing):
            return values
        distinct, inverse = np.unique(fids[missing], return_inverse=True)
        found, vectors = self.read(distinct)
        fetched = np.zeros((len(distinct), self.dim), dtype=np.float32)
        if fill is not None:
            fetched[~found] = fill
        fetched[found] = vectors
        values[missing] = fetched[inverse]
        self._keep(distinct[found], vectors)
        return values

    def read(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which distinct ``fids`` the replica has, and their vectors ``(found, dim)``."""
        keys = layout.row_keys(self.slot_id, fids)
        blobs = rocks.multi_get(self._db, keys)
        found = np.fromiter((b is not None for b in blobs), dtype=bool, count=len(blobs))
        data = b"".join(b for b in blobs if b is not None)
        return found, np.frombuffer(data, dtype=np.float32).reshape(-1, self.dim)

    def _keep(self, fids: np.ndarray, vectors: np.ndarray) -> None:
        """Put rows read from the replica into the cache, evicting if it is full."""
        n = min(len(fids), self.capacity)
        fids, vectors = fids[:n], vectors[:n]
        if n > self.n_free:
            self._evict(n - self.n_free + int(_SLACK * self.capacity))
            n = min(n, self.n_free)
            fids, vectors = fids[:n], vectors[:n]
        rows = self.free[self.n_free - n : self.n_free][::-1]
        self.n_free -= n
        self.vectors[rows] = vectors
        self.fid_of[rows] = fids
        self.used[rows] = self.clock
        self.index.insert(fids, rows)

    def _evict(self, n: int) -> None:
        """Drop the ``n`` least recently used rows of the cache."""
        _, rows = self.index.items()
        n = min(n, len(rows))
        if n < len(rows):
            rows = rows[np.argpartition(self.used[rows], n - 1)[:n]]
        self._release(self.index.remove(self.fid_of[rows]))

    def _release(self, rows: np.ndarray) -> None:
        rows = rows[rows >= 0]
        self.free[self.n_free : self.n_free + len(rows)] = rows
        self.n_free += len(rows)

    def changes(self, rows: SlotRows) -> tuple[int, list[bytes], list[bytes], list[bytes]]:
        """Row count change, keys to delete, keys and values to put for a delta."""
        removed = np.unique(rows.removed)
        present, _ = self.read(removed) if len(removed) else (np.zeros(0, bool), None)
        fids, first = np.unique(rows.fids[::-1], return_index=True)
        last = len(rows.fids) - 1 - first  # a fid repeated in a delta: its last vector
        existing, _ = self.read(fids) if len(fids) else (np.zeros(0, bool), None)
        # Removed then put again within a delta: the put wins (as in memory).
        gone = removed[present & ~np.isin(removed, fids)]
        change = int(np.count_nonzero(~existing)) - len(gone)
        values = np.ascontiguousarray(rows.vectors[last], dtype=np.float32)
        put_keys = layout.row_keys(self.slot_id, fids)
        put_values = [values[i].tobytes() for i in range(len(fids))]
        return change, layout.row_keys(self.slot_id, gone), put_keys, put_values

    def update_cache(self, rows: SlotRows, change: int) -> None:
        """After a delta is in the replica: drop removed rows, refresh cached ones."""
        self._release(self.index.remove(np.unique(rows.removed)))
        cached = self.index.find(rows.fids)
        hit = cached >= 0
        # Rows of a fid repeated in the delta: the last assignment wins, as on disk.
        self.vectors[cached[hit]] = rows.vectors[hit]
        self.rows += change


class Replica:
    """The rows of one snapshot and the deltas after it, under ``memory_budget`` bytes.

    Parameters
    ----------
    parent
        Directory to create the replica's own directory in (a temporary one
        each time, so that several workers and versions never share one).
    slots
        The snapshot's rows per slot.
    memory_budget
        Bytes of memory for cached rows, shared among the slots by their rows.
    """

    def __init__(self, parent: Path, slots: Mapping[str, SlotRows], memory_budget: int) -> None:
        parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="replica-", dir=parent))
        options = rocks.options()
        options.create_if_missing(True)
        try:
            self._db = Rdict(
                str(self.path / "db"),
                options,
                column_families={"default": options},
            )
            self._write_snapshot(slots, options)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        total = sum(len(rows.fids) * rows.vectors.shape[1] for rows in slots.values()) or 1
        self.slots = {
            name: CachedSlot(
                self._db,
                slot_id,
                rows.vectors.shape[1],
                len(np.unique(rows.fids)),
                # Each slot's share of the budget follows its share of the bytes.
                memory_budget * len(rows.fids) * rows.vectors.shape[1] // total,
            )
            for slot_id, (name, rows) in enumerate(slots.items())
        }
        self._names = {name: slot_id for slot_id, name in enumerate(slots)}

    def _write_snapshot(self, slots: Mapping[str, SlotRows], options: Options) -> None:
        change = Checkpoint()
        run = change.run(layout.ROW_PREFIX, layout.ROW_KEY_LEN)
        for slot_id, rows in enumerate(slots.values()):
            vectors = np.ascontiguousarray(rows.vectors, dtype=np.float32)
            keys = layout.packed_row_keys(slot_id, rows.fids)
            run.add(keys, _vector_values(vectors), np.arange(len(keys)))
        if len(run):
            change.ingest(self._db, options, self.path / "snapshot.sst")

    @property
    def nbytes(self) -> int:
        """Bytes of memory the cached rows take."""
        return sum(slot.nbytes for slot in self.slots.values())

    @property
    def hits(self) -> int:
        return sum(slot.hits for slot in self.slots.values())

    @property
    def misses(self) -> int:
        return sum(slot.misses for slot in self.slots.values())

    def apply(self, slots: Mapping[str, SlotRows]) -> None:
        """Apply a delta's rows: one write batch, then the cache; nothing if the write fails."""
        batch = WriteBatch(raw_mode=True)
        counts = {}
        for name, rows in slots.items():
            change, deletes, put_keys, put_values = self.slots[name].changes(rows)
            for key in deletes:
                batch.delete(key)
            for key, value in zip(put_keys, put_values, strict=True):
                batch.put(key, value)
            counts[name] = change
        self._db.write(batch, _no_wal())
        for name, rows in slots.items():
            self.slots[name].update_cache(rows, counts[name])

    def close(self) -> None:
        """Close the database and remove the replica's directory."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)


def _vector_values(vectors: np.ndarray):
    def values(items: np.ndarray) -> list[bytes]:
        return layout.split_keys(vectors[items].view(np.uint8))

    return values


def _no_wal() -> WriteOptions:
    options = WriteOptions()
    options.disable_wal = True
    return options
