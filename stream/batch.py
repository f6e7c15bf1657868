"""Raw records from a source, and the columnar batch parsed from them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["Batch", "Positions", "Record", "position_for"]

#: Where a source stands: partition key -> the offset of the next record to
#: read. Kafka keys are ``"<topic>:<partition>"``; a file source has one key.
#: Plain strings and ints, so a checkpoint can store them as JSON.
Positions = dict[str, int]


class Record(NamedTuple):
    """One raw message and where it came from."""

    partition: str
    offset: int
    value: bytes | None


@dataclass(frozen=True, slots=True, eq=False)
class Batch:
    """Events in columns, ready for vectorised training.

    Event ``i`` of slot ``s`` has the feature ids
    ``fids[s][offsets[s][i]:offsets[s][i + 1]]``; a slot an event lacks gives
    it an empty range.

    Attributes
    ----------
    fids
        Slot name -> ``int64`` feature ids of every event, event by event.
    offsets
        Slot name -> ``int64`` array of ``len(batch) + 1`` boundaries into
        ``fids[slot]``.
    dense
        ``float32`` matrix ``(len(batch), len(dense_names))``; a feature an
        event lacks is 0.
    dense_names
        The column names of ``dense``.
    labels
        ``float32``; NaN where an event has no label (prediction input).
    ts
        ``float64`` event times, seconds since the epoch.
    request_ids
        One per event, ``None`` where absent.
    positions
        Where to resume the source to read what follows this batch.
    weights
        ``float32`` loss weights (the events' ``weight``, 1 where absent);
        ``None`` means 1 for every event.
    sample_rates
        ``float32`` rates at which the events' negatives were kept (1 where
        absent); ``None`` means 1 for every event.
    event_ids
        One per event, ``None`` where absent; ``None`` for no ids at all.
    """

    fids: Mapping[str, np.ndarray]
    offsets: Mapping[str, np.ndarray]
    dense: np.ndarray
    dense_names: tuple[str, ...]
    labels: np.ndarray
    ts: np.ndarray
    request_ids: tuple[str | None, ...]
    positions: Positions
    weights: np.ndarray | None = None
    sample_rates: np.ndarray | None = None
    event_ids: tuple[str | None, ...] | None = None

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def slots(self) -> tuple[str, ...]:
        """The sparse slots that occur in this batch, sorted."""
        return tuple(sorted(self.fids))

    def select(self, keep: np.ndarray) -> Batch:
        """The events where the boolean mask ``keep`` is true, in order, same positions."""
        if keep.all():
            return self
        index = np.flatnonzero(keep)
        fids, offsets = {}, {}
        for slot, bounds in self.offsets.items():
            counts = np.diff(bounds)[index]
            starts = bounds[index]
            # Each kept event's fid range, concatenated: start + 0..count-1.
            within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            fids[slot] = self.fids[slot][np.repeat(starts, counts) + within]
            offsets[slot] = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)

        def pick(values: tuple | None) -> tuple | None:
            return None if values is None else tuple(values[i] for i in index)

        def take(column: np.ndarray | None) -> np.ndarray | None:
            return None if column is None else column[index]

        return Batch(
            fids=fids,
            offsets=offsets,
            dense=self.dense[index],
            dense_names=self.dense_names,
            labels=self.labels[index],
            ts=self.ts[index],
            request_ids=pick(self.request_ids),  # type: ignore[arg-type]
            positions=self.positions,
            weights=take(self.weights),
            sample_rates=take(self.sample_rates),
            event_ids=pick(self.event_ids),
        )

    def slice(self, start: int, stop: int, positions: Positions) -> Batch:
        """Events ``start:stop`` (views of this batch's arrays), ending at ``positions``."""
        fids, offsets = {}, {}
        for slot, bounds in self.offsets.items():
            first = bounds[start]
            fids[slot] = self.fids[slot][first : bounds[stop]]
            offsets[slot] = bounds[start : stop + 1] - first
        return Batch(
            fids=fids,
            offsets=offsets,
            dense=self.dense[start:stop],
            dense_names=self.dense_names,
            labels=self.labels[start:stop],
            ts=self.ts[start:stop],
            request_ids=self.request_ids[start:stop],
            positions=positions,
            weights=None if self.weights is None else self.weights[start:stop],
            sample_rates=None if self.sample_rates is None else self.sample_rates[start:stop],
            event_ids=None if self.event_ids is None else self.event_ids[start:stop],
        )

    @staticmethod
    def concat(batches: list[Batch], positions: Positions) -> Batch:
        """The events of ``batches`` in order, as one batch ending at ``positions``.

        What parsing their records at once gives: every slot of any of them
        (empty ranges for the events of a batch without it); dense columns
        are the sorted union of the names when the batches' names differ.
        """
        fids, offsets = {}, {}
        for slot in sorted(set().union(*(b.offsets for b in batches))):
            parts, bounds, base = [], [np.zeros(1, dtype=np.int64)], 0
            for b in batches:
                if slot in b.offsets:
                    parts.append(b.fids[slot])
                    bounds.append(b.offsets[slot][1:] + base)
                    base += len(b.fids[slot])
                else:
                    bounds.append(np.full(len(b), base, dtype=np.int64))
            fids[slot] = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
            offsets[slot] = np.concatenate(bounds)
        names = batches[0].dense_names
        if all(b.dense_names == names for b in batches):
            dense = np.concatenate([b.dense for b in batches])
        else:
            names = tuple(sorted(set().union(*(b.dense_names for b in batches))))
            dense = np.zeros((sum(map(len, batches)), len(names)), dtype=np.float32)
            row = 0
            for b in batches:
                columns = [names.index(name) for name in b.dense_names]
                dense[row : row + len(b), columns] = b.dense
                row += len(b)

        def join(column: str, fill: float) -> np.ndarray | None:
            values = [getattr(b, column) for b in batches]
            if all(v is None for v in values):
                return None
            return np.concatenate(
                [
                    np.full(len(b), fill, np.float32) if v is None else v
                    for b, v in zip(batches, values, strict=True)
                ]
            )

        event_ids = None
        if any(b.event_ids is not None for b in batches):
            event_ids = tuple(i for b in batches for i in (b.event_ids or (None,) * len(b)))
        return Batch(
            fids=fids,
            offsets=offsets,
            dense=dense,
            dense_names=names,
            labels=np.concatenate([b.labels for b in batches]),
            ts=np.concatenate([b.ts for b in batches]),
            request_ids=tuple(i for b in batches for i in b.request_ids),
            positions=positions,
            weights=join("weights", 1.0),
            sample_rates=join("sample_rates", 1.0),
            event_ids=event_ids,
        )

    def event_fids(self, slot: str, index: int) -> np.ndarray:
        """The feature ids of event ``index`` in ``slot`` (empty if it lacks the slot)."""
        bounds = self.offsets.get(slot)
        if bounds is None:
            return np.empty(0, dtype=np.int64)
        return self.fids[slot][bounds[index] : bounds[index + 1]]


def position_for(key: str, positions: Positions) -> int:
    """The saved offset of single-partition source ``key``, or a clear error."""
    if key not in positions:
        raise KeyError(
            f"positions {positions!r} have no entry for {key!r}; were they saved by another source?"
        )
    offset = positions[key]
    if offset < 0:
        raise ValueError(f"position of {key!r} must be >= 0, not {offset}")
    return offset
