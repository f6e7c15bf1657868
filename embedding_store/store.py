"""The embedding store: slots of rows in memory, checkpointed to RocksDB."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions

from headrace.embedding_store import _layout as layout
from headrace.embedding_store._hashing import as_uint64, mix64
from headrace.embedding_store.admission import CountingFilter, probabilistic_admit
from headrace.embedding_store.config import FilterConfig, SlotConfig
from headrace.embedding_store.optimizers import state_width
from headrace.embedding_store.table import RowTable

__all__ = [
    "CorruptStoreError",
    "EmbeddingStore",
    "SlotChanges",
    "StoreError",
    "StoreStats",
    "TrainingLookup",
]


class StoreError(Exception):
    """The store cannot do what was asked; the message says what to change."""


class CorruptStoreError(StoreError):
    """The store directory holds data this version cannot read back."""


@dataclass(frozen=True)
class TrainingLookup:
    """Result of :meth:`EmbeddingStore.lookup_slots` (and ``lookup_for_training``).

    The fids of ``slots`` are concatenated in that order: slot ``slots[i]``
    has positions ``bounds[i]:bounds[i + 1]``. ``values[j]`` ``(dim,)`` is
    the vector of the j-th fid, zeros where it has no row (``rows[j] == -1``;
    row numbers are per table). Pass the lookup back to
    :meth:`EmbeddingStore.apply_gradients` with the gradients of ``values``.
    """

    slots: tuple[str, ...]
    bounds: np.ndarray
    rows: np.ndarray
    values: np.ndarray
    generation: int
    # (table, positions in the concatenation) for each table the slots live in.
    parts: tuple[tuple[RowTable, slice | np.ndarray], ...] = field(repr=False)


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


def _check_fids(fids: Any) -> np.ndarray:
    array = np.asarray(fids)  # CPU torch tensors convert without a copy
    if array.dtype != np.int64:
        raise TypeError(f"fids must be int64, got {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"fids must be a 1-d array, got shape {array.shape}")
    return array


def _check_event_time(event_time: Any, n: int) -> np.ndarray | float:
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
    ) -> None:
        self._db = db
        self.path = path
        self.seed = seed
        self._slot_ids = {cfg.name: slot_id for slot_id, cfg in slots}
        self._configs = {cfg.name: cfg for _, cfg in slots}
        self._tables, self._where = _group_tables(slots, seed)
        self._filter = CountingFilter(filter_config)
        self._draws = draws
        self._generation = 0
        self._closed = False
        self.extra: dict[str, bytes] = {}

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
        """
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
        db = cls._open_db(path, read_only)
        try:
            meta_blob = db.get(layout.META_KEY)
            if meta_blob is None:
                store = cls._create(db, path, slots, seed, filter, read_only)
            else:
                store = cls._restore(db, path, meta_blob, slots, seed, filter)
        except BaseException:
            db.close()
            raise
        return store

    @staticmethod
    def _open_db(path: Path, read_only: bool) -> Rdict:
        options = Options(raw_mode=True)
        options.create_if_missing(not read_only)
        access = AccessType.read_only() if read_only else AccessType.read_write()
        try:
            return Rdict(str(path), options, access_type=access)
        except Exception as exc:
            if "lock" in str(exc).lower():
                raise StoreError(
                    f"the store at {path} is open in another process; "
                    "stop that process or use another directory"
                ) from exc
            raise CorruptStoreError(f"cannot open the RocksDB database at {path}: {exc}") from exc

    @classmethod
    def _create(
        cls,
        db: Rdict,
        path: Path,
        slots: Iterable[SlotConfig] | None,
        seed: int | None,
        filter_config: FilterConfig | None,
        read_only: bool,
    ) -> EmbeddingStore:
        if next(iter(db.keys()), None) is not None:
            raise CorruptStoreError(f"the store at {path} has data but no metadata record")
        if read_only:
            raise StoreError(f"no store at {path}")
        if slots is None:
            raise StoreError(f"{path} holds no store yet; pass slot configs to create one")
        configs = _unique_slots(slots)
        store = cls(
            db, path, list(enumerate(configs)), seed or 0, filter_config or FilterConfig(), 0
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
    ) -> EmbeddingStore:
        try:
            meta = json.loads(meta_blob)
            stored = [(int(s["id"]), SlotConfig.model_validate(s["config"])) for s in meta["slots"]]
            stored_filter = FilterConfig.model_validate(meta["filter"])
            stored_seed, draws, version = int(meta["seed"]), int(meta["draws"]), meta["format"]
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
        store = cls(db, path, merged, stored_seed, stored_filter, draws)
        try:
            store._load()
        except ValueError as exc:
            raise CorruptStoreError(f"the store at {path} is damaged: {exc}") from exc
        return store

    def _load(self) -> None:
        names = {slot_id: name for name, slot_id in self._slot_ids.items()}
        keys: list[bytes] = []
        values: list[bytes] = []
        for key, value in self._db.items(from_key=layout.FILTER_PREFIX):
            kind = key[:1]
            if kind == layout.FILTER_PREFIX:
                self._filter.load_chunk(int.from_bytes(key[1:], "big"), value)
            elif kind == layout.ROW_PREFIX:
                keys.append(key)
                values.append(value)
            elif kind == layout.EXTRA_PREFIX:
                self.extra[key[1:].decode()] = value
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
            table.load(local, fids[start:stop], records["w"], records["s"], records["t"])

    def close(self) -> None:
        """Close the database; changes since the last checkpoint are dropped.

        Closing twice is harmless.
        """
        if not self._closed:
            self._closed = True
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

    def lookup(self, slot: str, fids: Any) -> np.ndarray:
        """Vectors of ``fids`` (float32, ``(n, dim)``), zeros where an id has no row.

        A read: it neither counts occurrences nor refreshes expiry.
        """
        table, local = self._slot(slot)
        return table.gather(table.find(local, _check_fids(fids)))

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
        where = [self._slot(slot) for slot in slots]
        dims = {table.config.dim for table, _ in where}
        if len(dims) > 1:
            raise ValueError(f"slots of one lookup must share a dim, got {sorted(dims)}")
        bounds = np.zeros(len(slots) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=bounds[1:])
        all_fids = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        event_time = _check_event_time(event_time, len(all_fids))
        rows = np.empty(len(all_fids), dtype=np.int64)
        values = np.empty((len(all_fids), dims.pop() if dims else 0), dtype=np.float32)
        parts = []
        for table, members in _by_table(where):
            if len(members) == len(slots):
                positions: slice | np.ndarray = slice(None)
                local = _local_slots(where, bounds, members)
            else:
                positions = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in members])
                local = _local_slots(where, bounds, members)
            times = event_time if np.ndim(event_time) == 0 else event_time[positions]
            table_rows = self._train_lookup(table, local, all_fids[positions], times)
            rows[positions] = table_rows
            values[positions] = table.gather(table_rows)
            parts.append((table, positions))
        return TrainingLookup(slots, bounds, rows, values, self._generation, tuple(parts))

    def _train_lookup(
        self,
        table: RowTable,
        slots: np.ndarray | int,
        fids: np.ndarray,
        event_time: np.ndarray | float,
    ) -> np.ndarray:
        """Rows of (local slot, fid) pairs of one table, admitting and stamping them."""
        keys = table.keys(slots, fids)
        rows = table.index.find(keys)
        missing = np.flatnonzero(rows < 0)
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
        found = rows >= 0
        held_back = len(rows) - int(np.count_nonzero(found))
        if held_back:
            table.count(table.filtered, slots if np.ndim(slots) == 0 else slots[~found], held_back)
        table.see(rows[found], event_time if np.ndim(event_time) == 0 else event_time[found])
        return rows

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
        if not np.issubdtype(grads.dtype, np.floating):
            raise TypeError(f"gradients must be floating point, got {grads.dtype}")
        if grads.shape != lookup.values.shape:
            raise ValueError(
                f"gradients have shape {grads.shape}, the lookup {lookup.values.shape}"
            )
        grads = np.ascontiguousarray(grads, dtype=np.float32)
        for table, positions in lookup.parts:
            table.apply(lookup.rows[positions], grads[positions])

    # -- expiry, sync and checkpoints ---------------------------------------

    def expire(self, now: float) -> dict[str, int]:
        """Remove rows unseen for ``expire_after`` seconds of event time before ``now``.

        A row is removed once ``now - last_seen >= expire_after``. Returns the
        number removed per slot. Outstanding training lookups become invalid.
        """
        self._generation += 1
        before = self.stats().expired
        for table in self._tables:
            table.expire(float(now))
        return {name: count - before[name] for name, count in self.stats().expired.items()}

    def pending_changes(self) -> int:
        """Size of the touched set that :meth:`drain_changes` would return."""
        return sum(table.touched.size() for table in self._tables)

    def drain_changes(self) -> dict[str, SlotChanges]:
        """Every row created, updated or removed since the last drain, per slot."""
        changes = {}
        for table in self._tables:
            rows, removed_slots, removed = table.touched.pending()
            table.touched.clear()
            gone = table.find(removed_slots, removed) < 0
            for local, name in enumerate(table.names):
                mine = _of_slot(table, rows, local)
                changes[name] = SlotChanges(
                    table.row_fid[mine],
                    table.weights[mine],
                    removed[gone & (removed_slots == local)],
                )
        return {name: changes[name] for name in self._configs}

    def export(self, slot: str) -> tuple[np.ndarray, np.ndarray]:
        """All ``(fids, vectors)`` of a slot, for a snapshot."""
        table, local = self._slot(slot)
        rows = table.live_rows(local)
        return table.row_fid[rows], table.weights[rows]

    def checkpoint(self, extra: Mapping[str, bytes] | None = None) -> None:
        """Persist every change since the last checkpoint, and ``extra``, atomically.

        One RocksDB write batch carries changed rows, deletions, the filter's
        changed chunks, the metadata and the blobs of ``extra`` (which replace
        the previous ones; ``None`` keeps them). A crash at any point leaves
        either this checkpoint or the previous one, never a mix.
        """
        batch = WriteBatch(raw_mode=True)
        for table in self._tables:
            rows, removed_slots, removed = table.dirty.pending()
            gone = table.find(removed_slots, removed) < 0
            for local, name in enumerate(table.names):
                slot_id = self._slot_ids[name]
                for key in layout.row_keys(slot_id, removed[gone & (removed_slots == local)]):
                    batch.delete(key)
                mine = _of_slot(table, rows, local)
                keys = layout.row_keys(slot_id, table.row_fid[mine])
                values = layout.encode_rows(
                    self._row_dtype(table),
                    table.weights[mine],
                    table.state[mine],
                    table.last_seen[mine],
                )
                for key, value in zip(keys, values, strict=True):
                    batch.put(key, value)
        for chunk, blob in self._filter.dirty_chunks():
            batch.put(layout.filter_key(chunk), blob)
        if extra is not None:
            for name in self.extra.keys() - extra.keys():
                batch.delete(layout.extra_key(name))
            for name, blob in extra.items():
                batch.put(layout.extra_key(name), bytes(blob))
        batch.put(layout.META_KEY, self._meta())
        self._db.write(batch, _sync_writes())
        for table in self._tables:
            table.dirty.clear()
        self._filter.clear_dirty()
        if extra is not None:
            self.extra = {name: bytes(blob) for name, blob in extra.items()}

    def stats(self) -> StoreStats:
        def per_slot(counter: str) -> dict[str, int]:
            return {
                name: int(getattr(table, counter)[local])
                for name, (table, local) in self._where.items()
            }

        tables = self._tables
        return StoreStats(
            rows=per_slot("rows"),
            admitted=per_slot("admitted"),
            filtered=per_slot("filtered"),
            expired=per_slot("expired"),
            memory_bytes=sum(t.nbytes for t in tables) + self._filter.nbytes,
            filter_bytes=self._filter.nbytes,
        )

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
        }
        return json.dumps(meta).encode()


def _group_tables(
    slots: Sequence[tuple[int, SlotConfig]], seed: int
) -> tuple[list[RowTable], dict[str, tuple[RowTable, int]]]:
    """One table per distinct row setting; slot name -> (its table, its local index)."""
    groups: dict[str, list[tuple[int, SlotConfig]]] = {}
    for slot_id, cfg in slots:
        groups.setdefault(cfg.model_dump_json(exclude={"name"}), []).append((slot_id, cfg))
    tables, where = [], {}
    for members in groups.values():
        table = RowTable(
            members[0][1], [cfg.name for _, cfg in members], [i for i, _ in members], seed
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


def _local_slots(
    where: Sequence[tuple[RowTable, int]], bounds: np.ndarray, members: list[int]
) -> np.ndarray | int:
    """Local slot of every fid of the ``members`` slots (one int when there is one slot)."""
    if len(members) == 1:
        return where[members[0]][1]
    locals_ = np.array([where[i][1] for i in members], dtype=np.int64)
    return np.repeat(locals_, [bounds[i + 1] - bounds[i] for i in members])


def _of_slot(table: RowTable, rows: np.ndarray, local: int) -> np.ndarray:
    """The ``rows`` that belong to local slot ``local``."""
    return rows if len(table.names) == 1 else rows[table.row_slot[rows] == local]


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
