"""The serving side of parameter sync: versioned rows, applied whole or not at all."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from headrace.embedding_store.index import FidIndex
from headrace.serving.protocol import SlotRows, Update
from headrace.serving.replica import CachedSlot, Replica

__all__ = ["ParameterState", "RejectedUpdate", "View"]

Model = TypeVar("Model")


class RejectedUpdate(ValueError):
    """An update that does not fit the state; ``reason`` labels it for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _SlotRows:
    """fid -> vector of one slot.

    Deltas append new rows and leave removed ones as garbage, which the next
    snapshot (a fresh, compact table) drops.
    """

    def __init__(self, rows: SlotRows) -> None:
        self.dim = rows.vectors.shape[1]
        # Probed in numpy rounds: a request asks for a few ids, and numba's compiled
        # probe would cost every worker ~150 MB of RSS and ~0.75 s at its first request.
        self.index = FidIndex(capacity=2 * len(rows.fids) + 16, compiled=False)
        self.size = len(rows.fids)
        # Never empty: np.take cannot gather (even clipped) from zero rows.
        self.vectors = np.zeros((max(16, self.size), self.dim), dtype=np.float32)
        self.vectors[: self.size] = rows.vectors
        self.index.insert(rows.fids, np.arange(self.size))

    def apply(self, rows: SlotRows) -> None:
        self.index.remove(rows.removed)
        found = self.index.find(rows.fids)
        new = np.flatnonzero(found < 0)
        if len(new):
            if self.size + len(new) > len(self.vectors):
                grown = np.zeros(
                    (max(2 * len(self.vectors), self.size + len(new)), self.dim), dtype=np.float32
                )
                grown[: self.size] = self.vectors[: self.size]
                self.vectors = grown
            found[new] = np.arange(self.size, self.size + len(new))
            self.index.insert(rows.fids[new], found[new])
            self.size += len(new)
        self.vectors[found] = rows.vectors

    def gather(self, fids: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
        rows = self.index.find(fids)
        values = np.take(self.vectors, rows, axis=0, mode="clip")
        values[rows < 0] = 0.0 if fill is None else fill
        return values

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + self.vectors.nbytes


@dataclass(frozen=True)
class View(Generic[Model]):
    """One version, as seen by one request while it holds the read lock."""

    version: int
    event_time: float
    model: Model
    _slots: Mapping[str, _SlotRows | CachedSlot]

    def lookup(self, slot: str, fids: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
        """Vectors of ``fids``; ``fill`` ``(dim,)`` (or zeros) for ids this version lacks."""
        rows = self._slots.get(slot)
        if rows is None:
            raise KeyError(f"unknown slot {slot!r}")
        return rows.gather(fids, fill)


class ParameterState(Generic[Model]):
    """The rows, dense model and version a serving worker answers from.

    :meth:`apply` takes whole updates: a snapshot replaces everything, a
    delta must follow the current version exactly. Readers use :meth:`read`
    and see exactly one version for as long as they hold it.

    Parameters
    ----------
    build_model
        Turns a snapshot's ``meta`` and a dense blob into the model object
        that scores requests (the same code the trainer runs).
    memory_budget
        Bytes of memory for rows; ``None`` (the default) keeps every row in
        memory. With a budget the rows live in a local RocksDB replica built
        from the snapshot and the deltas after it, and memory holds the rows
        requests used last (see :mod:`headrace.serving.replica`).
    replica_dir
        Where replicas are created (a directory of their own in it each);
        the system's temporary directory by default.
    """

    def __init__(
        self,
        build_model: Callable[[Mapping[str, Any], bytes], Model],
        *,
        memory_budget: int | None = None,
        replica_dir: str | Path | None = None,
    ) -> None:
        if memory_budget is not None and memory_budget <= 0:
            raise ValueError(
                f"memory_budget must be a positive number of bytes, got {memory_budget}"
            )
        self._build_model = build_model
        self._memory_budget = memory_budget
        self._replica_dir = Path(replica_dir or tempfile.gettempdir())
        self._replica: Replica | None = None
        # Cache hits and misses of replicas since replaced: the totals run on.
        self._retired_hits = self._retired_misses = 0
        self._lock = threading.Lock()
        self._slots: Mapping[str, _SlotRows | CachedSlot] = {}
        self._meta: Mapping[str, Any] | None = None
        self._model: Model | None = None
        self.version: int | None = None
        self.event_time = 0.0
        self.published_at = 0.0

    @property
    def ready(self) -> bool:
        return self.version is not None

    def rows(self) -> dict[str, int]:
        with self._lock:
            return {name: len(rows) for name, rows in self._slots.items()}

    def apply(self, update: Update) -> None:
        """Apply a whole update, or raise :class:`RejectedUpdate` and change nothing."""
        if update.kind == "snapshot":
            self._apply_snapshot(update)
        else:
            self._apply_delta(update)

    def _apply_snapshot(self, update: Update) -> None:
        if self.version is not None and update.version <= self.version:
            raise RejectedUpdate(
                "stale", f"snapshot {update.version} is not newer than {self.version}"
            )
        if update.meta is None or update.dense is None:
            raise RejectedUpdate(
                "malformed", f"snapshot {update.version} lacks meta or dense weights"
            )
        # Built outside the lock: readers keep the old version meanwhile.
        model = self._build(update.meta, update.dense)
        replica = None
        slots: Mapping[str, _SlotRows | CachedSlot]
        if self._memory_budget is None:
            slots = {name: _SlotRows(rows) for name, rows in update.slots.items()}
        else:
            with self._replica_errors(update):
                replica = Replica(self._replica_dir, update.slots, self._memory_budget)
            slots = replica.slots
        with self._lock:
            old, self._replica = self._replica, replica
            self._slots, self._meta, self._model = slots, update.meta, model
            self._stamp(update)
            if old is not None:
                self._retired_hits += old.hits
                self._retired_misses += old.misses
        if old is not None:
            old.close()

    def _apply_delta(self, update: Update) -> None:
        if self.version is None:
            raise RejectedUpdate("no_snapshot", f"delta {update.version} before any snapshot")
        if update.version <= self.version:
            raise RejectedUpdate(
                "stale", f"delta {update.version} is not newer than {self.version}"
            )
        if update.version != self.version + 1:
            raise RejectedUpdate(
                "gap",
                f"delta {update.version} does not follow {self.version}; waiting for a snapshot",
            )
        for name, rows in update.slots.items():
            slot = self._slots.get(name)
            if slot is None or rows.vectors.shape[1] != slot.dim:
                raise RejectedUpdate("malformed", f"delta {update.version} has a bad slot {name!r}")
        model = self._build(self._meta, update.dense) if update.dense is not None else self._model
        with self._lock:
            if self._replica is not None:
                with self._replica_errors(update):
                    self._replica.apply(update.slots)
            else:
                for name, rows in update.slots.items():
                    self._slots[name].apply(rows)
            self._model = model
            self._stamp(update)

    @contextmanager
    def _replica_errors(self, update: Update) -> Iterator[None]:
        """Disk errors of the replica as a rejected update: the state keeps its version."""
        try:
            yield
        except Exception as exc:  # OSError, or rocksdict's plain Exception for RocksDB's
            if type(exc) is not Exception and not isinstance(exc, OSError):
                raise
            raise RejectedUpdate(
                "replica",
                f"{update.kind} {update.version} does not fit the local replica under "
                f"{self._replica_dir} ({exc}); free space there or point replica_dir elsewhere",
            ) from exc

    def _build(self, meta: Mapping[str, Any] | None, dense: bytes) -> Model:
        try:
            return self._build_model(meta or {}, dense)
        except Exception as exc:  # whatever the blob held, the old model stays
            raise RejectedUpdate("bad_dense", f"dense weights do not load: {exc}") from exc

    def _stamp(self, update: Update) -> None:
        self.version = update.version
        self.event_time = update.event_time
        self.published_at = update.published_at

    def cache_stats(self) -> dict[str, int]:
        """Rows and bytes of rows in memory, and cache hits and misses since the start.

        Without a memory budget every row is in memory and there is no cache
        (hits and misses stay 0).
        """
        with self._lock:
            replica = self._replica
            if replica is None:
                rows = sum(len(slot) for slot in self._slots.values())
                nbytes = sum(getattr(slot, "nbytes", 0) for slot in self._slots.values())
                return {"memory_rows": rows, "memory_bytes": nbytes, "hits": 0, "misses": 0}
            return {
                "memory_rows": sum(slot.cached() for slot in replica.slots.values()),
                "memory_bytes": replica.nbytes,
                "hits": self._retired_hits + replica.hits,
                "misses": self._retired_misses + replica.misses,
            }

    def close(self) -> None:
        """Remove the replica (with a memory budget); the state serves no more rows."""
        with self._lock:
            replica, self._replica = self._replica, None
            self._slots, self.version = {}, None
        if replica is not None:
            replica.close()

    @contextmanager
    def read(self) -> Iterator[View[Model]]:
        """Hold one version for the duration of a request."""
        with self._lock:
            if self.version is None or self._model is None:
                raise LookupError("no snapshot applied yet")
            yield View(self.version, self.event_time, self._model, self._slots)
