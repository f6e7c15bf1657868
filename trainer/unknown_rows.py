"""Each slot's unknown row: what the model answers for an id that has no row.

Serving meets ids the trainer has not given a row yet (new users and items,
ids the frequency filter holds back, rows expired); a zero vector there is
an input the model was never trained on, and its answer for it drifts with
wherever the dense weights ended up (a downsampled model served its first
hour at 0.77 of the actual rate). With ``model.unknown_rows`` every slot
has a row of its own table under :func:`~headrace.schema.unknown_fid`, used
for such ids at serving and in the trainer's own predictions, and trained
on what it stands for: an event whose id gets its first row in a step
(or got it less than ``unknown_rows_young_s`` ago, see :class:`YoungIds`)
is also trained once more with the slot's unknown row in place of the new
row, in the same step and with the same dense weights, and only the
unknown row learns from that copy (its dense gradients are dropped, it is
off the progressive metrics). New rows keep their own initial values, so
the dense weights and the other rows learn as without the option. The
trainer stamps the unknown rows at every expiry sweep, so they never
expire.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from headrace.embedding_store import EmbeddingStore, TrainingLookup
from headrace.embedding_store.index import FidIndex
from headrace.schema import unknown_fid

__all__ = ["StandIns", "UnknownRows", "YoungIds"]


@dataclass(frozen=True)
class StandIns:
    """The unknown rows standing in for some ids of one training lookup.

    Attributes
    ----------
    positions
        ``(m,)`` positions in the lookup's values (store order) of the ids
        whose row is new (``young``: created in this step, or less than
        ``young_s`` ago) and of those without a row (``missing``: held back
        by the filter).
    young, missing
        ``(m,)`` bool, which of the two each position is.
    events
        ``(m,)`` the event each position belongs to.
    lookup
        The training lookup of the positions' unknown rows, one fid each.
    """

    positions: np.ndarray
    young: np.ndarray
    missing: np.ndarray
    events: np.ndarray
    lookup: TrainingLookup

    @property
    def vectors(self) -> np.ndarray:
        """``(m, dim)`` the unknown rows' vectors at :attr:`positions`."""
        return self.lookup.values

    def fill_missing(self, values: np.ndarray) -> np.ndarray:
        """``values`` with the unknown rows where an id had no row (a copy if any had none)."""
        if not self.missing.any():
            return values
        values = values.copy()
        values[self.positions[self.missing]] = self.vectors[self.missing]
        return values

    def copy_inputs(
        self, values: np.ndarray, n: int, weights: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The copy's values and event weights ``(n,)``: new rows replaced, other events 0.

        ``None`` when no row is new.
        """
        if not self.young.any():
            return None
        copied = values.copy()
        copied[self.positions[self.young]] = self.vectors[self.young]
        chosen = np.zeros(n, dtype=np.float32)
        chosen[self.events[self.young]] = 1.0
        return copied, chosen if weights is None else chosen * weights

    def gradients(self, main: np.ndarray, copy: np.ndarray | None) -> np.ndarray:
        """The unknown rows' gradients ``(m, dim)``: the main pass's where an id had no
        row, the copy's where its row is new."""
        grads = np.empty_like(self.vectors)
        grads[self.missing] = main[self.positions[self.missing]]
        if copy is not None:
            grads[self.young] = copy[self.positions[self.young]]
        return grads


class YoungIds:
    """Ids whose row was created less than ``age_s`` seconds of event time ago, per table.

    Kept in the trainer's checkpoint (:meth:`to_bytes`), so that a restarted
    trainer trains the unknown rows as an uninterrupted one.
    """

    def __init__(self, age_s: float) -> None:
        self.age_s = age_s
        self._index: dict[str, FidIndex] = {}
        # (creation time in ms, table, distinct fids), oldest first.
        self._created: deque[tuple[int, str, np.ndarray]] = deque()

    def __len__(self) -> int:
        return sum(len(index) for index in self._index.values())

    def find(self, table: str, fids: np.ndarray) -> np.ndarray:
        """Whether each of ``fids`` is young."""
        index = self._index.get(table)
        return np.zeros(len(fids), bool) if index is None else index.find(fids) >= 0

    def add(self, table: str, fids: np.ndarray, event_time: float) -> None:
        """``fids`` got a row at ``event_time``."""
        index = self._index.setdefault(table, FidIndex())
        fids = np.unique(fids)
        stamp = int(event_time * 1000)
        index.remove(fids)  # an id that got a row again, after its row expired
        index.insert(fids, np.full(len(fids), stamp, dtype=np.int64))
        self._created.append((stamp, table, fids))

    def expire(self, event_time: float) -> None:
        """Forget the ids created ``age_s`` or more before ``event_time``."""
        cutoff = int((event_time - self.age_s) * 1000)
        while self._created and self._created[0][0] <= cutoff:
            stamp, table, fids = self._created.popleft()
            index = self._index[table]
            # Ids created again since then stay, with their newer time.
            index.remove(fids[index.find(fids) == stamp])

    def to_bytes(self) -> bytes:
        tables = sorted(self._index)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            tables=np.array(tables, dtype=str),
            stamps=np.array([c[0] for c in self._created], dtype=np.int64),
            which=np.array([tables.index(c[1]) for c in self._created], dtype=np.int64),
            sizes=np.array([len(c[2]) for c in self._created], dtype=np.int64),
            fids=np.concatenate([c[2] for c in self._created] or [np.empty(0, np.int64)]),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, age_s: float) -> YoungIds:
        young = cls(age_s)
        saved = np.load(io.BytesIO(blob))
        parts = np.split(saved["fids"], np.cumsum(saved["sizes"])[:-1])
        for stamp, which, fids in zip(saved["stamps"], saved["which"], parts, strict=True):
            young.add(str(saved["tables"][which]), fids, stamp / 1000)
        return young


class UnknownRows:
    """The unknown rows of a model's slots in the store.

    Parameters
    ----------
    table_of
        Model slot -> its store slot (table), in model order.
    young_s
        Seconds of event time after an id gets its row during which its
        events are still copied to train the unknown row (0: only the step
        that creates the row). Set it to how far behind the events serving's
        parameters are (the join window of a ``wait`` joiner): the ids
        serving meets without a row are those, with that weight.
    """

    def __init__(self, table_of: Mapping[str, str], young_s: float = 0.0) -> None:
        self.table_of = dict(table_of)
        self.young = YoungIds(young_s) if young_s > 0 else None
        self.fids = {slot: unknown_fid(slot) for slot in table_of}
        every: dict[str, list[int]] = {}
        for slot, table in self.table_of.items():
            every.setdefault(table, []).append(self.fids[slot])
        self._every = {table: np.array(f, dtype=np.int64) for table, f in every.items()}

    def stand_ins(
        self,
        store: EmbeddingStore,
        lookup: TrainingLookup,
        fids: Mapping[str, np.ndarray],
        offsets: Mapping[str, np.ndarray],
        event_time: float,
    ) -> StandIns | None:
        """Look up the unknown rows of ``lookup``'s ids that had no row; ``None`` if none.

        ``fids`` are the step's fids per model slot (model order) and
        ``offsets[slot]`` their ``(n + 1,)`` event boundaries; ``lookup``
        is the store's lookup of them (store order).
        """
        young, missing = lookup.created, lookup.rows < 0
        if self.young is not None:
            young = self._young(lookup, fids, event_time)
        positions = np.flatnonzero(young | missing)
        if not len(positions):
            return None
        slots, starts = self._runs(lookup, fids)
        run = np.searchsorted(starts, positions, side="right") - 1
        events = np.empty(len(positions), dtype=np.int64)
        # The positions come in lookup order, so each table's are one run.
        by_table: dict[str, list[np.ndarray]] = {}
        for k in np.unique(run):
            mine = run == k
            local = positions[mine] - starts[k]
            events[mine] = np.searchsorted(offsets[slots[k]], local, side="right") - 1
            by_table.setdefault(self.table_of[slots[k]], []).append(
                np.full(len(local), self.fids[slots[k]], dtype=np.int64)
            )
        found = store.lookup_slots(
            {table: np.concatenate(parts) for table, parts in by_table.items()}, event_time
        )
        return StandIns(positions, young[positions], missing[positions], events, found)

    def _runs(
        self, lookup: TrainingLookup, fids: Mapping[str, np.ndarray]
    ) -> tuple[list[str], list[int]]:
        """Each model slot's run in the lookup: tables in lookup order, a table's slots in
        model order; the slots and the runs' starts."""
        slots, starts = [], []
        for table, start in zip(lookup.slots, lookup.bounds[:-1], strict=True):
            for slot, array in fids.items():
                if self.table_of[slot] == table:
                    slots.append(slot)
                    starts.append(int(start))
                    start += len(array)
        return slots, starts

    def _young(
        self, lookup: TrainingLookup, fids: Mapping[str, np.ndarray], event_time: float
    ) -> np.ndarray:
        """Positions of the lookup whose row is young (created in it, or recently)."""
        young = self.young
        young.expire(event_time)
        mask = lookup.created.copy()
        for table, start, end in zip(
            lookup.slots, lookup.bounds[:-1], lookup.bounds[1:], strict=True
        ):
            table_fids = np.concatenate(
                [array for slot, array in fids.items() if self.table_of[slot] == table]
            )
            new = lookup.created[start:end]
            if new.any():
                young.add(table, table_fids[new], event_time)
            mask[start:end] |= young.find(table, table_fids)
        return mask

    def keep(self, store: EmbeddingStore, event_time: float) -> None:
        """Stamp every unknown row at ``event_time`` (creating those not there yet).

        Called before each expiry sweep: the unknown rows never expire.
        """
        store.lookup_slots(self._every, event_time)
