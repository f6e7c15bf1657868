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
    """

    fids: Mapping[str, np.ndarray]
    offsets: Mapping[str, np.ndarray]
    dense: np.ndarray
    dense_names: tuple[str, ...]
    labels: np.ndarray
    ts: np.ndarray
    request_ids: tuple[str | None, ...]
    positions: Positions

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def slots(self) -> tuple[str, ...]:
        """The sparse slots that occur in this batch, sorted."""
        return tuple(sorted(self.fids))

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
