"""The embedding store: slots of rows in memory, checkpointed to RocksDB."""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rocksdict import AccessType, Rdict, WriteBatch, WriteOptions
from rocksdict import Checkpoint as DbCheckpoint

from headrace.embedding_store import _layout as layout
from headrace.embedding_store import rocks
from headrace.embedding_store._hashing import as_uint64, mix64
from headrace.embedding_store.admission import CountingFilter, probabilistic_admit
from headrace.embedding_store.cache import (
    SLACK,
    CacheCounters,
    EvictionPolicy,
    UseClock,
    choose_victims,
)
from headrace.embedding_store.config import FilterConfig, SlotConfig
from headrace.embedding_store.index import FidIndex
from headrace.embedding_store.optimizers import state_width
from headrace.embedding_store.rocks import Checkpoint, KeyRun
from headrace.embedding_store.table import RowTable, distinct_pairs

log = logging.getLogger(__name__)

__all__ = [
    "CorruptStoreError",
    "EmbeddingStore",
    "MemoryBudgetError",
    "SlotChanges",
    "StoreError",
    "StoreStats",
    "TrainingLookup",
]


class StoreError(Exception):
    """The store cannot do what was asked; the message says what to change."""


class CorruptStoreError(StoreError):
    """The store directory holds data this version cannot read back."""


class MemoryBudgetError(StoreError):
    """A lookup needs more memory than the budget has room for; nothing was changed."""


# A checkpoint is due once changed rows fill this share of the memory budget:
# they cannot leave memory before one, and a lookup needs room besides them.
DIRTY_SHARE = 0.5
# Memory besides rows that a budget does not count: the first MiB, what any
# small store holds (an empty memtable's arena, a few table readers of ~2 KB,
# indexes of 1024 positions, a lookup of a thousand ids), like the
# interpreter's own. Small budgets (tests') stay budgets of rows.
_FIXED_OVERHEAD = 1 << 20
# Bytes of a row's index entry in RowTable.row_bytes: the index holds 16 bytes
# a position at a load of 0.35 to 0.7. It does not shrink when rows leave.
_INDEX_ROW_BYTES = 32
# Working memory of a training lookup and its update under a budget, per id
# looked up, counted in the budget for the largest lookup so far (at most a
# third of the budget). Measured on the bench (106k ids a lookup): peak RSS
# within a step ~68 MB above the RSS between steps (the lookup's vectors and
# temporaries, then the update's ~35 MB of temporaries), and 20-50 MB of free
# heap that malloc_trim cannot return; with 800 bytes an id the bench's peak
# RSS was still 32 MB over budget + 25% + filter.
_WORKING_BYTES_PER_ID = 1200
_WORKING_SHARE = 1 / 3
# Keys probed in the index at a time under a budget: a probe holds ~220 bytes
# a key (23 MB for the bench's lookup of 106k ids at once).
_FIND_CHUNK = 16_384
# Rows per write batch when an expiry index is built from the rows on disk.
_INDEX_BATCH = 100_000
# Read-aheads (prefetch) kept for the lookups to come: the batch being
# looked up and the one after it.
_PREFETCH_DEPTH = 2
# Where a checkpoint's SST file is written before RocksDB ingests it.
_INGEST_FILE = "checkpoint.sst.tmp"


@dataclass(frozen=True)
class TrainingLookup:
    """Result of :meth:`EmbeddingStore.lookup_slots` (and ``lookup_for_training``).

    The fids of ``slots`` are concatenated in that order: slot ``slots[i]``
    has positions ``bounds[i]:bounds[i + 1]``. ``values[j]`` ``(dim,)`` is
    the vector of the j-th fid, zeros where it has no row (``rows[j] == -1``;
    row numbers are per table). ``created[j]``: the j-th fid's row did not
    exist before this lookup (it was created by it). Pass the lookup back to
    :meth:`EmbeddingStore.apply_gradients` with the gradients of ``values``.
    """

    slots: tuple[str, ...]
    bounds: np.ndarray
    rows: np.ndarray
    values: np.ndarray
    created: np.ndarray
    generation: int
    # (table, positions in the concatenation) for each table the slots live in.
    parts: tuple[tuple[RowTable, slice | np.ndarray], ...] = field(repr=False)


class _LookupPlan(NamedTuple):
    """The tables of a lookup's slots: per table, the slots' positions in the
    lookup and their local slots (one int for one slot)."""

    dim: int
    tables: tuple[tuple[RowTable, tuple[int, ...], np.ndarray | int], ...]


@dataclass(frozen=True)
class SlotChanges:
    """Rows of one slot created or updated, and fids removed, since the last drain."""

    fids: np.ndarray
    vectors: np.ndarray
    removed: np.ndarray


@dataclass(frozen=True)
class StoreStats:
    """Figures for metrics; the per-slot counters count since the store was opened."""

    rows: dict[str, int]
    admitted: dict[str, int]
    filtered: dict[str, int]
    expired: dict[str, int]
    memory_bytes: int
    filter_bytes: int
    #: Rows in memory, and rows written to RocksDB by the last checkpoint.
    memory_rows: int = 0
    disk_rows: int = 0
    #: Size of RocksDB's files (SST files and memtables).
    disk_bytes: int = 0
    #: ``None`` without a memory budget; then every row is in memory.
    memory_budget: int | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    #: Distinct missed pairs that :meth:`EmbeddingStore.prefetch` had read ahead.
    read_ahead: int = 0
    evictions: int = 0


def _check_fids(fids: Any) -> np.ndarray:
    array = np.asarray(fids)  # CPU torch tensors convert without a copy
    if array.dtype != np.int64:
        raise TypeError(f"fids must be int64, got {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"fids must be a 1-d array, got shape {array.shape}")
    return array


def _check_event_time(event_time: Any, n: int) -> np.ndarray | float:
    """``event_time`` checked: a float, or a float64 array of ``n`` times."""
    if isinstance(event_time, float):  # the common case, np.float64 included
        if not math.isfinite(event_time):
            raise ValueError(f"event_time must be finite, got {event_time}")
        return float(event_time)
    if np.ndim(event_time) == 0:
        value = float(event_time)
        if not np.isfinite(value):
            raise ValueError(f"event_time must be finite, got {value}")
        return value
    times = np.asarray(event_time, dtype=np.float64)
    if times.shape != (n,):
        raise ValueError(f"event_time must be a scalar or have shape ({n},), got {times.shape}")
    if not np.all(np.isfinite(times)):
        raise ValueError("event_time holds NaN or infinite values")
    return times


class EmbeddingStore:
    """A collisionless embedding table with admission, expiry and durable checkpoints.

    Every sparse id (a 64-bit fid) of a slot gets its own row once it has been
    seen ``occurrence_threshold`` times in training lookups. Rows live in
    memory and are updated in vectorised batches; :meth:`checkpoint` writes
    every change and caller blobs to RocksDB in one atomic write batch, and
    :meth:`open` restores them.

    Use :meth:`open` to create or reopen a store.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from headrace.embedding_store import EmbeddingStore, SlotConfig, SGD
    >>> slots = [SlotConfig(name="item", dim=4, optimizer=SGD(lr=0.1), occurrence_threshold=2)]
    >>> store = EmbeddingStore.open(tempfile.mkdtemp(), slots)
    >>> fids = np.array([10, 10, 11], dtype=np.int64)
    >>> hit = store.lookup_for_training("item", fids, event_time=1700000000.0)
    >>> hit.rows.tolist()  # 10 was seen twice and is admitted; 11 only once
    [0, 0, -1]
    >>> store.apply_gradients(hit, np.ones((3, 4), dtype=np.float32))
    >>> store.checkpoint({"offsets": b"{}"})
    >>> store.close()
    """

    def __init__(
        self,
        db: Rdict,
        path: Path,
        slots: Sequence[tuple[int, SlotConfig]],
        seed: int,
        filter_config: FilterConfig,
        draws: int,
        memory_budget: int | None = None,
        eviction: EvictionPolicy = "lfu",
    ) -> None:
        self._db = db
        self.path = path
        self.seed = seed
        self._slot_ids = {cfg.name: slot_id for slot_id, cfg in slots}
        self._configs = {cfg.name: cfg for _, cfg in slots}
        self._tables, self._where = _group_tables(slots, seed, memory_budget is not None)
        # Lookup plans by slots (see _plan): the grouping never changes.
        self._plans: dict[tuple[str, ...], _LookupPlan] = {}
        self._filter = CountingFilter(filter_config)
        self._draws = draws
        self._generation = 0
        self._closed = False
        self.extra: dict[str, bytes] = {}
        self.memory_budget = memory_budget
        self._eviction = eviction
        self._cache = CacheCounters()
        self._clocks = {id(table): UseClock() for table in self._tables}
        # Rows per slot id as of the last checkpoint (what RocksDB holds).
        self._committed: dict[int, int] = {}
        # Slot ids whose expiry index on disk is complete.
        self._indexed = self._expiring()
        # Rows read ahead by prefetch(), oldest first: the next lookup takes the first.
        self._prefetched: deque[_Prefetch] = deque()
        self._prefetcher: ThreadPoolExecutor | None = None
        # Bytes of working memory the budget keeps for lookups (_WORKING_BYTES_PER_ID).
        self._working = 0
        if memory_budget is not None:
            for table in self._tables:
                table.max_rows = memory_budget // table.row_bytes + 1

    # -- opening and closing -------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        slots: Iterable[SlotConfig] | None = None,
        *,
        seed: int | None = None,
        filter: FilterConfig | None = None,
        read_only: bool = False,
        memory_budget: int | None = None,
        eviction: EvictionPolicy = "lfu",
    ) -> EmbeddingStore:
        """Create a store in an empty directory, or reopen one and restore it.

        Parameters
        ----------
        path
            The store's directory.
        slots
            Slot configs; required to create a store. On reopen, every slot in
            the store must be named, with the same ``dim`` and optimizer kind
            (other settings may change); new slots are added.
        seed
            Seed of row initial values; fixed when the store is created.
        filter
            Size of the counting filter; fixed when the store is created.
        read_only
            Open without taking the write lock (for inspection).
        memory_budget
            Bytes of memory for the store; ``None`` (the default) keeps every row
            in memory and reads them all back on open. With a budget, RocksDB
            holds the table: opening reads metadata and the filter only, rows
            come into memory on demand (one multi-get per lookup) and clean
            rows leave it by the ``eviction`` policy. Changed rows stay in
            memory until a checkpoint; :attr:`checkpoint_due` says when they
            fill half the budget's room for rows. The budget also counts
            RocksDB's memory and lookups' working memory (see the README's
            "What the budget counts").
        eviction
            ``"lfu"`` (use counts with aging) or ``"lru"``; see
            :mod:`headrace.embedding_store.cache`.
        """
        if memory_budget is not None and memory_budget <= 0:
            raise StoreError(
                f"memory_budget must be a positive number of bytes, got {memory_budget}"
            )
        path = Path(path)
        has_db = (path / "CURRENT").exists()
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file; the store needs a directory")
        if not has_db and path.exists() and any(path.iterdir()):
            raise StoreError(
                f"{path} is not empty and holds no RocksDB database; "
                "point the store at an empty directory or at an existing store"
            )
        if not has_db and read_only:
            raise StoreError(f"no store at {path}")
        db = cls._open_db(path, read_only, memory_budget)
        try:
            meta_blob = db.get(layout.META_KEY)
            if meta_blob is None:
                store = cls._create(db, path, slots, seed, filter, read_only, memory_budget)
            else:
                store = cls._restore(db, path, meta_blob, slots, seed, filter, memory_budget)
                if not read_only:
                    store._index_expiry()
            store._eviction = eviction
        except BaseException as exc:
            db.close()
            # rocksdict raises plain Exceptions for RocksDB's errors.
            if type(exc) is Exception:
                raise _disk_error(path, exc) from exc
            raise
        return store

    @staticmethod
    def _open_db(path: Path, read_only: bool, memory_budget: int | None) -> Rdict:
        # With a budget, RocksDB's block cache and memtable are sized to fit in it.
        options = rocks.options(memory_budget)
        options.create_if_missing(not read_only)
        if not read_only:
            # Left by a checkpoint that crashed before RocksDB ingested it.
            (path / _INGEST_FILE).unlink(missing_ok=True)
        access = AccessType.read_only() if read_only else AccessType.read_write()
        try:
            # Without the default column family's options named, rocksdict
            # reopens a database with those of its OPTIONS file, which lose
            # the bloom filter.
            return Rdict(
                str(path), options, column_families={"default": options}, access_type=access
            )
        except Exception as exc:
            if "/LOCK" in str(exc) or "lock file" in str(exc).lower():
                raise StoreError(
                    f"the store at {path} is open in another process; "
                    "stop that process or use another directory"
                ) from exc
            raise CorruptStoreError(
                f"cannot open the RocksDB database at {path} ({exc}). A file of it is damaged "
                "or unreadable: restore the directory from a backup or start from a new one"
            ) from exc

    @classmethod
    def _create(
        cls,
        db: Rdict,
        path: Path,
        slots: Iterable[SlotConfig] | None,
        seed: int | None,
        filter_config: FilterConfig | None,
        read_only: bool,
        memory_budget: int | None,
    ) -> EmbeddingStore:
        if next(iter(db.keys()), None) is not None:
            raise CorruptStoreError(f"the store at {path} has data but no metadata record")
        if read_only:
            raise StoreError(f"no store at {path}")
        if slots is None:
            raise StoreError(f"{path} holds no store yet; pass slot configs to create one")
        configs = _unique_slots(slots)
        store = cls(
            db,
            path,
            list(enumerate(configs)),
            seed or 0,
            filter_config or FilterConfig(),
            0,
            memory_budget,
        )
        # Written at once so that an empty store reopens with its settings.
        db.put(layout.META_KEY, store._meta(), _sync_writes())
        return store

    @classmethod
    def _restore(
        cls,
        db: Rdict,
        path: Path,
        meta_blob: bytes,
        slots: Iterable[SlotConfig] | None,
        seed: int | None,
        filter_config: FilterConfig | None,
        memory_budget: int | None,
    ) -> EmbeddingStore:
        try:
            meta = json.loads(meta_blob)
            stored = [(int(s["id"]), SlotConfig.model_validate(s["config"])) for s in meta["slots"]]
            stored_filter = FilterConfig.model_validate(meta["filter"])
            stored_seed, draws, version = int(meta["seed"]), int(meta["draws"]), meta["format"]
            # Absent in stores written before the table could live on disk.
            committed = {int(k): int(v) for k, v in meta.get("rows", {}).items()}
            indexed = {int(slot_id) for slot_id in meta.get("indexed", [])}
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(
                f"the metadata of the store at {path} is unreadable: {exc}"
            ) from exc
        if version != layout.FORMAT_VERSION:
            raise CorruptStoreError(
                f"the store at {path} has format {version}; "
                f"this headrace reads format {layout.FORMAT_VERSION}"
            )
        if seed is not None and seed != stored_seed:
            raise StoreError(f"the store at {path} was created with seed {stored_seed}, not {seed}")
        if filter_config is not None and filter_config != stored_filter:
            raise StoreError(
                f"the store at {path} was created with filter {stored_filter!r}; "
                f"it cannot change to {filter_config!r}"
            )
        merged = stored if slots is None else _merge_slots(path, stored, _unique_slots(slots))
        store = cls(db, path, merged, stored_seed, stored_filter, draws, memory_budget)
        store._indexed = indexed
        try:
            store._load(committed)
        except ValueError as exc:
            raise CorruptStoreError(f"the store at {path} is damaged: {exc}") from exc
        return store

    def _load(self, committed: dict[int, int]) -> None:
        """Read the filter, the blobs and, without a memory budget, every row.

        With a budget the rows stay on disk, and their counts per slot come
        from the metadata (or, for a store written before it held them, from
        one pass over the row keys).
        """
        names = {slot_id: name for name, slot_id in self._slot_ids.items()}
        for key, value in self._range(layout.FILTER_PREFIX, layout.META_KEY):
            self._filter.load_chunk(int.from_bytes(key[1:], "big"), value)
        for key, value in self._range(layout.EXTRA_PREFIX, b"\xff"):
            self.extra[key[1:].decode()] = value
        if self.memory_budget is None:
            committed = {}
        elif not committed:
            committed = self._count_rows()
        for slot_id, count in committed.items():
            if slot_id not in names:
                raise ValueError(f"rows of an unknown slot id {slot_id}")
            table, local = self._where[names[slot_id]]
            table.rows[local] = count
        if self.memory_budget is not None:
            self._committed = committed
            return
        keys, values = [], []
        for key, value in self._range(layout.ROW_PREFIX, layout.EXTRA_PREFIX):
            keys.append(key)
            values.append(value)
        if not keys:
            return
        slot_ids, fids = layout.parse_row_keys(keys)
        # Keys are sorted, so each slot's rows are one run.
        bounds = np.flatnonzero(np.diff(slot_ids)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(keys)], strict=True):
            slot_id = int(slot_ids[start])
            if slot_id not in names:
                raise ValueError(f"rows of an unknown slot id {slot_id}")
            table, local = self._where[names[slot_id]]
            records = layout.decode_rows(self._row_dtype(table), values[start:stop])
            t = records["t"]
            table.load(local, fids[start:stop], records["w"], records["s"], t, t)
            self._committed[slot_id] = stop - start

    def _range(self, first: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Items with ``first <= key < stop``."""
        for key, value in self._db.items(from_key=first):
            if key >= stop:
                return
            yield key, value

    def _count_rows(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for key in self._db.keys(from_key=layout.ROW_PREFIX):
            if key[:1] != layout.ROW_PREFIX:
                break
            slot_id = int.from_bytes(key[1:3], "big")
            counts[slot_id] = counts.get(slot_id, 0) + 1
        return counts

    def _index_expiry(self) -> None:
        """Build the expiry index of expiring slots that lack one, from the rows on disk.

        A store written before the index existed, or a slot that gained
        ``expire_after``, has none (or a stale one): it is rebuilt once, in
        batches. It is derived from committed rows only, so a crash halfway
        leaves an index that the next open rebuilds again.
        """
        missing = [
            slot_id
            for name, slot_id in self._slot_ids.items()
            if self._configs[name].expire_after is not None and slot_id not in self._indexed
        ]
        for slot_id in missing:
            table = self._table_of(slot_id)
            first, stop = layout.slot_range(layout.EXPIRY_PREFIX, slot_id)
            self._db.delete_range(first, stop)
            dtype = self._row_dtype(table)
            keys: list[bytes] = []
            values: list[bytes] = []
            rows = layout.slot_range(layout.ROW_PREFIX, slot_id)
            for key, value in [*self._range(*rows), (None, None)]:
                if key is not None:
                    keys.append(key)
                    values.append(value)
                if len(keys) == _INDEX_BATCH or (key is None and keys):
                    _, fids = layout.parse_row_keys(keys)
                    times = layout.decode_rows(dtype, values)["t"]
                    batch = WriteBatch(raw_mode=True)
                    for index_key in layout.expiry_keys(slot_id, times, fids):
                        batch.put(index_key, b"")
                    self._db.write(batch)
                    keys, values = [], []
        if missing:
            # Only now is the index whole, and the metadata may say so.
            self._indexed = self._expiring()
            self._db.put(layout.META_KEY, self._meta(), _sync_writes())

    def _table_of(self, slot_id: int) -> RowTable:
        return next(t for t in self._tables if slot_id in t.slot_ids)

    def _expiring(self) -> set[int]:
        """Slot ids whose expiry index checkpoints keep up to date."""
        return {
            self._slot_ids[name]
            for name, cfg in self._configs.items()
            if cfg.expire_after is not None
        }

    def close(self) -> None:
        """Close the database; changes since the last checkpoint are dropped.

        Closing twice is harmless.
        """
        if not self._closed:
            self._closed = True
            self._prefetched.clear()
            if self._prefetcher is not None:
                # Its read must end before the database does.
                self._prefetcher.shutdown(wait=True)
            self._db.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the hot path --------------------------------------------------------

    @property
    def slots(self) -> tuple[SlotConfig, ...]:
        return tuple(self._configs.values())

    def _slot(self, slot: str) -> tuple[RowTable, int]:
        try:
            return self._where[slot]
        except KeyError:
            raise KeyError(f"unknown slot {slot!r}; the store has {sorted(self._where)}") from None

    def lookup(self, slot: str, fids: Any, fill: np.ndarray | None = None) -> np.ndarray:
        """Vectors of ``fids`` (float32, ``(n, dim)``); ``fill`` where an id has no row.

        ``fill`` is a ``(dim,)`` vector, zeros if ``None``. A read: it neither
        counts occurrences nor refreshes expiry.
        """
        table, local = self._slot(slot)
        fids = _check_fids(fids)
        rows = table.find(local, fids)
        values = table.gather(rows)
        missing = np.flatnonzero(rows < 0)
        if self.memory_budget is not None and len(missing):
            # Read through: rows on disk are returned, not brought into memory.
            found, records = self._read_disk(table, local, fids[missing])
            values[missing[found]] = records["w"]
            missing = missing[~found]
        if fill is not None:
            values[missing] = fill
        return values

    def lookup_for_training(self, slot: str, fids: Any, event_time: Any) -> TrainingLookup:
        """Vectors of one slot's ``fids`` for a training step: :meth:`lookup_slots` of one slot."""
        return self.lookup_slots({slot: fids}, event_time)

    def lookup_slots(self, fids: Mapping[str, Any], event_time: Any) -> TrainingLookup:
        """Vectors of the fids of several slots for a training step, counting every occurrence.

        Ids without a row are counted by the frequency filter and get a row
        (initialised from ``(seed, fid)``) in the lookup that brings them to
        the slot's threshold. Rows found or created are stamped with
        ``event_time`` (seconds; a scalar or one per fid) for expiry. Slots
        that share their settings share a table, and each table is probed
        and updated once for all of its slots.

        Parameters
        ----------
        fids
            Slot -> int64 fids ``(n_slot,)``; the slots must share one dim.
        event_time
            A scalar, or one time per fid ``(sum of n_slot,)`` in slot order.
        """
        slots = tuple(fids)
        arrays = [_check_fids(fids[slot]) for slot in slots]
        plan = self._plans.get(slots) or self._plan(slots)
        sizes = [len(a) for a in arrays]
        bounds = np.fromiter(accumulate(sizes, initial=0), np.int64, len(sizes) + 1)
        all_fids = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        event_time = _check_event_time(event_time, len(all_fids))
        parts = []
        for table, members, locals_ in plan.tables:
            positions: slice | np.ndarray = slice(None)
            if len(members) < len(slots):
                positions = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in members])
            local = (
                locals_ if isinstance(locals_, int) else locals_.repeat([sizes[i] for i in members])
            )
            parts.append((table, positions, local))
        resident = None
        if self.memory_budget is not None:
            # Every table's rows come into memory before any table changes,
            # so a lookup that does not fit fails having changed nothing.
            resident = self._bring_in([(t, local, all_fids[p]) for t, p, local in parts])
        found = [
            self._lookup_part(
                table,
                local,
                all_fids[positions],
                event_time if isinstance(event_time, float) else event_time[positions],
                None if resident is None else resident[k],
            )
            for k, (table, positions, local) in enumerate(parts)
        ]
        if len(found) == 1:
            # One table holds every slot: its arrays are the lookup's, in order.
            rows, values, created = found[0]
        else:
            rows = np.empty(len(all_fids), dtype=np.int64)
            created = np.empty(len(all_fids), dtype=bool)
            values = np.empty((len(all_fids), plan.dim), dtype=np.float32)
            for (_, positions, _), part in zip(parts, found, strict=True):
                rows[positions], values[positions], created[positions] = part
        if self._prefetched:
            # A read-ahead serves one lookup; kept longer, checkpoints would
            # pile up the keys it must ignore.
            self._prefetched.popleft()
        return TrainingLookup(
            slots,
            bounds,
            rows,
            values,
            created,
            self._generation,
            tuple((t, p) for t, p, _ in parts),
        )

    def _plan(self, slots: tuple[str, ...]) -> _LookupPlan:
        """How a lookup of ``slots`` goes to the tables (kept: it depends on the slots only)."""
        where = [self._slot(slot) for slot in slots]
        dims = {table.config.dim for table, _ in where}
        if len(dims) > 1:
            raise ValueError(f"slots of one lookup must share a dim, got {sorted(dims)}")
        tables = tuple(
            (
                table,
                tuple(members),
                where[members[0]][1]
                if len(members) == 1
                else np.array([where[i][1] for i in members], dtype=np.int64),
            )
            for table, members in _by_table(where)
        )
        plan = self._plans[slots] = _LookupPlan(dims.pop() if dims else 0, tables)
        return plan

    def _lookup_part(
        self,
        table: RowTable,
        local: np.ndarray | int,
        fids: np.ndarray,
        event_time: np.ndarray | float,
        resident: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows, vectors and created flags of one table's part of a training lookup.

        ``resident`` are the part's rows already brought into memory (with a
        memory budget).
        """
        if resident is None and isinstance(event_time, float) and table.compiled_lookup:
            return table.train_lookup(local, fids, event_time)
        rows, created = self._train_lookup(table, local, fids, event_time, resident)
        return rows, table.gather(rows), created

    def _train_lookup(
        self,
        table: RowTable,
        slots: np.ndarray | int,
        fids: np.ndarray,
        event_time: np.ndarray | float,
        rows: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of (local slot, fid) pairs of one table, admitting and stamping them.

        ``rows`` are the pairs' rows in memory if already found (-1: none).
        Returns the rows and whether each pair's row was created here.
        """
        keys = table.keys(slots, fids)
        if rows is None:
            rows = table.index.find(keys)
        missing = np.flatnonzero(rows < 0)
        created = np.zeros(len(rows), dtype=bool)
        if len(missing):
            _, first, inverse, counts = np.unique(
                keys[missing], return_index=True, return_inverse=True, return_counts=True
            )
            candidates = missing[first]
            candidate_slots = slots if np.ndim(slots) == 0 else slots[candidates]
            admitted = self._admit(table, candidate_slots, fids[candidates], counts)
            if admitted.any():
                candidate_rows = np.full(len(candidates), -1, dtype=np.int64)
                times = (
                    event_time
                    if np.ndim(event_time) == 0
                    else self._latest(event_time[missing], inverse, len(candidates))[admitted]
                )
                candidate_rows[admitted] = table.create(
                    candidate_slots if np.ndim(slots) == 0 else candidate_slots[admitted],
                    fids[candidates[admitted]],
                    times,
                )
                rows[missing] = candidate_rows[inverse]
                created[missing] = admitted[inverse]
        held_back = table.see(rows, event_time)
        if held_back:
            table.count(
                table.filtered, slots if np.ndim(slots) == 0 else slots[rows < 0], held_back
            )
        if self.memory_budget is not None:
            self._clocks[id(table)].note(table, rows[rows >= 0])
        return rows, created

    # -- the table on disk (with a memory budget) ----------------------------

    def _bring_in(
        self, parts: list[tuple[RowTable, np.ndarray | int, np.ndarray]]
    ) -> list[np.ndarray]:
        """Rows in memory of the (table, local slots, fids) of a lookup, -1 for new ids.

        Rows on disk are read (one multi-get per table) and kept in memory;
        room is made first for every distinct missing pair, since each may
        also become a new row. The rows found stay safe from eviction until
        the whole lookup is in.
        """
        found: list[np.ndarray] = []
        protected: dict[int, list[np.ndarray]] = {}
        # Bytes of the rows that earlier tables of the lookup may still create.
        reserved = 0
        ids = sum(len(fids) for _, _, fids in parts)
        # At most a third of the budget, so that rows keep most of a small one.
        working = min(ids * _WORKING_BYTES_PER_ID, int(_WORKING_SHARE * self.memory_budget))
        self._working = max(self._working, working)
        for table, slots, fids in parts:
            keys = table.keys(slots, fids)
            rows = _find(table.index, keys)
            missing = np.flatnonzero(rows < 0)
            self._cache.hits += len(rows) - len(missing)
            self._cache.misses += len(missing)
            mine = protected.setdefault(id(table), [])
            mine.append(rows[rows >= 0])
            if len(missing):
                reserved += table.row_bytes * self._fetch(
                    table, keys, slots, fids, rows, missing, protected, reserved
                )
                fetched = rows[missing]
                mine.append(fetched[fetched >= 0])
            found.append(rows)
        return found

    def _fetch(
        self,
        table: RowTable,
        keys: np.ndarray,
        slots: np.ndarray | int,
        fids: np.ndarray,
        rows: np.ndarray,
        missing: np.ndarray,
        protected: dict[int, list[np.ndarray]],
        reserved: int,
    ) -> int:
        """Bring the rows of ``missing`` positions that are on disk into memory (into ``rows``).

        Returns the number of distinct pairs still missing (new ids).
        """
        _, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
        self._make_room(table, len(first), protected, reserved)
        candidates = missing[first]
        candidate_slots = slots if np.ndim(slots) == 0 else slots[candidates]
        found, records = self._read_disk(table, candidate_slots, fids[candidates])
        if not found.any():
            return len(first)
        placed = np.full(len(candidates), -1, dtype=np.int64)
        t = records["t"]
        placed[found] = table.place(
            candidate_slots if np.ndim(slots) == 0 else candidate_slots[found],
            fids[candidates[found]],
            records["w"],
            records["s"],
            t,
            t,
        )
        rows[missing] = placed[inverse]
        return len(first) - int(np.count_nonzero(found))

    def _read_disk(
        self, table: RowTable, slots: np.ndarray | int, fids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Which (local slot, fid) pairs have a committed, unremoved row, and their records.

        Rows read ahead by :meth:`prefetch` are taken from there; one
        multi-get reads the others.
        """
        candidates = np.arange(len(fids))
        if len(table.gone):
            candidates = np.flatnonzero(table.find_gone(slots, fids) < 0)
        slot_ids = np.asarray(table.slot_ids, dtype=np.int64)[slots]
        if np.ndim(slot_ids):
            slot_ids = slot_ids[candidates]
        dtype = self._row_dtype(table)
        records = np.empty(len(fids), dtype=dtype)
        found = np.zeros(len(fids), dtype=bool)
        ahead = None
        if self._prefetched:
            index_keys = table.keys(slots, fids)[candidates]
            ahead = self._prefetched[0].take(table, index_keys)
        if ahead is not None:
            known, known_found, known_records = ahead
            self._cache.read_ahead += int(np.count_nonzero(known))
            taken = candidates[known][known_found]
            found[taken] = True
            records[taken] = known_records
            candidates = candidates[~known]
            if np.ndim(slot_ids):
                slot_ids = slot_ids[~known]
        present, read = _read_rows(self._db, self.path, dtype, slot_ids, fids[candidates])
        self._cache.disk_reads += len(candidates)
        found[candidates[present]] = True
        records[candidates[present]] = read
        return found, records[found]

    def prefetch(self, fids: Mapping[str, Any]) -> None:
        """Start reading, on a thread, the rows of ``fids`` that only RocksDB holds.

        Read-aheads queue up (at most two; a third drops the oldest) and each
        :meth:`lookup_slots` takes the oldest: the rows found there are not
        read again. Call it with the next batch's fids ``{slot: (n_slot,)
        int64}`` before the current batch is looked up and trained: RocksDB
        reads without holding the GIL, so the read overlaps that work. Rows
        that a checkpoint writes in the meantime are read again by the lookup,
        so a read-ahead never hands out an old version of a row. Without a
        memory budget it does nothing.
        """
        if self.memory_budget is None or self._closed:
            return
        grouped: dict[int, tuple[RowTable, list[np.ndarray], list[np.ndarray]]] = {}
        for slot, array in fids.items():
            table, local = self._slot(slot)
            array = _check_fids(array)
            _, slots, arrays = grouped.setdefault(id(table), (table, [], []))
            slots.append(np.full(len(array), local, dtype=np.int64))
            arrays.append(array)
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1, "rocksdb-prefetch")
        reads = {}
        for key, (table, slots_list, arrays) in grouped.items():
            slots, all_fids = np.concatenate(slots_list), np.concatenate(arrays)
            index_keys = table.keys(slots, all_fids)
            away = _find(table.index, index_keys) < 0
            if len(table.gone):
                away &= table.gone.find(index_keys) < 0
            index_keys, first = np.unique(index_keys[away], return_index=True)
            positions = np.flatnonzero(away)[first]
            # Rows an earlier read-ahead has: its lookup brings them into memory.
            for earlier in self._prefetched:
                fresh = ~earlier.holds(table, index_keys)
                index_keys, positions = index_keys[fresh], positions[fresh]
            slot_ids = np.asarray(table.slot_ids, dtype=np.int64)[slots[positions]]
            reads[key] = (
                index_keys,
                self._prefetcher.submit(
                    _read_rows,
                    self._db,
                    self.path,
                    self._row_dtype(table),
                    slot_ids,
                    all_fids[positions],
                ),
            )
        if len(self._prefetched) == _PREFETCH_DEPTH:
            self._prefetched.popleft()
        self._prefetched.append(_Prefetch(reads))

    def _make_room(
        self,
        table: RowTable,
        needed: int,
        protected: dict[int, list[np.ndarray]],
        reserved: int = 0,
    ) -> None:
        """Evict clean rows so that ``needed`` more rows of ``table`` fit in the budget.

        Evicts down to :data:`SLACK` of the budget below the need, from
        ``table`` first, then from the others; never ``protected`` rows
        (by table id). ``reserved`` bytes are taken already (by rows that
        the lookup will create in other tables).

        Raises
        ------
        MemoryBudgetError
            If even evicting every clean row leaves too little room; nothing
            is evicted then.
        """
        budget = self.memory_budget
        assert budget is not None
        excess = self._resident_bytes() + reserved + needed * table.row_bytes - budget
        if excess <= 0:
            return
        pools = []
        for other in [table, *(t for t in self._tables if t is not table)]:
            # Clean rows in memory, as a mask: a list of 2M rows' numbers
            # and their scores held ~30 MB at every eviction.
            candidates = other.live & ~other.dirty.rows
            for rows in protected.get(id(other), ()):
                candidates[rows] = False
            pools.append((other, candidates, int(np.count_nonzero(candidates))))
        if sum(count * t.row_bytes for t, _, count in pools) < excess:
            dirty = sum(int(np.count_nonzero(t.dirty.rows)) for t in self._tables)
            raise MemoryBudgetError(
                f"the store's memory budget of {budget:,} bytes cannot hold this lookup: it "
                f"needs room for {needed:,} more rows of {table.row_bytes} bytes while "
                f"{dirty:,} rows changed since the last checkpoint must stay in memory and "
                f"RocksDB and the change logs take {self._overhead_bytes():,} bytes of it. "
                "Raise store.memory_budget, take checkpoints more often "
                "(see EmbeddingStore.checkpoint_due), or look up fewer ids at a time"
            )
        target = excess + SLACK * budget
        for other, candidates, count in pools:
            # Index positions stay (see _overhead_bytes): a row frees a little
            # less than row_bytes, which the SLACK covers many times over.
            n = min(count, math.ceil(target / other.row_bytes))
            victims = choose_victims(other, candidates, n, self._eviction)
            other.evict(victims)
            self._cache.evictions += len(victims)
            target -= len(victims) * other.row_bytes
            if target <= 0:
                break
        # Outstanding lookups may hold rows that just left memory.
        self._generation += 1

    def _resident_bytes(self) -> int:
        """What the memory budget counts: rows in memory and :meth:`_overhead_bytes`."""
        return sum(len(t) * t.row_bytes for t in self._tables) + self._overhead_bytes()

    def _overhead_bytes(self) -> int:
        """Memory of a budgeted store besides its rows: RocksDB's (filters, index
        blocks, block cache, memtables), the checkpoint log's removals, index
        positions beyond what rows count and the working memory of lookups,
        less :data:`_FIXED_OVERHEAD`.

        Counted in the budget, so that rows get what is left: on the bench's
        20M-row table RocksDB alone holds ~50 MB, an eighth of a 410 MB budget.
        """
        # The checkpoint's log of removals; the parameter-sync log (touched)
        # is not counted: it lets go past ~1M ids (16 MB), however small the budget.
        logs = sum(t.dirty.nbytes - t.dirty.rows.nbytes for t in self._tables)
        # Index positions beyond what row_bytes counts, and at least as much
        # again a row: the index doubles as rows come in (to a load of 0.25,
        # 64 bytes a row) and never shrinks. Counted at its doubled size from
        # the start, the rows' room does not shrink when it doubles; it did on
        # the bench (by ~160k rows), and the rows' arrays kept the pages of
        # the rows that had to leave (~33 MB of RSS that no budget counted).
        index = sum(
            max(t.index.nbytes - _INDEX_ROW_BYTES * len(t), _INDEX_ROW_BYTES * len(t))
            for t in self._tables
        )
        fixed = logs + index + self._working + rocks.memory_bytes(self._db)
        return max(0, fixed - _FIXED_OVERHEAD)

    @property
    def checkpoint_due(self) -> bool:
        """Whether rows changed since the last checkpoint fill half the budget's room for rows.

        The room is what :meth:`_overhead_bytes` leaves of the budget.

        They cannot leave memory before a checkpoint writes them; the caller
        (the trainer) should take its checkpoint now, with its own blobs,
        rather than let a later lookup fail with :class:`MemoryBudgetError`.
        Always ``False`` without a budget.
        """
        if self.memory_budget is None:
            return False
        dirty = sum(int(np.count_nonzero(t.dirty.rows)) * t.row_bytes for t in self._tables)
        return dirty >= DIRTY_SHARE * (self.memory_budget - self._overhead_bytes())

    @staticmethod
    def _latest(times: np.ndarray, inverse: np.ndarray, n: int) -> np.ndarray:
        latest = np.full(n, -np.inf)
        np.maximum.at(latest, inverse, times)
        return latest

    def _admit(
        self, table: RowTable, slots: np.ndarray | int, fids: np.ndarray, counts: np.ndarray
    ) -> np.ndarray:
        cfg = table.config
        if cfg.occurrence_threshold == 1:
            return np.ones(len(fids), dtype=bool)
        # The hash of (slot id + 1, fid), as ``salted`` computes it.
        keys = mix64(as_uint64(fids) ^ table.filter_salts[slots])
        if cfg.admission == "probabilistic":
            self._draws += 1
            return probabilistic_admit(keys, counts, cfg.admit_probability, self.seed, self._draws)
        admitted = self._filter.add(keys, counts) >= cfg.occurrence_threshold
        self._filter.discard(keys[admitted])
        return admitted

    def apply_gradients(self, lookup: TrainingLookup, grads: Any) -> None:
        """Update the rows of a training lookup with the gradients of its values.

        Gradients of the same row are summed before the optimizer step; those
        of ids without a row are dropped.
        """
        if lookup.generation != self._generation:
            raise StoreError("this lookup predates an expiry sweep; look the ids up again")
        grads = np.asarray(grads)
        if grads.dtype != np.float32 and not np.issubdtype(grads.dtype, np.floating):
            raise TypeError(f"gradients must be floating point, got {grads.dtype}")
        if grads.shape != lookup.values.shape:
            raise ValueError(
                f"gradients have shape {grads.shape}, the lookup {lookup.values.shape}"
            )
        grads = np.ascontiguousarray(grads, dtype=np.float32)
        for table, positions in lookup.parts:
            table.apply(lookup.rows[positions], grads[positions])
        if self.memory_budget is not None:
            _release_free_heap()

    # -- expiry, sync and checkpoints ---------------------------------------

    def expire(self, now: float) -> dict[str, int]:
        """Remove rows unseen for ``expire_after`` seconds of event time before ``now``.

        A row is removed once ``now - last_seen >= expire_after``. Returns the
        number removed per slot. Outstanding training lookups become invalid.
        """
        self._generation += 1
        # The counters alone: the trainer sweeps every hour of event time,
        # which a sparse replayed log passes at almost every batch.
        before = {id(table): table.expired.copy() for table in self._tables}
        for table in self._tables:
            table.expire(float(now))
            if self.memory_budget is not None and table.config.expire_after is not None:
                self._expire_on_disk(table, float(now) - table.config.expire_after)
        return {
            name: int(table.expired[local] - before[id(table)][local])
            for name, (table, local) in self._where.items()
        }

    def _expire_on_disk(self, table: RowTable, cutoff: float) -> None:
        """Remove the rows on disk only whose last_seen is at or before ``cutoff``.

        One range scan of each slot's expiry index; rows in memory were
        judged by their own (newer) last_seen, and removals since the last
        checkpoint are already gone.
        """
        for local, slot_id in enumerate(table.slot_ids):
            first, _ = layout.slot_range(layout.EXPIRY_PREFIX, slot_id)
            # The greatest key of this slot with last_seen <= cutoff.
            (last,) = layout.expiry_keys(slot_id, np.array([cutoff]), np.array([-1], np.int64))
            keys = [key for key, _ in self._range(first, last + b"\x00")]
            if not keys:
                continue
            try:
                seen, fids = layout.parse_expiry_keys(keys)
            except ValueError as exc:
                raise CorruptStoreError(f"the store at {self.path} is damaged: {exc}") from exc
            on_disk_only = table.find(local, fids) < 0
            if len(table.gone):
                on_disk_only &= table.find_gone(local, fids) < 0
            fids, seen = fids[on_disk_only], seen[on_disk_only]
            slots = np.full(len(fids), local, dtype=np.int64)
            table.expired[local] += len(fids)
            table.forget(fids[:0], slots, fids, seen)

    def pending_changes(self) -> int:
        """Size of the touched set that :meth:`drain_changes` would return."""
        return sum(table.touched.size() for table in self._tables)

    def changes_lost(self) -> bool:
        """Whether the changes since the last drain were let go; then take a snapshot.

        Nothing drains the changes of a trainer without a publisher: past
        about a million removed or evicted ids the store stops recording
        them (:class:`ChangeLog`) instead of growing.
        """
        return any(table.touched.lost for table in self._tables)

    def reset_changes(self) -> None:
        """Start recording changes afresh, e.g. when a snapshot of every row goes out."""
        for table in self._tables:
            table.touched.clear()

    def drain_changes(self) -> dict[str, SlotChanges]:
        """Every row created, updated or removed since the last drain, per slot.

        ``StoreError`` if :meth:`changes_lost`: a delta would miss changes.
        """
        if self.changes_lost():
            raise StoreError(
                "the store let go of its changes since the last drain (nothing drained "
                "them for long); publish a snapshot (reset_changes), not a delta"
            )
        changes = {}
        for table in self._tables:
            rows, removed_slots, removed = table.touched.pending()
            evicted_slots, evicted = table.touched.evictions()
            table.touched.clear()
            # Removed ids, and changed rows that left memory since (clean, so
            # as on disk): each now has a row in memory, one on disk, or none.
            pair_slots, pairs = distinct_pairs(
                np.concatenate([evicted_slots, removed_slots]), np.concatenate([evicted, removed])
            )
            in_memory = table.find(pair_slots, pairs)
            rows = np.union1d(rows, in_memory[in_memory >= 0])
            away = np.flatnonzero(in_memory < 0)
            on_disk = np.zeros(len(away), dtype=bool)
            vectors = np.empty((0, table.config.dim), dtype=np.float32)
            if self.memory_budget is not None and len(away):
                on_disk, records = self._read_disk(table, pair_slots[away], pairs[away])
                vectors = records["w"]
            disk, vanished = away[on_disk], away[~on_disk]
            for local, name in enumerate(table.names):
                mine = _of_slot(table, rows, local)
                from_disk = pair_slots[disk] == local
                changes[name] = SlotChanges(
                    np.concatenate([table.row_fid[mine], pairs[disk][from_disk]]),
                    np.concatenate([table.weights[mine], vectors[from_disk]]),
                    pairs[vanished][pair_slots[vanished] == local],
                )
        return {name: changes[name] for name in self._configs}

    def export(self, slot: str) -> tuple[np.ndarray, np.ndarray]:
        """All ``(fids, vectors)`` of a slot, for a snapshot."""
        table, local = self._slot(slot)
        rows = table.live_rows(local)
        fids, vectors = table.row_fid[rows], table.weights[rows]
        if self.memory_budget is None:
            return fids, vectors
        # The rows on disk, less those in memory (maybe newer) or removed since.
        keys, values = [], []
        for key, value in self._range(*layout.slot_range(layout.ROW_PREFIX, self._slot_ids[slot])):
            keys.append(key)
            values.append(value)
        if not keys:
            return fids, vectors
        _, disk_fids = layout.parse_row_keys(keys)
        try:
            disk_vectors = layout.decode_rows(self._row_dtype(table), values)["w"]
        except ValueError as exc:
            raise CorruptStoreError(f"the store at {self.path} is damaged: {exc}") from exc
        keep = table.find(local, disk_fids) < 0
        if len(table.gone):
            keep &= table.find_gone(local, disk_fids) < 0
        return (
            np.concatenate([fids, disk_fids[keep]]),
            np.concatenate([vectors, disk_vectors[keep]]),
        )

    def checkpoint(self, extra: Mapping[str, bytes] | None = None) -> None:
        """Persist every change since the last checkpoint, and ``extra``, atomically.

        One SST file, ingested by RocksDB at once, carries changed rows,
        deletions, the filter's changed chunks, the metadata and the blobs of
        ``extra`` (which replace the previous ones; ``None`` keeps them). A
        crash at any point leaves either this checkpoint or the previous one,
        never a mix.
        """
        change = Checkpoint()
        written = []
        for table in self._tables:
            rows, removed_slots, removed = table.dirty.pending()
            if table.config.expire_after is not None:
                _index_changes(change.run(layout.EXPIRY_PREFIX, layout.EXPIRY_KEY_LEN), table, rows)
            written.append((table, rows, removed_slots, removed))
        change.stream(layout.ROW_PREFIX, self._row_runs(written))
        for chunk, blob in self._filter.dirty_chunks():
            change.put(layout.filter_key(chunk), blob)
        if extra is not None:
            for name in self.extra.keys() - extra.keys():
                change.delete(layout.extra_key(name))
            for name, blob in extra.items():
                change.put(layout.extra_key(name), bytes(blob))
        committed, self._committed = self._committed, self._row_counts()
        indexed, self._indexed = self._indexed, self._expiring()
        change.put(layout.META_KEY, self._meta())
        try:
            change.ingest(self._db, rocks.options(), self.path / _INGEST_FILE)
        except Exception as exc:
            # Nothing of the file was ingested: the changes stay pending.
            self._committed, self._indexed = committed, indexed
            if type(exc) is Exception or isinstance(exc, OSError):
                raise _disk_error(self.path, exc) from exc
            raise
        for ahead in self._prefetched:
            for table, rows, removed_slots, removed in written:
                ahead.overwritten(table, rows, table.keys(removed_slots, removed))
        for table, rows, _, _ in written:
            table.persisted[rows] = table.last_seen[rows]
            table.dirty.clear()
            if len(table.gone):
                table.gone = table.new_index()
        self._filter.clear_dirty()
        if extra is not None:
            self.extra = {name: bytes(blob) for name, blob in extra.items()}
        if self.memory_budget is not None and self._tables:
            # The ingested file's filter and index add to RocksDB's memory,
            # which the rows admitted before it did not leave room for.
            self._make_room(self._tables[0], 0, {})

    def _row_runs(
        self, written: list[tuple[RowTable, np.ndarray, np.ndarray, np.ndarray]]
    ) -> Iterator[KeyRun]:
        """The row puts and deletes of a checkpoint, one run per slot in key (slot id) order.

        ``written``: per table, its changed rows and the (local slots, fids)
        of its removed pairs.
        """
        slots = sorted(
            (slot_id, local, k)
            for k, (table, *_) in enumerate(written)
            for local, slot_id in enumerate(table.slot_ids)
        )
        of_slot: dict[int, np.ndarray] = {}
        for slot_id, local, k in slots:
            table, rows, removed_slots, removed = written[k]
            if k not in of_slot:
                # One gather of every changed row's slot, not one per slot.
                of_slot.clear()
                of_slot[k] = table.row_slot[rows]
            run = KeyRun(layout.ROW_KEY_LEN)
            removed = removed[removed_slots == local]
            removed = removed[table.find(local, removed) < 0]  # not created again since
            run.add(layout.packed_row_keys(slot_id, removed), None)
            mine = rows if len(table.slot_ids) == 1 else rows[of_slot[k] == local]
            keys = layout.packed_row_keys(slot_id, table.row_fid[mine])
            run.add(keys, _row_values(table, self._row_dtype(table)), mine)
            yield run

    def snapshot(self, path: str | Path) -> None:
        """Copy the last checkpoint to ``path`` (a new directory) as a store of its own.

        A RocksDB checkpoint: files are hard-linked where the file system
        allows, so it costs little more than flushing the memtable. Open the
        copy with :meth:`open`.
        """
        try:
            DbCheckpoint(self._db).create_checkpoint(str(path))
        except Exception as exc:
            raise _disk_error(Path(path), exc) from exc

    def adopt_rows(self, other: EmbeddingStore, keep: Callable[[np.ndarray], np.ndarray]) -> int:
        """Copy the rows of ``other`` whose fids ``keep`` selects into this store.

        Vectors, optimizer state and last_seen come along; the rows count as
        changed, so the next :meth:`checkpoint` writes them. For re-sharding:
        ``keep(fids)`` gets an int64 array and returns a boolean mask. The
        slots must exist in both stores with the same settings, and neither
        store may have a memory budget (every row is in memory). Returns the
        number of rows copied.
        """
        if self.memory_budget is not None or other.memory_budget is not None:
            raise StoreError("rows can be copied between stores without a memory budget only")
        copied = 0
        for name, (theirs, their_local) in other._where.items():
            table, local = self._slot(name)
            rows = theirs.live_rows(their_local)
            rows = rows[keep(theirs.row_fid[rows])]
            fids = theirs.row_fid[rows]
            if (table.find(local, fids) >= 0).any():
                raise StoreError(f"slot {name!r} holds some of the rows to copy already")
            mine = table.load(
                local,
                fids,
                theirs.weights[rows],
                theirs.state[rows],
                theirs.last_seen[rows],
                np.nan,
            )
            table.dirty.mark(mine)
            table.touched.mark(mine)
            copied += len(rows)
        return copied

    def adopt_pending(self, other: EmbeddingStore) -> None:
        """Add the admission counts of ``other``'s ids still below their threshold to this
        store's filter (for re-sharding, next to :meth:`adopt_rows`; the same filter size)."""
        self._filter.merge(other._filter)

    def stats(self) -> StoreStats:
        def per_slot(counter: str) -> dict[str, int]:
            return {
                name: int(getattr(table, counter)[local])
                for name, (table, local) in self._where.items()
            }

        tables = self._tables
        cache = self._cache
        return StoreStats(
            rows=per_slot("rows"),
            admitted=per_slot("admitted"),
            filtered=per_slot("filtered"),
            expired=per_slot("expired"),
            memory_bytes=sum(t.nbytes for t in tables) + self._filter.nbytes,
            filter_bytes=self._filter.nbytes,
            memory_rows=sum(len(t) for t in tables),
            disk_rows=sum(self._committed.values()),
            disk_bytes=self._disk_bytes(),
            memory_budget=self.memory_budget,
            cache_hits=cache.hits,
            cache_misses=cache.misses,
            read_ahead=cache.read_ahead,
            evictions=cache.evictions,
        )

    def unseen_lookups(self) -> dict[str, int]:
        """Per slot, the training lookups that found no row, since the store was opened.

        The ids they admitted and those held back: what :meth:`stats` counts
        as ``admitted`` plus ``filtered``, without its other figures (the
        trainer reads this every few steps).
        """
        return {
            name: int(table.admitted[local]) + int(table.filtered[local])
            for name, (table, local) in self._where.items()
        }

    def _disk_bytes(self) -> int:
        total = 0
        for name in ("rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"):
            total += self._db.property_int_value(name) or 0
        return total

    def _row_counts(self) -> dict[int, int]:
        return {
            self._slot_ids[name]: int(table.rows[local])
            for name, (table, local) in self._where.items()
        }

    def _row_dtype(self, table: RowTable) -> np.dtype:
        cfg = table.config
        return layout.row_dtype(cfg.dim, state_width(cfg.optimizer) * cfg.dim)

    def _meta(self) -> bytes:
        slots = [
            {"id": self._slot_ids[name], "config": cfg.model_dump(mode="json")}
            for name, cfg in self._configs.items()
        ]
        meta = {
            "format": layout.FORMAT_VERSION,
            "seed": self.seed,
            "draws": self._draws,
            "filter": self._filter.config.model_dump(mode="json"),
            "slots": slots,
            "rows": {str(k): v for k, v in self._committed.items()},
            "indexed": sorted(self._indexed),
        }
        return json.dumps(meta).encode()


def _group_tables(
    slots: Sequence[tuple[int, SlotConfig]], seed: int, tiered: bool
) -> tuple[list[RowTable], dict[str, tuple[RowTable, int]]]:
    """One table per distinct row setting; slot name -> (its table, its local index)."""
    groups: dict[str, list[tuple[int, SlotConfig]]] = {}
    for slot_id, cfg in slots:
        groups.setdefault(cfg.model_dump_json(exclude={"name"}), []).append((slot_id, cfg))
    tables, where = [], {}
    for members in groups.values():
        table = RowTable(
            members[0][1], [cfg.name for _, cfg in members], [i for i, _ in members], seed, tiered
        )
        tables.append(table)
        where.update((cfg.name, (table, local)) for local, (_, cfg) in enumerate(members))
    return tables, where


def _by_table(
    where: Sequence[tuple[RowTable, int]],
) -> list[tuple[RowTable, list[int]]]:
    """The positions in ``where`` of each table's slots, tables in first-seen order."""
    grouped: dict[int, tuple[RowTable, list[int]]] = {}
    for i, (table, _) in enumerate(where):
        grouped.setdefault(id(table), (table, []))[1].append(i)
    return list(grouped.values())


def _of_slot(table: RowTable, rows: np.ndarray, local: int) -> np.ndarray:
    """The ``rows`` that belong to local slot ``local``."""
    return rows if len(table.names) == 1 else rows[table.row_slot[rows] == local]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` on a C library without it."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _release_free_heap() -> None:
    """Give the C heap's free pages back to the system, after a budgeted training step.

    A step's temporaries (~60 MB on the bench) leave free memory scattered
    through the heap that malloc keeps: 75-110 MB of resident free heap at
    steady state on the bench, against a budget of 410 MB. Trimming after
    every step kept it at ~45 MB (steady RSS 517 -> 466 MB) for ~11 ms of
    CPU a step (3%), page faults of the next step included.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _find(index: FidIndex, keys: np.ndarray) -> np.ndarray:
    """``index.find(keys)`` in chunks of :data:`_FIND_CHUNK` keys, to bound its temporaries."""
    if len(keys) <= _FIND_CHUNK:
        return index.find(keys)
    return np.concatenate(
        [
            index.find(keys[start : start + _FIND_CHUNK])
            for start in range(0, len(keys), _FIND_CHUNK)
        ]
    )


def _index_changes(run: KeyRun, table: RowTable, rows: np.ndarray) -> None:
    """Expiry index updates for a checkpoint of changed ``rows`` and of the removals.

    Deletions come first: a row removed and created again at the same
    last_seen deletes and puts one key, and the put must win.
    """
    slot_ids = np.asarray(table.slot_ids, dtype=np.int64)
    slots, fids, persisted = table.dirty.removals()
    indexed = ~np.isnan(persisted)
    run.add(
        layout.packed_expiry_keys(slot_ids[slots[indexed]], persisted[indexed], fids[indexed]),
        None,
    )
    old, new = table.persisted[rows], table.last_seen[rows]
    moved = old != new  # true where old is NaN (a new row)
    stale = moved & ~np.isnan(old)
    row_slots, row_fids = slot_ids[table.row_slot[rows]], table.row_fid[rows]
    run.add(layout.packed_expiry_keys(row_slots[stale], old[stale], row_fids[stale]), None)
    run.add(layout.packed_expiry_keys(row_slots[moved], new[moved], row_fids[moved]), b"")


def _row_values(table: RowTable, dtype: np.dtype):
    """The encoded records of rows of ``table``, for a :class:`KeyRun`."""

    def values(rows: np.ndarray) -> list[bytes]:
        # np.take copies whole rows: 2x faster than fancy indexing here.
        return layout.encode_rows(
            dtype,
            np.take(table.weights, rows, axis=0),
            np.take(table.state, rows, axis=0),
            np.take(table.last_seen, rows),
        )

    return values


def _read_rows(
    db: Rdict,
    path: Path,
    dtype: np.dtype,
    slot_ids: np.ndarray | int,
    fids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of (slot id, fid) pairs RocksDB holds ``(n,)`` bool, and their records.

    One multi-get, in key order; safe to run on a thread besides the store's own.
    """
    # Keys in RocksDB's order: neighbours share index and filter cache lines
    # (measured: 4.2-5.3 against 5.5-6.1 µs a key on the bench's 20M rows).
    # A key's bytes are the big-endian slot id and fid: unsigned order.
    slot_ids = np.broadcast_to(slot_ids, fids.shape)
    order = np.lexsort((as_uint64(fids), slot_ids))
    keys = layout.row_keys(slot_ids[order], fids[order])
    present = np.zeros(len(fids), dtype=bool)
    # By pair; the records of absent pairs stay unset.
    records = np.empty(len(fids), dtype=dtype)
    try:
        # Decoded a chunk at a time: the bytes of one chunk in memory, not all.
        for start, blobs in rocks.multi_get_chunks(db, keys):
            pairs = order[start : start + len(blobs)]
            got = np.fromiter((b is not None for b in blobs), dtype=bool, count=len(blobs))
            present[pairs[got]] = True
            try:
                records[pairs[got]] = layout.decode_rows(dtype, [b for b in blobs if b is not None])
            except ValueError as exc:
                raise CorruptStoreError(f"the store at {path} is damaged: {exc}") from exc
    except StoreError:
        raise
    except Exception as exc:
        raise _disk_error(path, exc) from exc
    return present, records[present]


class _Prefetch:
    """Rows of one read-ahead per table, and the keys checkpoints wrote since it began.

    A row that only RocksDB holds changes there only when a checkpoint
    writes or deletes it; those keys are set aside (``overwritten``), so what
    :meth:`take` hands out is what a multi-get would read now.
    """

    def __init__(self, reads: dict[int, tuple[np.ndarray, Future]]) -> None:
        # id(table) -> (sorted distinct index keys read, future of _read_rows).
        self._reads = reads
        # id(table) -> (keys read,) bool: True where a checkpoint wrote the key since.
        self._stale: dict[int, np.ndarray] = {}

    def overwritten(self, table: RowTable, rows: np.ndarray, removed_keys: np.ndarray) -> None:
        """Set aside the keys read that a checkpoint writes: its ``rows`` ``(n,)`` of
        ``table`` and the index keys ``(m,)`` of the pairs it deletes.

        A written row is in memory, so a key read is written if the table's
        index finds it at one of ``rows``: a probe of the few keys read, where
        matching them against every written key cost 0.25-0.36 s a
        checkpoint on the bench's 20M-row table (~480k rows written).
        """
        read = self._reads.get(id(table))
        if read is None or not len(read[0]):
            return
        keys = read[0]
        written = np.zeros(len(table.row_fid), dtype=bool)
        written[rows] = True
        where = _find(table.index, keys)
        stale = np.zeros(len(keys), dtype=bool)
        stale[where >= 0] = written[where[where >= 0]]
        if len(removed_keys):
            stale |= np.isin(keys, removed_keys)
        self._stale[id(table)] = self._stale.get(id(table), False) | stale

    def holds(self, table: RowTable, index_keys: np.ndarray) -> np.ndarray:
        """Which of ``index_keys`` ``(n,)`` this read-ahead reads, ``(n,)`` bool."""
        read = self._reads.get(id(table))
        if read is None or not len(read[0]):
            return np.zeros(len(index_keys), dtype=bool)
        keys = read[0]
        where = np.minimum(np.searchsorted(keys, index_keys), len(keys) - 1)
        return keys[where] == index_keys

    def take(
        self, table: RowTable, index_keys: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """For pairs by index keys ``(n,)``: which were read ahead ``(n,)`` bool, which
        of those RocksDB holds, and their records; ``None`` if nothing of this table was.

        Raises the read's error, if it failed.
        """
        read = self._reads.get(id(table))
        if read is None:
            return None
        keys, future = read
        present, records = future.result()
        usable = ~self._stale.get(id(table), np.zeros(len(keys), dtype=bool))
        where = np.minimum(np.searchsorted(keys, index_keys), max(len(keys) - 1, 0))
        known = np.zeros(len(index_keys), dtype=bool)
        if len(keys):
            known = (keys[where] == index_keys) & usable[where]
        where = where[known]
        # Records are those of the present keys, in key order.
        record_of = np.cumsum(present) - 1
        known_present = present[where]
        return known, known_present, records[record_of[where[known_present]]]


def _disk_error(path: Path, exc: BaseException) -> StoreError:
    """A RocksDB failure as an error that says what to do."""
    text = str(exc)
    if "No space" in text or "ENOSPC" in text:
        return StoreError(
            f"the disk under the store at {path} is full ({text}). Free space there or move "
            "the data directory; the last checkpoint is intact and changes since then are "
            "still in memory, so the next checkpoint can write them"
        )
    if "Corruption" in text or "checksum" in text.lower() or "IO error" in text:
        return CorruptStoreError(
            f"RocksDB cannot read the store at {path} ({text}). A file of it is damaged or "
            "unreadable: restore the directory from a backup or start from a new one"
        )
    return StoreError(f"RocksDB failed on the store at {path}: {text}")


def _sync_writes() -> WriteOptions:
    options = WriteOptions()
    options.sync = True
    return options


def _unique_slots(slots: Iterable[SlotConfig]) -> list[SlotConfig]:
    configs = list(slots)
    names = [c.name for c in configs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise StoreError(f"slot names must be unique; repeated: {duplicated}")
    if not configs:
        raise StoreError("a store needs at least one slot")
    return configs


def _merge_slots(
    path: Path, stored: list[tuple[int, SlotConfig]], wanted: list[SlotConfig]
) -> list[tuple[int, SlotConfig]]:
    """Stored slot ids with the wanted configs; new slots get fresh ids."""
    by_name = {cfg.name: (slot_id, cfg) for slot_id, cfg in stored}
    missing = sorted(by_name.keys() - {cfg.name for cfg in wanted})
    if missing:
        raise StoreError(
            f"the store at {path} has slots {missing} that the config does not name; "
            "add them to the config or use a new data directory"
        )
    next_id = max((slot_id for slot_id, _ in stored), default=-1) + 1
    merged = []
    for cfg in wanted:
        if cfg.name not in by_name:
            merged.append((next_id, cfg))
            next_id += 1
            continue
        slot_id, old = by_name[cfg.name]
        if (old.dim, old.optimizer.kind) != (cfg.dim, cfg.optimizer.kind):
            raise StoreError(
                f"slot {cfg.name!r} in the store at {path} has dim {old.dim} and optimizer "
                f"{old.optimizer.kind!r}; the config asks for dim {cfg.dim} and "
                f"{cfg.optimizer.kind!r}. Keep both or use a new data directory"
            )
        merged.append((slot_id, cfg))
    return merged
