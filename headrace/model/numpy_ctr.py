"""The built-in :class:`CtrModel`'s training step written out in numpy.

A small batch's step is dominated by per-op overhead, not arithmetic: torch
autograd records and replays about 40 nodes for a DeepFM, and at batch 32
that cost about 0.7 ms of a 2.3 ms step. The forward and backward passes of
``lr``, ``fm`` and ``deepfm`` written out by hand in numpy take 0.27 ms. The
weights stay the module's own (numpy views of its tensors), so the dense
optimizer, checkpoints and serving (which runs the torch forward) do not
change; a test checks the gradients against autograd.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from headrace.model.builtin import CtrModel

__all__ = ["NumpyCtr"]


class _Dense(NamedTuple):
    """Numpy views of one linear layer's weights and gradients."""

    weight: np.ndarray  # (out, in)
    bias: np.ndarray  # (out,)
    weight_t: torch.Tensor  # (in, out) view, for torch.mm
    grad_weight: torch.Tensor  # (out, in)
    grad_bias: np.ndarray  # (out,)


def _dense(layer: nn.Linear) -> _Dense:
    if layer.weight.grad is None or layer.bias.grad is None:
        raise ValueError("NumpyCtr writes into the weights' .grad tensors: create them first")
    return _Dense(
        layer.weight.detach().numpy(),
        layer.bias.detach().numpy(),
        layer.weight.detach().T,
        layer.weight.grad,
        layer.bias.grad.numpy(),
    )


def _mm(a: np.ndarray, b: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> np.ndarray:
    # Matrix products go through torch, which keeps to the trainer's thread
    # setting: numpy's OpenBLAS starts its own threads at batch 128, and on
    # a loaded 2-core machine a step then took 60 ms instead of 3.
    b = b if isinstance(b, torch.Tensor) else torch.from_numpy(b)
    if out is None:
        return torch.mm(torch.from_numpy(a), b).numpy()
    return torch.mm(torch.from_numpy(a), b, out=out).numpy()


class NumpyCtr:
    """Loss and gradients of a :class:`CtrModel` without autograd.

    Parameters
    ----------
    model
        The model whose weights are read and whose ``.grad`` tensors are
        written. Both are viewed once, here: keep them in place (update them
        in place, never assign new tensors), as the trainer's flat
        parameter does.

    Examples
    --------
    >>> model = CtrModel("deepfm", n_slots=3, dim=4, n_dense=2, hidden=(8,), id_bias=True)
    >>> for p in model.parameters():
    ...     p.grad = torch.zeros_like(p)
    >>> pooled, dense = np.ones((5, 3, 4), np.float32), np.zeros((5, 2), np.float32)
    >>> logits, loss, grad = NumpyCtr(model).loss_and_gradients(
    ...     pooled, dense, np.ones(5, np.float32), None)
    >>> logits.shape, grad.shape
    ((5,), (5, 3, 4))
    """

    def __init__(self, model: CtrModel) -> None:
        self.id_bias = model.id_bias
        self.fm = model.kind != "lr"
        self.linear = _dense(model.linear)
        mlp = [m for m in model.mlp if isinstance(m, nn.Linear)] if model.mlp is not None else []
        self.mlp = [_dense(layer) for layer in mlp]

    def loss_and_gradients(
        self,
        pooled: np.ndarray,
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
        pooled
            ``(n, slots, dim)`` float32 pooled slot vectors.
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
            ``pooled``, ``(n, slots, dim)``.
        """
        n = len(pooled)
        x = np.log1p(np.abs(dense))
        x *= np.sign(dense)
        vectors = pooled[:, :, 1:] if self.id_bias else pooled
        width = vectors.shape[1] * vectors.shape[2]
        flat = np.empty((n, width + x.shape[1]), np.float32)
        flat[:, :width] = vectors.reshape(n, width)
        flat[:, width:] = x
        lin = self.linear
        linear_in = x if self.id_bias else flat
        logits = linear_in @ lin.weight[0]
        logits += lin.bias[0]
        if self.id_bias:
            logits += pooled[:, :, 0].sum(axis=1)
        total = None
        if self.fm:
            total = vectors.sum(axis=1)
            # 0.5 * (|sum of vectors|^2 - sum of |vector|^2), per event.
            logits += 0.5 * (
                np.einsum("ij,ij->i", total, total) - np.einsum("ijk,ijk->i", vectors, vectors)
            )
        hidden = [flat]
        for layer in self.mlp[:-1]:
            h = _mm(hidden[-1], layer.weight_t)
            h += layer.bias
            np.maximum(h, 0.0, out=h)
            hidden.append(h)
        if self.mlp:
            last = self.mlp[-1]
            logits += hidden[-1] @ last.weight[0]
            logits += last.bias[0]

        # Weighted mean of softplus(z) - y z, as binary_cross_entropy_with_logits;
        # d/dz = sigmoid(z) - y, with sigmoid in its tanh form (never overflows).
        losses = np.logaddexp(0.0, logits) - labels * logits
        dz = np.tanh(0.5 * logits)
        dz += 1.0 - 2.0 * labels
        events = n if events is None else events
        dz *= 0.5 / max(events, 1)
        if weights is not None:
            losses *= weights
            dz *= weights
        loss = float(losses.sum()) / max(events, 1)

        lin.grad_weight.numpy()[0] = dz @ linear_in
        lin.grad_bias[0] = dz.sum()
        grad = np.empty_like(pooled, dtype=np.float32)
        dvectors = grad[:, :, 1:] if self.id_bias else grad
        if self.id_bias:
            grad[:, :, 0] = dz[:, None]
        if total is None:
            dvectors[...] = 0.0
        else:
            # d/dv_s of the FM term: (sum of the event's vectors) - v_s.
            np.subtract(total[:, None, :], vectors, out=dvectors)
            dvectors *= dz[:, None, None]
        dflat = None if self.id_bias else np.outer(dz, lin.weight[0])
        if self.mlp:
            dh = dz[:, None]
            for layer, h in zip(reversed(self.mlp), reversed(hidden), strict=True):
                _mm(dh.T, h, out=layer.grad_weight)
                layer.grad_bias[:] = dh.sum(axis=0)
                dh_in = _mm(dh, layer.weight)
                if h is not flat:
                    dh_in *= h > 0
                dh = dh_in
            dflat = dh if dflat is None else dflat + dh
        if dflat is not None:
            dvectors += dflat[:, :width].reshape(vectors.shape)
        return logits, loss, grad
