"""The interface every model follows, built-in or your own.

A model is a ``torch.nn.Module`` built as ``Model(layout, options)``:

- ``layout`` is the :class:`~headrace.model.ModelSpec`: ``layout.slots``
  (slot names in input order), ``layout.tables`` (each slot's embedding
  table), ``layout.dim`` (row length) and ``layout.model.dense_features``;
- ``options`` is ``model.options`` from the config, a plain ``dict``.

It may set ``sequence_slots`` (a tuple of slot names, default none): for
those slots it also gets every id's vector, in the event's order, rather
than only their pooled sum. Its ``forward(pooled, sequences, dense)`` maps

- ``pooled`` ``(n, len(layout.slots), layout.dim)``: each event's pooled
  vector per slot (zeros for a slot the event lacks);
- ``sequences``: slot -> :class:`~headrace.model.SequenceInput`
  ``(values (m, dim), offsets (n + 1,))`` for each of ``sequence_slots``;
- ``dense`` ``(n, len(dense_features))``: the raw dense features (float32);

to logits ``(n,)``. Its ``state_dict`` is what the trainer checkpoints and
publishes; serving imports the class by the same ``"package.module:Class"``
path and loads it. :func:`~headrace.model.build_model` checks all of this
at start and names the class and what is wrong.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from headrace.model.pooling import SequenceInput

__all__ = ["RecModel"]


@runtime_checkable
class RecModel(Protocol):
    """What :func:`~headrace.model.build_model` returns (see the module docs)."""

    sequence_slots: tuple[str, ...]

    def __call__(
        self,
        pooled: torch.Tensor,
        sequences: dict[str, SequenceInput],
        dense: torch.Tensor,
    ) -> torch.Tensor: ...
