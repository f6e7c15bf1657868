"""The ids of recently trained events, so that a repeated event is trained once.

The joiner gives every event it emits a deterministic ``event_id``; after a
crash it emits again what it had emitted since its last commit, with the same
ids. The trainer keeps the newest ``capacity`` ids (as 64-bit digests) in its
checkpoint and drops an event whose id it has already trained. Events
without an id always pass.
"""

from __future__ import annotations

import hashlib
from collections import deque

import numpy as np

from headrace.stream import Batch

__all__ = ["RecentEventIds"]


def _digest(event_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


class RecentEventIds:
    """A bounded window of trained event ids.

    Parameters
    ----------
    capacity
        Ids remembered; the oldest is forgotten when a new one comes. It must
        cover what a producer can repeat after a crash (the joiner: what it
        emitted between two commits).

    Examples
    --------
    >>> recent = RecentEventIds(capacity=2)
    >>> recent.first_seen(["a", "b", "a", None])
    array([ True,  True, False,  True])
    >>> recent.first_seen(["c", "b", "a"])  # "a" was forgotten when "c" came
    array([ True, False,  True])
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._order: deque[int] = deque()
        self._known: set[int] = set()

    def __len__(self) -> int:
        return len(self._order)

    def first_seen(self, event_ids: tuple[str | None, ...] | list[str | None]) -> np.ndarray:
        """Mark which ids were not seen before (``None`` always passes), and remember them."""
        keep = np.ones(len(event_ids), dtype=bool)
        order, known = self._order, self._known
        for i, event_id in enumerate(event_ids):
            if event_id is None:
                continue
            digest = _digest(event_id)
            if digest in known:
                keep[i] = False
                continue
            known.add(digest)
            order.append(digest)
            if len(order) > self.capacity:
                known.discard(order.popleft())
        return keep

    def fresh(self, batch: Batch) -> Batch:
        """``batch`` without the events whose id was trained already (ids are remembered)."""
        if batch.event_ids is None or not any(batch.event_ids):
            return batch
        return batch.select(self.first_seen(batch.event_ids))

    def to_bytes(self) -> bytes:
        """The window, oldest first, for a checkpoint."""
        return np.array(self._order, dtype=np.uint64).tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes, capacity: int) -> RecentEventIds:
        """A window restored from :meth:`to_bytes` (its newest ``capacity`` ids)."""
        recent = cls(capacity)
        digests = np.frombuffer(blob, dtype=np.uint64)[-capacity:].tolist()
        recent._order.extend(digests)
        recent._known.update(digests)
        return recent
