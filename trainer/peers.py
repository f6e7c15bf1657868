"""The other ranks of a distributed run, as the training loop sees them.

The loop stays the single-process loop: where ranks must agree, it asks a
:class:`Peers` (implemented by :mod:`headrace.distributed` over
``torch.distributed``). Without one, nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np
import torch

__all__ = ["Peers"]


class Peers(Protocol):
    """Collective decisions of one training step; every rank calls each method together."""

    def ready(self) -> None:
        """Wait until every rank is ready to take its first step."""
        ...

    def begin_step(
        self, examples: int, event_time: float, fids: Mapping[str, np.ndarray]
    ) -> tuple[int, float]:
        """The step's examples over all ranks, and its event time (the newest of any rank).

        A rank with nothing to train passes ``0`` and ``-inf``. ``fids`` are
        the step's ids per table, which the store's lookup asks for next (a
        sharded store sends them to their owners with this agreement).
        """
        ...

    def reduce_dense(self, grad: torch.Tensor) -> Callable[[], None]:
        """Start summing the flat dense gradient ``(n_params,)`` over all ranks, in place.

        Returns the function that waits for the sum: the sparse gradients
        travel meanwhile.
        """
        ...

    def agree(self, stop: bool, ended: bool, checkpoint: bool) -> tuple[bool, bool]:
        """``(halt, checkpoint)``: halt when any rank stops or every rank's source ended;
        checkpoint when any rank's checkpoint is due."""
        ...
