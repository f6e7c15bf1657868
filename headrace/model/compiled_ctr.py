"""The built-in :class:`CtrModel`'s training step, pooling included, in a few compiled calls.

A small batch's step is dominated by per-call overhead, not arithmetic:
torch autograd records and replays about 40 nodes for a DeepFM, and the
same passes written out in numpy were still some sixty calls of 1-5 µs at
batch 32. Here pooling, the dense transform, the linear and FM terms, the
output layer and the loss are compiled loops (:mod:`headrace.model._kernels`),
and only the MLP's hidden layers are torch matrix products: for DeepFM
[128, 64], four compiled calls and eight torch calls a step. The weights
stay the module's own (views of its tensors), so the dense optimizer,
checkpoints and serving (which runs the torch forward) do not change; tests
check the logits, loss and gradients against autograd.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from headrace.model import _kernels
from headrace.model.builtin import CtrModel
from headrace.model.pooling import BatchLike, Pooling

__all__ = ["CompiledCtr", "RowLayout"]


class RowLayout(NamedTuple):
    """Which event and slot each of a batch's ids pools into.

    The ids' rows come slot after slot (:func:`~headrace.model.batch_fids`
    order); slot ``p`` present in the batch is model slot ``slots[p]``, and
    its ids of event ``i`` are ``offsets[p, i]:offsets[p, i + 1]`` of its run.

    Attributes
    ----------
    offsets
        ``(present slots, n + 1)`` int64.
    slots
        ``(present slots,)`` int64 model indices.
    width
        Slots of the model.
    """

    offsets: np.ndarray
    slots: np.ndarray
    width: int

    @classmethod
    def of(cls, batch: BatchLike, slots: Sequence[str]) -> RowLayout:
        """The layout of ``batch``'s ids of ``slots`` (model order; absent slots pool to zeros)."""
        present, names = _present(tuple(slots), tuple(batch.fids))
        # Each slot's offsets have n + 1 entries: one concatenation is the stack.
        offsets = (
            np.concatenate([batch.offsets[name] for name in names])
            .astype(np.int64, copy=False)
            .reshape(len(names), len(batch) + 1)
            if names
            else np.zeros((0, len(batch) + 1), np.int64)
        )
        return cls(offsets, present, len(slots))


@functools.lru_cache(maxsize=64)
def _present(slots: tuple[str, ...], names: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Model indices and names of the ``slots`` among a batch's slot ``names``.

    A stream's batches have the same slots, so this is kept, not worked out
    at every step; the layouts share the array (nothing writes to it; a
    read-only flag would give the kernels another signature to compile).
    """
    present = [k for k, slot in enumerate(slots) if slot in names]
    return np.array(present, dtype=np.int64), tuple(slots[k] for k in present)


class _Dense(NamedTuple):
    """One linear layer's weights and gradients, as tensors and numpy views."""

    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor  # (out,)
    weight_t: torch.Tensor  # (in, out) view, for torch.addmm
    grad_weight: torch.Tensor  # (out, in)
    grad_bias: torch.Tensor  # (out,)


def _dense(layer: nn.Linear) -> _Dense:
    if layer.weight.grad is None or layer.bias.grad is None:
        raise ValueError("CompiledCtr writes into the weights' .grad tensors: create them first")
    weight = layer.weight.detach()
    return _Dense(weight, layer.bias.detach(), weight.T, layer.weight.grad, layer.bias.grad)


class CompiledCtr:
    """Loss and gradients of a :class:`CtrModel` without autograd, from the ids' rows.

    Parameters
    ----------
    model
        The model whose weights are read and whose ``.grad`` tensors are
        written. Both are viewed once, here: keep them in place (update them
        in place, never assign new tensors), as the trainer's flat
        parameter does.
    pooling
        ``"sum"`` or ``"mean"`` of a multi-valued slot's rows.

    Examples
    --------
    >>> model = CtrModel("deepfm", n_slots=2, dim=4, n_dense=1, hidden=(8,), id_bias=True)
    >>> for p in model.parameters():
    ...     p.grad = torch.zeros_like(p)
    >>> class Events:  # two events: one item each, 0 and 2 tags
    ...     fids = {"item": np.array([1, 2]), "tags": np.array([3, 4])}
    ...     offsets = {"item": np.array([0, 1, 2]), "tags": np.array([0, 0, 2])}
    ...     def __len__(self): return 2
    >>> layout = RowLayout.of(Events(), ["item", "tags"])
    >>> values = np.ones((4, 4), np.float32)  # item 1, 2 then tags 3, 4
    >>> logits, loss, grad = CompiledCtr(model, "sum").loss_and_gradients(
    ...     values, layout, np.zeros((2, 1), np.float32), np.ones(2, np.float32), None)
    >>> logits.shape, grad.shape
    ((2,), (4, 4))
    """

    def __init__(self, model: CtrModel, pooling: Pooling) -> None:
        self.id_bias = model.id_bias
        self.fm = model.kind != "lr"
        self.mean = pooling == "mean"
        self.linear = _dense(model.linear)
        layers = [m for m in model.mlp if isinstance(m, nn.Linear)] if model.mlp else []
        self.mlp = [_dense(layer) for layer in layers]
        # The output layer's weights as numpy views (an empty one without an MLP).
        self._output = (
            (self.mlp[-1].weight[0].numpy(), self.mlp[-1].bias.numpy())
            if self.mlp
            else (np.zeros(0, np.float32), np.zeros(1, np.float32))
        )
        self._output_grads = (
            (self.mlp[-1].grad_weight[0].numpy(), self.mlp[-1].grad_bias.numpy())
            if self.mlp
            else self._output
        )
        # The linear term's weights and gradients, and the hidden layers' bias
        # gradients, as numpy views: made once, not at every step.
        lin = self.linear
        self._linear = (lin.weight[0].numpy(), lin.bias.numpy())
        self._linear_grads = (lin.grad_weight[0].numpy(), lin.grad_bias.numpy())
        self._bias_grads = [layer.grad_bias.numpy() for layer in self.mlp[:-1]]

    def loss_and_gradients(
        self,
        values: np.ndarray,
        layout: RowLayout,
        dense: np.ndarray,
        labels: np.ndarray,
        weights: np.ndarray | None,
        events: int | None = None,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """One forward and backward pass of the weighted mean log loss.

        The weights' gradients are written to their ``.grad`` tensors (what
        they held is replaced, not added to).

        Parameters
        ----------
        values
            ``(n_fids, dim)`` float32 rows of the batch's ids (``layout``'s order).
        layout
            Where each id pools.
        dense
            ``(n, n_dense)`` float32 raw dense features.
        labels
            ``(n,)`` float32 labels in {0, 1}.
        weights
            ``(n,)`` float32 event weights of the loss, or ``None`` for 1.
        events
            The number of events the loss is the mean over (default ``n``):
            with several ranks, every rank's events.

        Returns
        -------
        tuple
            ``logits`` ``(n,)``, the loss, and its gradient with respect to
            ``values``, ``(n_fids, dim)``.
        """
        n, dim = len(labels), values.shape[1]
        vector = dim - 1 if self.id_bias else dim
        values = np.ascontiguousarray(values, dtype=np.float32)
        dense = np.ascontiguousarray(dense, dtype=np.float32)
        pooled = np.empty((n, layout.width, dim), np.float32)
        flat = np.empty((n, layout.width * vector + dense.shape[1]), np.float32)
        total = np.empty((n, vector), np.float32)
        logits = np.empty(n, np.float32)
        args = (layout.offsets, layout.slots, self.mean)
        _kernels.forward_inputs(
            values, *args, dense, self.id_bias, self.fm, *self._linear, pooled, flat, total, logits,
        )  # fmt: skip
        hidden = [torch.from_numpy(flat)]
        for layer in self.mlp[:-1]:
            hidden.append(torch.addmm(layer.bias, hidden[-1], layer.weight_t).relu_())
        last = hidden[-1].numpy()
        dz = np.empty(n, np.float32)
        dlast = np.empty_like(last) if self.mlp else last
        # The gradient of a hidden layer's bias is written with the gradient
        # of its output: by the output layer's kernel for the last one.
        bias_grads = self._bias_grads
        loss = _kernels.output_and_loss(
            logits, last, *self._output, bool(self.mlp), len(hidden) > 1, labels,
            labels if weights is None else weights, weights is not None,
            n if events is None else events, dz, *self._output_grads, dlast,
            bias_grads[-1] if bias_grads else dz,
        )  # fmt: skip
        dh = torch.from_numpy(dlast)
        for k in reversed(range(len(self.mlp) - 1)):
            layer, h = self.mlp[k], hidden[k]
            torch.mm(dh.T, h, out=layer.grad_weight)
            dh_in = torch.mm(dh, layer.weight)
            if k:
                _kernels.relu_backward(dh_in.numpy(), h.numpy(), bias_grads[k - 1])
            dh = dh_in
        grad = np.empty_like(values)
        _kernels.backward_inputs(
            dz, dh.numpy(), bool(self.mlp), pooled, flat, total, *args, self.id_bias, self.fm,
            self._linear[0], *self._linear_grads, grad,
        )  # fmt: skip
        return logits, float(loss), grad
