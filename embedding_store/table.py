"""Rows of one or more slots that share their settings: vectors, optimizer state, last-seen times.

Slots with the same row settings (dim, initializer, optimizer, admission,
expiry) share one :class:`RowTable`, so a training step over all of them
costs one index probe, one gather and one optimizer update instead of one
per slot. A row is keyed by ``fid ^ salt(slot)``: distinct (slot, fid) pairs
collide only if their fids differ by exactly the two slots' 64-bit salts,
which is as unlikely as two values hashing to the same fid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headrace.embedding_store import optimizers
from headrace.embedding_store._hashing import as_uint64, initial_rows, mixed_salts
from headrace.embedding_store.config import Adagrad, SlotConfig
from headrace.embedding_store.index import FidIndex, kernels

_GROWTH = 1.5
_MIN_CAPACITY = 1024
# Removed or evicted ids the parameter-sync log holds before it lets them go
# (24 MB): a publisher sends a snapshot past its max_delta_rows (1M) anyway.
_LOSE_CHANGES_AFTER = 1 << 20
# Index keys use salts of their own, unrelated to the filter's and the index's.
_KEY_SALT = 0x6B65_7973


class ChangeLog:
    """Rows changed, (slot, fid) pairs removed, and changed pairs evicted since :meth:`clear`.

    It never forgets a change, and its size is there for the reader to
    decide on a snapshot instead. A changed row that leaves memory (only
    clean rows do: their value is the one on disk) is kept as its (slot,
    fid) pair, so that a reader can fetch it from disk.

    With ``lose_after`` (the log for parameter sync, which no one may read:
    a trainer without a publisher) a log holding more removed and evicted
    (slot, fid) pairs than that lets all of it go and is ``lost``: it
    records nothing until :meth:`clear`, and its reader must take a
    snapshot. Without it (the checkpoint's log) it grows until cleared.
    """

    def __init__(self, capacity: int, *, lose_after: int | None = None) -> None:
        self.rows = np.zeros(capacity, dtype=bool)
        # (local slots, fids, last_seen as persisted: NaN where not on disk)
        self._removed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._evicted: list[tuple[np.ndarray, np.ndarray]] = []
        self._pairs = 0  # (slot, fid) pairs held in _removed and _evicted
        self.lose_after = lose_after
        self.lost = False

    def grow(self, capacity: int) -> None:
        self.rows = _grown(self.rows, capacity)

    def mark(self, rows: np.ndarray) -> None:
        if not self.lost:
            self.rows[rows] = True

    def mark_removed(
        self, rows: np.ndarray, slots: np.ndarray, fids: np.ndarray, persisted: np.ndarray
    ) -> None:
        if self.lost:
            return
        self.rows[rows] = False
        self._removed.append((slots, fids, persisted))
        self._listed(len(fids))

    def mark_evicted(self, rows: np.ndarray, slots: np.ndarray, fids: np.ndarray) -> None:
        """Forget ``rows`` as rows; those marked changed are kept as (slot, fid) pairs."""
        changed = self.rows[rows]
        if changed.any():
            self._evicted.append((slots[changed], fids[changed]))
            self.rows[rows] = False
            self._listed(int(np.count_nonzero(changed)))

    def _listed(self, pairs: int) -> None:
        self._pairs += pairs
        if self.lose_after is not None and self._pairs > self.lose_after:
            self.clear()
            self.lost = True

    def pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Changed rows, and the slots and fids of removed rows (distinct pairs)."""
        if not self._removed:
            return np.flatnonzero(self.rows), _NO_IDS, _NO_IDS
        slots, fids, _ = self.removals()
        return (np.flatnonzero(self.rows), *distinct_pairs(slots, fids))

    def removals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every removal as (slots, fids, persisted last_seen), repeats included."""
        return _columns(self._removed, 3)

    def evictions(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct (slots, fids) of changed rows that left memory."""
        return distinct_pairs(*_columns(self._evicted, 2))

    def size(self) -> int:
        """Number of pending changes (removals of one id counted once per removal)."""
        return int(np.count_nonzero(self.rows)) + self._pairs

    def clear(self) -> None:
        self.rows[:] = False
        self._removed = []
        self._evicted = []
        self._pairs = 0
        self.lost = False

    @property
    def nbytes(self) -> int:
        return (
            self.rows.nbytes
            + sum(a.nbytes for entry in self._removed for a in entry)
            + sum(a.nbytes for entry in self._evicted for a in entry)
        )


_NO_IDS = np.empty(0, dtype=np.int64)
_NO_TIMES = np.empty(0, dtype=np.float64)


def distinct_pairs(slots: np.ndarray, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (slot, fid) pairs among ``zip(slots, fids)``, as two arrays."""
    if not len(fids):
        return slots, fids
    pairs = np.unique(np.stack([slots, fids], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _columns(entries: list, width: int) -> tuple:
    """The columns of a list of equal-width tuples of arrays, concatenated."""
    if not entries:
        return (_NO_IDS, _NO_IDS) + (_NO_TIMES,) * (width - 2)
    return tuple(np.concatenate([e[k] for e in entries]) for k in range(width))


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


class RowTable:
    """Rows of the slots that share ``config``'s row settings, addressed by row number.

    Slots are numbered ``0 .. len(names) - 1`` here (their local index);
    per-slot counters are arrays in that order. Removed rows go to a free
    list and are reused, so memory follows the live row count. Two change
    logs see every creation, update and removal: one for checkpoints
    (``dirty``) and one for parameter sync (``touched``).

    Parameters
    ----------
    config
        Row settings (any of the slots' configs; their names do not matter).
    names
        The slots' names, in local order.
    slot_ids
        The store's ids of the slots (they salt the index keys).
    seed
        Seed of the rows' initial values.
    tiered
        Whether rows may also live on disk only (the store has a memory
        budget): rows can then be evicted, and removed pairs are remembered
        in ``gone`` until the next checkpoint so that they are not fetched
        back from disk. Such a table probes, stamps and updates in numpy,
        never with the compiled kernels: numba's ~150 MB of RSS would be a
        third of the bench's budget (see :mod:`~headrace.embedding_store.index`).
    """

    def __init__(
        self,
        config: SlotConfig,
        names: Sequence[str],
        slot_ids: Sequence[int],
        seed: int,
        tiered: bool = False,
    ) -> None:
        self.config = config
        self.names = tuple(names)
        self.slot_ids = tuple(slot_ids)
        self.seed = seed
        self.tiered = tiered
        self.gone = self.new_index()
        # The most rows the arrays grow to (set by the store's memory budget).
        self.max_rows: int | None = None
        ids = np.asarray(slot_ids, dtype=np.uint64)
        self._salts = mixed_salts(ids + np.uint64(_KEY_SALT))
        # The same bits as int64, for the compiled lookup (which computes :meth:`keys`).
        self._key_salts = self._salts.view(np.int64)
        # initial_rows' hash of (seed, fid) is mix64(fid ^ this).
        self._seed_salt = mixed_salts(np.array([seed & 0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64))[0]
        # The admission filter's salts: its keys are the hash of (slot id + 1, fid).
        self.filter_salts = mixed_salts(ids + np.uint64(1))
        self.index = self.new_index()
        width = optimizers.state_width(config.optimizer) * config.dim
        self.weights = np.zeros((_MIN_CAPACITY, config.dim), dtype=np.float32)
        self.state = np.zeros((_MIN_CAPACITY, width), dtype=np.float32)
        self.last_seen = np.zeros(_MIN_CAPACITY, dtype=np.float64)
        # last_seen as the expiry index on disk holds it; NaN: not indexed.
        self.persisted = np.full(_MIN_CAPACITY, np.nan)
        # Eviction policy state: batches that saw the row (aged), and when last.
        self.freq = np.zeros(_MIN_CAPACITY, dtype=np.uint16)
        self.used = np.zeros(_MIN_CAPACITY, dtype=np.uint32)
        self.row_fid = np.zeros(_MIN_CAPACITY, dtype=np.int64)
        self.row_slot = np.zeros(_MIN_CAPACITY, dtype=np.int64)
        self.live = np.zeros(_MIN_CAPACITY, dtype=bool)
        # Per-row scratch space for finding duplicate rows without sorting.
        self._scratch = np.zeros(_MIN_CAPACITY, dtype=np.int32)
        self._high_water = 0
        self._free = np.empty(0, dtype=np.int64)
        self.dirty = ChangeLog(_MIN_CAPACITY)
        self.touched = ChangeLog(_MIN_CAPACITY, lose_after=_LOSE_CHANGES_AFTER)
        k = len(self.names)
        # Live rows per slot, in memory or not.
        self.rows = np.zeros(k, dtype=np.int64)
        self.admitted = np.zeros(k, dtype=np.int64)
        self.filtered = np.zeros(k, dtype=np.int64)
        self.expired = np.zeros(k, dtype=np.int64)

    def __len__(self) -> int:
        """Rows in memory."""
        return len(self.index)

    def new_index(self) -> FidIndex:
        """An empty index, compiled unless the table is ``tiered``."""
        return FidIndex(compiled=not self.tiered)

    @property
    def _row_arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays of a row's own values, in the order the training-lookup kernel takes them."""
        return (
            self.weights,
            self.state,
            self.last_seen,
            self.persisted,
            self.freq,
            self.used,
            self.row_fid,
            self.row_slot,
            self.live,
        )

    @property
    def row_bytes(self) -> int:
        """Memory of one row in memory: its slice of every per-row array and its index entry.

        The index holds 16 bytes an entry at a load of 0.35 to 0.7.
        """
        per_row = (*self._row_arrays, self._scratch, self.dirty.rows, self.touched.rows)
        return sum(a.itemsize * int(np.prod(a.shape[1:])) for a in per_row) + 32

    @property
    def nbytes(self) -> int:
        arrays = (*self._row_arrays, self._scratch, self._free)
        return (
            sum(a.nbytes for a in arrays)
            + self.index.nbytes
            + self.gone.nbytes
            + self.dirty.nbytes
            + self.touched.nbytes
        )

    def keys(self, slots: np.ndarray | int, fids: np.ndarray) -> np.ndarray:
        """Index keys of (local slot, fid) pairs."""
        return (as_uint64(fids) ^ self._salts[slots]).view(np.int64)

    def find(self, slots: np.ndarray | int, fids: np.ndarray) -> np.ndarray:
        """Row of each (local slot, fid), -1 where it has none."""
        return self.index.find(self.keys(slots, fids))

    def find_gone(self, slots: np.ndarray | int, fids: np.ndarray) -> np.ndarray:
        """Per (local slot, fid): >= 0 if removed since the last checkpoint, else -1."""
        return self.gone.find(self.keys(slots, fids))

    def count(self, counter: np.ndarray, slots: np.ndarray | int, n: int) -> None:
        """Add ``n`` events of local ``slots`` (one per event, or one slot for all) to a counter."""
        if np.ndim(slots) == 0:
            counter[slots] += n
        elif len(self.names) == 1:
            counter[0] += len(slots)
        else:
            counter += np.bincount(slots, minlength=len(self.names))

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of ``rows``; a zero vector where the row is -1."""
        # np.take copies whole rows, several times faster than fancy indexing.
        values = np.take(self.weights, rows, axis=0, mode="clip")
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            values[missing] = 0.0
        return values

    def create(
        self, slots: np.ndarray | int, fids: np.ndarray, last_seen: np.ndarray | float
    ) -> np.ndarray:
        """Rows for distinct new (local slot, fid) pairs, initialised from ``(seed, fid)``."""
        cfg = self.config
        init = cfg.initializer
        rows = self.load(
            slots,
            fids,
            initial_rows(fids, cfg.dim, self.seed, init.kind, init.scale),
            optimizers.initial_state(cfg.optimizer, len(fids), cfg.dim),
            last_seen,
            np.nan,
        )
        if self.tiered and len(self.gone):
            self.gone.remove(self.keys(slots, fids))
        self.dirty.mark(rows)
        self.touched.mark(rows)
        self.count(self.admitted, slots, len(fids))
        return rows

    def load(
        self,
        slots: np.ndarray | int,
        fids: np.ndarray,
        weights: np.ndarray,
        state: np.ndarray,
        last_seen: np.ndarray | float,
        persisted: np.ndarray | float,
    ) -> np.ndarray:
        """Add rows of distinct new pairs with the given contents; returns their rows."""
        rows = self.place(slots, fids, weights, state, last_seen, persisted)
        self.count(self.rows, slots, len(fids))
        return rows

    def place(
        self,
        slots: np.ndarray | int,
        fids: np.ndarray,
        weights: np.ndarray,
        state: np.ndarray,
        last_seen: np.ndarray | float,
        persisted: np.ndarray | float,
    ) -> np.ndarray:
        """Bring rows into memory without counting them (they exist on disk already)."""
        rows = self._allocate(len(fids))
        self.weights[rows] = weights
        self.state[rows] = state
        self.last_seen[rows] = last_seen
        self.persisted[rows] = persisted
        self.freq[rows] = 0
        self.used[rows] = 0
        self.row_fid[rows] = fids
        self.row_slot[rows] = slots
        self.live[rows] = True
        self.index.insert(self.keys(slots, fids), rows)
        return rows

    def evict(self, rows: np.ndarray) -> None:
        """Drop clean ``rows`` from memory; they stay on disk, and in the row counts."""
        slots, fids = self.row_slot[rows], self.row_fid[rows]
        self.index.remove(self.keys(slots, fids))
        self.live[rows] = False
        self.touched.mark_evicted(rows, slots, fids)
        self._free = np.concatenate([self._free, rows])

    def _allocate(self, n: int) -> np.ndarray:
        keep = len(self._free) - min(n, len(self._free))
        reused, self._free = self._free[keep:], self._free[:keep]
        fresh = n - len(reused)
        if self._high_water + fresh > len(self.weights):
            self._grow(self._high_water + fresh, self.max_rows)
        rows = np.concatenate([reused, np.arange(self._high_water, self._high_water + fresh)])
        self._high_water += fresh
        return rows

    def _grow(self, needed: int, limit: int | None) -> None:
        capacity = int(len(self.weights) * _GROWTH)
        if limit is not None:
            # Straight to the budget's rows: the arrays come from np.zeros, whose
            # pages take memory only once rows use them, and each step by 1.5
            # held the old arrays and their copy at once (2.5x the rows).
            capacity = limit
        capacity = max(needed, capacity)
        self.weights = _grown(self.weights, capacity)
        self.state = _grown(self.state, capacity)
        self.last_seen = _grown(self.last_seen, capacity)
        self.persisted = _grown(self.persisted, capacity)
        self.freq = _grown(self.freq, capacity)
        self.used = _grown(self.used, capacity)
        self.row_fid = _grown(self.row_fid, capacity)
        self.row_slot = _grown(self.row_slot, capacity)
        self.live = _grown(self.live, capacity)
        self._scratch = _grown(self._scratch, capacity)
        self.dirty.grow(capacity)
        self.touched.grow(capacity)

    @property
    def compiled_lookup(self) -> bool:
        """Whether :meth:`train_lookup` can serve this table's training lookups.

        It can for a table in memory only whose ids are all admitted
        (``occurrence_threshold`` 1) and whose rows start uniform or zero.
        """
        cfg = self.config
        return (
            not self.tiered
            and cfg.occurrence_threshold == 1
            and cfg.initializer.kind != "normal"
            and not self.dirty.lost
        )

    def train_lookup(
        self, slots: np.ndarray | int, fids: np.ndarray, event_time: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows and vectors of (local slot, fid) pairs, creating rows for new pairs, stamped.

        One compiled call for a table with :attr:`compiled_lookup`: the
        store's general path (probe, admission, :meth:`create`, :meth:`see`,
        :meth:`gather`) in one loop, with the same initial rows and state.
        The third array says which pairs' rows this call created.
        """
        n = len(fids)
        if not isinstance(slots, np.ndarray) or slots.ndim == 0:  # (np.ndim is slower)
            slots = np.full(n, slots, dtype=np.int64)
        if self._high_water + n > len(self.weights):
            self._grow(self._high_water + n, self.max_rows)
        self.index.reserve(n)
        cfg = self.config
        accumulator = (
            cfg.optimizer.initial_accumulator_value if isinstance(cfg.optimizer, Adagrad) else 0.0
        )
        rows = np.empty(n, dtype=np.int64)
        values = np.empty((n, cfg.dim), dtype=np.float32)
        free, high_water = len(self._free), self._high_water
        n_free, self._high_water, empty = kernels().train_lookup(
            self._key_salts,
            np.ascontiguousarray(fids),
            slots,
            float(event_time),
            self.index.arrays,
            (*self._row_arrays, self.dirty.rows, self.touched.rows),
            self._free,
            free,
            high_water,
            (
                self._seed_salt,
                cfg.initializer.kind == "uniform",
                float(cfg.initializer.scale),
                np.float32(accumulator),
            ),
            (self.rows, self.admitted),
            not self.touched.lost,
            rows,
            values,
        )
        added = free - n_free + self._high_water - high_water
        self.index.added(added, empty)
        if not added:
            return rows, values, np.zeros(n, dtype=bool)
        # The new rows: taken from the end of the free list, then from the high-water mark.
        new = np.concatenate([self._free[n_free:free], np.arange(high_water, self._high_water)])
        self._free = self._free[:n_free]
        self._scratch[rows] = 0
        self._scratch[new] = 1
        return rows, values, self._scratch[rows] == 1

    def see(self, rows: np.ndarray, event_time: np.ndarray | float) -> int:
        """Record a training lookup of ``rows`` (-1: none) at ``event_time``; returns the -1s."""
        if np.ndim(event_time) == 0 and not self.dirty.lost and not self.tiered:
            return kernels().see(rows, float(event_time), self.last_seen, self.dirty.rows)
        found = rows >= 0
        rows = rows[found]
        times = event_time if np.ndim(event_time) == 0 else event_time[found]
        if np.ndim(times) == 0:
            self.last_seen[rows] = np.maximum(np.take(self.last_seen, rows), times)
        else:
            np.maximum.at(self.last_seen, rows, times)
        self.dirty.mark(rows)
        return len(found) - len(rows)

    def sum_by_row(
        self, rows: np.ndarray, grads: np.ndarray, squares: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Distinct ``rows`` (live, >= 0), the sums of their ``grads`` and of their squares.

        The sums of squares (``None`` unless ``squares``) are what per-occurrence
        accumulators add. Each row's gradients are added in batch order, so the
        sums are the same in every run.
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
        distinct = int(compact[-1]) + 1
        targets = (compact[representative][:, None] * dim + np.arange(dim)).reshape(-1)
        summed = np.zeros((distinct, dim), dtype=np.float32)
        np.add.at(summed.reshape(-1), targets, grads.reshape(-1))
        summed_squares = None
        if squares:
            summed_squares = np.zeros((distinct, dim), dtype=np.float32)
            np.add.at(summed_squares.reshape(-1), targets, (grads * grads).reshape(-1))
        return rows[is_first], summed, summed_squares

    def apply(self, rows: np.ndarray, grads: np.ndarray) -> None:
        """One optimizer step for the gradients ``(len(rows), dim)`` of ``rows`` (-1: none)."""
        opt = self.config.optimizer
        per_occurrence = self.config.repeats == "per_occurrence"
        if isinstance(opt, Adagrad) and not self.dirty.lost and not self.tiered:
            # One compiled call; the same bits as the numpy formula below.
            kernels().adagrad_apply(
                rows,
                np.ascontiguousarray(grads, dtype=np.float32),
                self.weights,
                self.state,
                np.float32(opt.lr),
                np.float32(opt.eps),
                np.float32(opt.decay),
                per_occurrence,
                self._scratch,
                self.dirty.rows,
                self.touched.rows,
                not self.touched.lost,
            )
            return
        found = rows >= 0
        if not found.all():
            rows, grads = rows[found], grads[found]
        if not len(rows):
            return
        distinct, summed, squares = self.sum_by_row(rows, grads, per_occurrence)
        weights, state = optimizers.update(
            opt,
            np.take(self.weights, distinct, axis=0),
            np.take(self.state, distinct, axis=0),
            summed,
            squares,
        )
        self.weights[distinct] = weights
        self.state[distinct] = state
        self.dirty.mark(distinct)
        self.touched.mark(distinct)

    def remove(self, rows: np.ndarray) -> None:
        """Remove live ``rows``."""
        slots, fids = self.row_slot[rows], self.row_fid[rows]
        self.index.remove(self.keys(slots, fids))
        self.live[rows] = False
        self._free = np.concatenate([self._free, rows])
        self.forget(rows, slots, fids, self.persisted[rows])

    def forget(
        self, rows: np.ndarray, slots: np.ndarray, fids: np.ndarray, persisted: np.ndarray
    ) -> None:
        """Count (slot, fid) pairs as removed: rows in memory (``rows``) or on disk only."""
        self.dirty.mark_removed(rows, slots, fids, persisted)
        self.touched.mark_removed(rows, slots, fids, persisted)
        if self.tiered:
            keys = self.keys(slots, fids)
            new = keys[self.gone.find(keys) < 0]
            self.gone.insert(new, np.zeros(len(new), dtype=np.int64))
        self.rows -= np.bincount(slots, minlength=len(self.names))

    def expire(self, now: float) -> None:
        """Remove rows whose last training lookup is ``expire_after`` or more before ``now``."""
        if self.config.expire_after is None:
            return
        cutoff = now - self.config.expire_after
        rows = np.flatnonzero(
            self.live[: self._high_water] & (self.last_seen[: self._high_water] <= cutoff)
        )
        self.expired += np.bincount(self.row_slot[rows], minlength=len(self.names))
        self.remove(rows)

    def live_rows(self, slot: int | None = None) -> np.ndarray:
        """Live rows, all or those of one local slot."""
        live = self.live[: self._high_water]
        if slot is not None and len(self.names) > 1:
            live = live & (self.row_slot[: self._high_water] == slot)
        return np.flatnonzero(live)
