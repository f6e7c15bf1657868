"""Sparse rows sharded over the ranks: each fid's row lives on one owner rank.

The owner of a fid is a hash of the fid alone, salted differently from the
table's own index hash, so rows spread evenly whatever the table's layout.
A training lookup sends every fid of the batch (all slots, every
occurrence) to its owner in one ``all_to_all``; the owner runs its store's
training lookup (admission, expiry stamps, counters) on the fids of all
ranks at once, as one process would on the whole batch, and a second
``all_to_all`` returns the vectors. The gradients of those vectors go back
to their owners with the next step's fids, in the same first ``all_to_all``;
the owner's store sums those of one row, from every rank, and applies them
before that step's lookup, which therefore sees exactly what one process
would. A step thus waits for the other ranks twice, not three times: on two
cores each wait costs a rank about a millisecond even when the other is
ready. :meth:`ShardedStore.checkpoint` sends gradients still held first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headrace.distributed.collectives import Collectives
from headrace.embedding_store import (
    EmbeddingStore,
    SlotChanges,
    SlotConfig,
    StoreStats,
    TrainingLookup,
)
from headrace.schema import mix64

__all__ = ["ShardedLookup", "ShardedStore", "owner_of"]

# Not the table index's salt: owners must not correlate with index positions.
_OWNER_SALT = np.uint64(0x6F776E65725F6964)
#: Header rows of each block of a step's first all_to_all (see ShardedStore.begin_step).
_HEADER = 2
_FIRST_CAPACITY = 1024


def owner_of(fids: np.ndarray, world_size: int) -> np.ndarray:
    """The rank ``(n,)`` int64 that owns each fid ``(n,)`` int64 (splitmix64 of the salted fid).

    Examples
    --------
    >>> owner_of(np.array([1, 2, 3, 1], dtype=np.int64), 3).tolist()
    [2, 2, 1, 2]
    """
    return (mix64(fids.view(np.uint64) ^ _OWNER_SALT) % np.uint64(world_size)).astype(np.int64)


@dataclass(frozen=True)
class ShardedLookup:
    """A training lookup of this rank's fids; pass it back to :meth:`ShardedStore.apply_gradients`.

    ``slots``, ``bounds`` and ``values`` ``(n, dim)`` are as in
    :class:`~headrace.embedding_store.TrainingLookup`; the rest says how the
    fids travelled.
    """

    slots: tuple[str, ...]
    bounds: np.ndarray
    values: np.ndarray
    #: The local fids in the order they were sent (grouped by owner).
    order: np.ndarray
    sent: np.ndarray
    received: np.ndarray
    #: The received fids in the order of the owner's store lookup (grouped by slot).
    grouped: np.ndarray
    owned: TrainingLookup | None


@dataclass(frozen=True)
class _Exchange:
    """The fids of a step as :meth:`ShardedStore.begin_step` sent them, for its lookup."""

    fids: Mapping[str, Any]
    slots: tuple[str, ...]
    bounds: np.ndarray
    order: np.ndarray
    sent: np.ndarray
    received: np.ndarray
    #: (fid, slot) rows from every rank, in rank order.
    incoming: np.ndarray


class ShardedStore:
    """This rank's shard of the rows, with the store interface the trainer steps with.

    Parameters
    ----------
    local
        The rows this rank owns (``owner_of(fid) == rank``).
    collectives
        The process group; every rank calls :meth:`lookup_slots`,
        :meth:`apply_gradients` and :meth:`checkpoint` together.
    checkpoints
        Writes coordinated checkpoints (see :mod:`headrace.distributed.shards`).
    """

    def __init__(
        self, local: EmbeddingStore, collectives: Collectives, checkpoints: Any = None
    ) -> None:
        self.local = local
        self.collectives = collectives
        self._checkpoints = checkpoints
        self._names = tuple(cfg.name for cfg in local.slots)
        self._slot_index = {name: k for k, name in enumerate(self._names)}
        # Every slot's rows have the trainer's one dim; every rank sends rows of it, even
        # one with no fids of its own (the vectors' all_to_all needs one row shape).
        self._dim = max(cfg.dim for cfg in local.slots)
        #: Ids a rank sends each owner in the first all_to_all of a step; the same on every
        #: rank (it grows on all of them together, from the headers every rank receives).
        self._capacity = _FIRST_CAPACITY
        self._exchanged: _Exchange | None = None
        #: The last step's lookup and gradients ``(n, dim)`` in sending order, not sent yet.
        self._held: tuple[ShardedLookup, np.ndarray] | None = None

    # -- what the trainer uses of a store -------------------------------------

    @property
    def path(self) -> Path:
        return self.local.path

    @property
    def extra(self) -> dict[str, bytes]:
        return self.local.extra

    @property
    def memory_budget(self) -> int | None:
        return self.local.memory_budget

    @property
    def checkpoint_due(self) -> bool:
        return self.local.checkpoint_due

    def stats(self) -> StoreStats:
        """This shard's figures."""
        return self.local.stats()

    def unseen_lookups(self) -> dict[str, int]:
        """This shard's lookups that found no row, per slot (see ``EmbeddingStore``)."""
        return self.local.unseen_lookups()

    def expire(self, now: float) -> dict[str, int]:
        """Expire this shard's rows (every rank sweeps at the same step and event time)."""
        self._send_held_gradients()  # a sweep invalidates the lookup they belong to
        return self.local.expire(now)

    def close(self) -> None:
        self.local.close()

    # -- what a publisher reads: this shard's rows -----------------------------

    @property
    def slots(self) -> tuple[SlotConfig, ...]:
        return self.local.slots

    def pending_changes(self) -> int:
        return self.local.pending_changes()

    def changes_lost(self) -> bool:
        return self.local.changes_lost()

    def reset_changes(self) -> None:
        self.local.reset_changes()

    def drain_changes(self) -> dict[str, SlotChanges]:
        return self.local.drain_changes()

    def export(self, slot: str) -> tuple[np.ndarray, np.ndarray]:
        return self.local.export(slot)

    def begin_step(
        self, fids: Mapping[str, Any], examples: int, event_time: float
    ) -> tuple[int, float]:
        """Send this step's fids to their owners, with the step's agreement, in one all_to_all.

        Returns the examples of all ranks and the newest event time of any
        rank (a rank with no events passes ``0`` and ``-inf``); the
        :meth:`lookup_slots` that follows, with the same ``fids``, goes on
        from there. Every rank calls it in the same step.

        Each rank sends every other a block of the same size: two header rows
        (how many ids follow, its examples, its event time, the most ids it
        sends any rank) and up to ``capacity`` (fid, slot) rows. Ids beyond
        the capacity follow in a second all_to_all, taken only when some
        rank had that many, after which the capacity grows: the step pays
        one collective for the ids and the agreement, not three.
        """
        world = self.collectives.world
        slots = tuple(fids)
        arrays = [np.asarray(fids[slot], dtype=np.int64) for slot in slots]
        bounds = np.zeros(len(slots) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=bounds[1:])
        local_fids = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
        slot_of = np.repeat([self._slot_index[s] for s in slots], np.diff(bounds))
        owners = owner_of(local_fids, world.size)
        # 16-bit keys: numpy sorts them stably by radix, in linear time.
        order = np.argsort(owners.astype(np.uint16), kind="stable")
        sent = np.bincount(owners, minlength=world.size)
        payload = np.stack([local_fids[order], slot_of[order].astype(np.int64)], axis=1)
        starts = np.zeros(world.size + 1, dtype=np.int64)
        np.cumsum(sent, out=starts[1:])
        capacity = self._capacity
        block = np.zeros((world.size, _HEADER + capacity, 2), dtype=np.int64)
        block[:, 0] = (0, examples)
        block[:, 0, 0] = sent
        block[:, 1] = (np.float64(event_time).view(np.int64), sent.max(initial=0))
        for peer in range(world.size):
            rows = payload[starts[peer] : starts[peer] + min(sent[peer], capacity)]
            block[peer, _HEADER : _HEADER + len(rows)] = rows
        got = self._send_with_held_gradients(block)
        received = got[:, 0, 0].copy()
        most = int(got[:, 1, 1].max())
        pieces = [
            got[peer, _HEADER : _HEADER + min(received[peer], capacity)]
            for peer in range(world.size)
        ]
        if most > capacity:  # every rank knows it from the headers: all take the second round
            over_sent = np.maximum(sent - capacity, 0)
            over_received = np.maximum(received - capacity, 0)
            beyond = np.concatenate(
                [payload[starts[p] + capacity : starts[p + 1]] for p in range(world.size)]
            ).reshape(-1, 2)
            more = self.collectives.all_to_all(beyond, over_sent, over_received)
            cuts = np.zeros(world.size + 1, dtype=np.int64)
            np.cumsum(over_received, out=cuts[1:])
            pieces = [
                np.concatenate([pieces[p], more[cuts[p] : cuts[p + 1]]]) for p in range(world.size)
            ]
            self._capacity = int(most * 1.5)
        self._exchanged = _Exchange(
            fids, slots, bounds, order, sent, received, np.concatenate(pieces).reshape(-1, 2)
        )
        return int(got[:, 0, 1].sum()), float(got[:, 1, 0].view(np.float64).max())

    def lookup_slots(self, fids: Mapping[str, Any], event_time: float) -> ShardedLookup:
        """Vectors ``(n, dim)`` of this rank's fids of several slots, from their owners.

        Every rank calls it in the same step, after :meth:`begin_step` with
        the same ``fids``; ``event_time`` (a scalar, the same on every rank)
        stamps the rows.
        """
        sent_ids = self._exchanged
        if sent_ids is None or sent_ids.fids is not fids:
            raise RuntimeError("lookup_slots without a begin_step of the same fids")
        self._exchanged = None
        incoming = sent_ids.incoming
        grouped = np.argsort(incoming[:, 1].astype(np.uint16), kind="stable")
        back = np.zeros((len(incoming), self._dim), dtype=np.float32)
        owned = None
        if len(incoming):
            ids, slot_ids = incoming[grouped, 0], incoming[grouped, 1]
            cuts = np.searchsorted(slot_ids, np.arange(len(self._names) + 1))
            by_slot = {
                self._names[k]: ids[cuts[k] : cuts[k + 1]]
                for k in range(len(self._names))
                if cuts[k + 1] > cuts[k]
            }
            owned = self.local.lookup_slots(by_slot, event_time)
            back[grouped] = owned.values
        returned = self.collectives.all_to_all(back, sent_ids.received, sent_ids.sent)
        values = np.empty_like(returned)
        values[sent_ids.order] = returned
        return ShardedLookup(
            sent_ids.slots,
            sent_ids.bounds,
            values,
            sent_ids.order,
            sent_ids.sent,
            sent_ids.received,
            grouped,
            owned,
        )

    def apply_gradients(self, lookup: ShardedLookup, grads: Any) -> None:
        """Hold the gradients ``(n, dim)`` of a lookup's values for their owners.

        They travel with the next :meth:`begin_step` (or :meth:`checkpoint`),
        and the owners apply them before anything reads those rows.
        """
        if self._held is not None:  # one lookup a step: the exchange carries one set
            raise RuntimeError("apply_gradients twice without a begin_step between")
        grads = np.ascontiguousarray(grads, dtype=np.float32)
        self._held = (lookup, grads[lookup.order])

    def checkpoint(self, extra: Mapping[str, bytes] | None = None) -> None:
        """A coordinated checkpoint: this shard's part of the next generation."""
        self._send_held_gradients()
        self._checkpoints.write(self.local, extra)

    def _send_held_gradients(self) -> None:
        """Send and apply the held gradients now, in an all_to_all of their own."""
        if self._held is not None:
            lookup, grads = self._held
            self._apply_received(self.collectives.all_to_all(grads, lookup.sent, lookup.received))

    def _apply_received(self, incoming: np.ndarray) -> None:
        """Apply the held lookup's gradients ``(n, dim)`` that its fids' ranks sent back."""
        lookup, _ = self._held
        self._held = None
        if lookup.owned is not None:
            self.local.apply_gradients(lookup.owned, incoming[lookup.grouped])

    def _send_with_held_gradients(self, block: np.ndarray) -> np.ndarray:
        """One all_to_all of ``block`` ``(world, rows, 2)`` int64, after the held gradients.

        Each rank's message to a peer is the gradients it holds for that
        peer's rows (as many as the peer returned vectors for: both sides
        know the sizes) followed by the peer's block, as bytes. The received
        gradients are applied here; returns the received blocks, shaped as
        ``block``.
        """
        world = self.collectives.world.size
        if self._held is None:
            return self.collectives.all_to_all(
                block.reshape(-1, 2), np.full(world, block.shape[1], np.int64)
            ).reshape(block.shape)
        lookup, grads = self._held
        row = grads.shape[1] * grads.itemsize
        blocks = block.reshape(world, -1).view(np.uint8)
        cuts = np.concatenate([[0], np.cumsum(lookup.sent)]) * row
        flat = grads.view(np.uint8).reshape(-1)
        send = np.concatenate(
            [np.concatenate([flat[cuts[p] : cuts[p + 1]], blocks[p]]) for p in range(world)]
        )
        got = self.collectives.all_to_all(
            send, lookup.sent * row + blocks.shape[1], lookup.received * row + blocks.shape[1]
        )
        # Each peer's message: its gradients for this rank's rows, then its block.
        ends = np.cumsum(lookup.received * row + blocks.shape[1])
        block_starts = ends - blocks.shape[1]
        gradient_starts = block_starts - lookup.received * row
        received = np.concatenate(
            [got[start:end] for start, end in zip(gradient_starts, block_starts, strict=True)]
        )
        self._apply_received(received.view(np.float32).reshape(-1, grads.shape[1]))
        got_blocks = np.stack(
            [got[start:end] for start, end in zip(block_starts, ends, strict=True)]
        )
        return got_blocks.view(np.int64).reshape(block.shape)
