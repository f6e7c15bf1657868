"""Each slot's unknown row: what the model answers for an id that has no row.

Serving meets ids the trainer has not given a row yet (new users and items,
ids the frequency filter holds back, rows expired); a zero vector there is
an input the model was never trained on, and its answer for it drifts with
wherever the dense weights ended up (a downsampled model served its first
hour at 0.77 of the actual rate). With ``model.unknown_rows`` every slot
has a row of its own table under :func:`~headrace.schema.unknown_fid`, used
for such ids at serving and in the trainer's own predictions, and trained
on what it stands for: an event whose id gets its first row in a step is
also trained once more with the slot's unknown row in place of the new
row, in the same step and with the same dense weights, and only the
unknown row learns from that copy (its dense gradients are dropped, it is
off the progressive metrics). New rows keep their own initial values, so
the model's other rows learn as without the option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from headrace.embedding_store import EmbeddingStore, TrainingLookup
from headrace.schema import unknown_fid

__all__ = ["StandIns", "UnknownRows"]


@dataclass(frozen=True)
class StandIns:
    """The unknown rows standing in for some ids of one training lookup.

    Attributes
    ----------
    positions
        ``(m,)`` positions in the lookup's values (store order) of the ids
        without a row before the step: new rows (``created``) and ids the
        filter held back (``missing``).
    created, missing
        ``(m,)`` bool, which of the two each position is.
    events
        ``(m,)`` the event each position belongs to.
    lookup
        The training lookup of the positions' unknown rows, one fid each.
    """

    positions: np.ndarray
    created: np.ndarray
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

        ``None`` when the step created no row.
        """
        if not self.created.any():
            return None
        copied = values.copy()
        copied[self.positions[self.created]] = self.vectors[self.created]
        chosen = np.zeros(n, dtype=np.float32)
        chosen[self.events[self.created]] = 1.0
        return copied, chosen if weights is None else chosen * weights

    def gradients(self, main: np.ndarray, copy: np.ndarray | None) -> np.ndarray:
        """The unknown rows' gradients ``(m, dim)``: the main pass's where an id had no
        row, the copy's where it got a new one."""
        grads = np.empty_like(self.vectors)
        grads[self.missing] = main[self.positions[self.missing]]
        if copy is not None:
            grads[self.created] = copy[self.positions[self.created]]
        return grads


class UnknownRows:
    """The unknown rows of a model's slots in the store.

    Parameters
    ----------
    table_of
        Model slot -> its store slot (table), in model order.
    """

    def __init__(self, table_of: Mapping[str, str]) -> None:
        self.table_of = dict(table_of)
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
        created, missing = lookup.created, lookup.rows < 0
        positions = np.flatnonzero(created | missing)
        if not len(positions):
            return None
        # Each model slot's run in the lookup: tables in lookup order, a
        # table's slots in model order.
        slots, starts = [], []
        for table, start in zip(lookup.slots, lookup.bounds[:-1], strict=True):
            for slot, array in fids.items():
                if self.table_of[slot] == table:
                    slots.append(slot)
                    starts.append(start)
                    start += len(array)
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
        return StandIns(positions, created[positions], missing[positions], events, found)

    def keep(self, store: EmbeddingStore, event_time: float) -> None:
        """Stamp every unknown row at ``event_time`` (creating those not there yet).

        Called before each expiry sweep: the unknown rows never expire.
        """
        store.lookup_slots(self._every, event_time)
