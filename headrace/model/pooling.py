"""From a batch's feature ids and their vectors to a model's inputs.

A batch (:class:`~headrace.stream.Batch`, or anything with its ``fids``,
``offsets`` and length) lists each slot's feature ids event by event. The
vectors of all slots' ids come concatenated in slot order
(:func:`batch_fids`); :func:`model_inputs` pools them per (event, slot) and
cuts out the per-id vectors of the slots a model reads as sequences.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol

import numpy as np
import torch

from headrace.schema import unknown_fid

__all__ = [
    "BatchLike",
    "Lookup",
    "SequenceInput",
    "batch_fids",
    "lookup_inputs",
    "model_inputs",
    "pool_embeddings",
]

Pooling = Literal["sum", "mean"]


class BatchLike(Protocol):
    """What pooling reads of a batch: see :class:`~headrace.stream.Batch`."""

    @property
    def fids(self) -> Mapping[str, np.ndarray]: ...

    @property
    def offsets(self) -> Mapping[str, np.ndarray]: ...

    def __len__(self) -> int: ...


class SequenceInput(NamedTuple):
    """The per-id vectors of one slot, event by event, in the order the event lists them.

    Event ``i`` has the vectors ``values[offsets[i]:offsets[i + 1]]``.

    Attributes
    ----------
    values
        ``(m, dim)`` float32, gradients flow back to the rows.
    offsets
        ``(n + 1,)`` int64 boundaries.
    """

    values: torch.Tensor
    offsets: torch.Tensor


def batch_fids(batch: BatchLike, slots: Sequence[str]) -> dict[str, np.ndarray]:
    """The fids of the ``slots`` that occur in ``batch``, in ``slots`` order.

    :func:`pool_embeddings` takes their vectors concatenated in this order.
    """
    return {slot: batch.fids[slot] for slot in slots if slot in batch.fids}


def pool_embeddings(
    batch: BatchLike,
    slots: Sequence[str],
    values: torch.Tensor,
    pooling: Pooling,
    dim: int,
) -> torch.Tensor:
    """Pool each event's vectors per slot, all slots in one operation.

    Parameters
    ----------
    batch
        The events.
    slots
        Slot names in model order.
    values
        ``(n_fids, dim)``: the vectors of :func:`batch_fids` concatenated in
        its order (slots absent from the batch have none). Gradients flow
        back to them.
    pooling
        ``"sum"`` or ``"mean"`` of a multi-valued slot's vectors.
    dim
        Vector length.

    Returns
    -------
    torch.Tensor
        ``(len(batch), len(slots), dim)``; an event without a slot gets zeros.
    """
    n, width = len(batch), len(slots)
    present = [
        (k, np.diff(batch.offsets[slot])) for k, slot in enumerate(slots) if slot in batch.fids
    ]
    if len(present) == width and all((counts == 1).all() for _, counts in present):
        # One id per event and slot: the vectors are already (slot, event)-ordered.
        return values.view(width, n, dim).transpose(0, 1)
    events = np.arange(n, dtype=np.int64) * width
    cells = np.concatenate(
        [np.repeat(events + k, counts) for k, counts in present] or [np.empty(0, np.int64)]
    )
    index = torch.from_numpy(cells)
    pooled = torch.zeros(n * width, dim).index_add(0, index, values)
    if pooling == "mean":
        sizes = np.maximum(np.bincount(cells, minlength=n * width), 1).astype(np.float32)
        pooled = pooled / torch.from_numpy(sizes)[:, None]
    return pooled.view(n, width, dim)


def model_inputs(
    batch: BatchLike,
    slots: Sequence[str],
    values: torch.Tensor,
    pooling: Pooling,
    dim: int,
    sequence_slots: Sequence[str] = (),
) -> tuple[torch.Tensor, dict[str, SequenceInput]]:
    """:func:`pool_embeddings`, plus the per-id vectors of ``sequence_slots``.

    Returns
    -------
    tuple
        ``pooled`` ``(n, len(slots), dim)`` and slot -> :class:`SequenceInput`
        for each of ``sequence_slots`` (empty ones for a slot the batch lacks).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> class Events(SimpleNamespace):  # two events, as a Batch lists them
    ...     def __len__(self): return 2
    >>> batch = Events(fids={"item": np.array([1, 2]), "hist": np.array([3, 4, 5])},
    ...                offsets={"item": np.array([0, 1, 2]), "hist": np.array([0, 2, 3])})
    >>> values = torch.arange(5.0)[:, None]  # item 1, 2 then hist 3, 4, 5
    >>> pooled, seqs = model_inputs(batch, ["item", "hist"], values, "sum", 1, ["hist"])
    >>> pooled.squeeze(2).tolist(), seqs["hist"].values.squeeze(1).tolist()
    ([[0.0, 5.0], [1.0, 4.0]], [2.0, 3.0, 4.0])
    >>> seqs["hist"].offsets.tolist()
    [0, 2, 3]
    """
    pooled = pool_embeddings(batch, slots, values, pooling, dim)
    if not sequence_slots:
        return pooled, {}
    start, bounds = 0, {}
    for slot in slots:
        if slot in batch.fids:
            bounds[slot] = (start, start + len(batch.fids[slot]))
            start = bounds[slot][1]
    sequences = {}
    for slot in sequence_slots:
        if slot in bounds:
            begin, end = bounds[slot]
            offsets = torch.from_numpy(np.ascontiguousarray(batch.offsets[slot], np.int64))
            sequences[slot] = SequenceInput(values[begin:end], offsets)
        else:
            sequences[slot] = SequenceInput(
                values.new_zeros((0, dim)), torch.zeros(len(batch) + 1, dtype=torch.int64)
            )
    return pooled, sequences


#: ``lookup(table, fids, fill) -> (n, dim) float32``: ``fill`` ``(dim,)`` (zeros if
#: ``None``) where an id has no row.
Lookup = Callable[[str, np.ndarray, np.ndarray | None], np.ndarray]


@functools.cache
def _unknown_fids(slot: str) -> np.ndarray:
    return np.array([unknown_fid(slot)], dtype=np.int64)


def lookup_inputs(
    batch: BatchLike,
    slots: Sequence[str],
    tables: Sequence[str],
    lookup: Lookup,
    pooling: Pooling,
    dim: int,
    sequence_slots: Sequence[str] = (),
    unknown_rows: bool = False,
) -> tuple[torch.Tensor, dict[str, SequenceInput]]:
    """:func:`model_inputs` with vectors from ``lookup(table, fids, fill)``.

    ``tables`` gives each slot's table, parallel to ``slots``. Serving passes
    a read-only lookup of its parameter copy here. With ``unknown_rows`` an
    id without a row gets its slot's unknown row (the row of
    :func:`~headrace.schema.unknown_fid`, zeros while there is none), else
    a zero vector.
    """
    table_of = dict(zip(slots, tables, strict=True))
    vectors = []
    for slot, fids in batch_fids(batch, slots).items():
        table = table_of[slot]
        fill = lookup(table, _unknown_fids(slot), None)[0] if unknown_rows else None
        vectors.append(lookup(table, fids, fill))
    values = np.concatenate(vectors) if vectors else np.empty((0, dim), np.float32)
    return model_inputs(
        batch,
        slots,
        torch.from_numpy(np.ascontiguousarray(values, np.float32)),
        pooling,
        dim,
        sequence_slots,
    )
