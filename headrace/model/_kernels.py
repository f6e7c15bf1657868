"""Compiled (numba) parts of :class:`~headrace.model.compiled_ctr.CompiledCtr`'s step.

Pooling, the dense transform, the id biases, the linear layer, the FM term,
the MLP's output layer, the loss and their gradients, each a loop over the
batch in one call: at batch 32 they were some sixty numpy calls of 1-5 µs.
The MLP's hidden layers stay torch matrix products (BLAS beats a loop).
Compiled on first use and cached on disk (see
:mod:`headrace.embedding_store._kernels`); ``nogil`` lets the reader thread
parse meanwhile.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


@_jit
def forward_inputs(
    values: np.ndarray,
    offsets: np.ndarray,
    slot_of: np.ndarray,
    mean: bool,
    dense: np.ndarray,
    id_bias: bool,
    fm: bool,
    linear_weight: np.ndarray,
    linear_bias: np.ndarray,
    pooled: np.ndarray,
    flat: np.ndarray,
    total: np.ndarray,
    logits: np.ndarray,
) -> None:
    """Pool, then the logits of everything but the MLP.

    ``values`` ``(n_fids, dim)``: the ids' rows, slot after slot; slot ``p``
    (model index ``slot_of[p]``) gives event ``i`` the ids
    ``offsets[p, i]:offsets[p, i + 1]`` of its run. Writes ``pooled``
    ``(n, slots, dim)``; ``flat`` ``(n, slots * vector + n_dense)``, the
    flattened vectors (without the bias column with ``id_bias``) then the
    signed ``log1p`` of ``dense``; ``total`` ``(n, vector)``, the sum of an
    event's vectors (FM); ``logits`` ``(n,)``.
    """
    n, slots, dim = pooled.shape
    skip = 1 if id_bias else 0
    vector = dim - skip
    width = slots * vector
    pooled[:] = 0.0
    start = 0
    for p in range(offsets.shape[0]):
        k = slot_of[p]
        first = offsets[p, 0]
        for i in range(n):
            a, b = offsets[p, i], offsets[p, i + 1]
            for j in range(a, b):
                for d in range(dim):
                    pooled[i, k, d] += values[start + j - first, d]
            if mean and b - a > 1:
                count = np.float32(b - a)
                for d in range(dim):
                    pooled[i, k, d] /= count
        start += offsets[p, n] - first
    for i in range(n):
        for q in range(dense.shape[1]):
            v = dense[i, q]
            x = np.log1p(np.abs(v))
            flat[i, width + q] = -x if v < 0 else x
        for k in range(slots):
            for d in range(vector):
                flat[i, k * vector + d] = pooled[i, k, skip + d]
        z = linear_bias[0]
        if id_bias:
            for q in range(dense.shape[1]):
                z += flat[i, width + q] * linear_weight[q]
            for k in range(slots):
                z += pooled[i, k, 0]
        else:
            for c in range(flat.shape[1]):
                z += flat[i, c] * linear_weight[c]
        if fm:
            squares = np.float32(0.0)
            for d in range(vector):
                t = np.float32(0.0)
                for k in range(slots):
                    v = pooled[i, k, skip + d]
                    t += v
                    squares += v * v
                total[i, d] = t
            interactions = np.float32(0.0)
            for d in range(vector):
                interactions += total[i, d] * total[i, d]
            z += np.float32(0.5) * (interactions - squares)
        logits[i] = z


@_jit
def output_and_loss(
    logits: np.ndarray,
    hidden: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    mlp: bool,
    relu_input: bool,
    labels: np.ndarray,
    weights: np.ndarray,
    weighted: bool,
    events: int,
    dz: np.ndarray,
    grad_weight: np.ndarray,
    grad_bias: np.ndarray,
    dhidden: np.ndarray,
    grad_hidden_bias: np.ndarray,
) -> float:
    """The MLP's output layer (if ``mlp``), the weighted mean log loss and its first gradients.

    Adds ``hidden @ weight + bias`` to ``logits``; writes ``dz`` ``(n,)``
    (d loss / d logit), the output layer's gradients and ``dhidden``, the
    gradient of its input (through the ReLU that made it, if
    ``relu_input``, and then the sum over events of that is the gradient
    of the bias of the layer that made it, ``grad_hidden_bias``). Returns
    the loss: ``softplus(z) - y z`` weighted, summed and divided by ``events``.
    """
    n = len(logits)
    scale = 1.0 / max(events, 1)
    loss = 0.0
    for i in range(n):
        z = logits[i]
        if mlp:
            for c in range(hidden.shape[1]):
                z += hidden[i, c] * weight[c]
            z += bias[0]
            logits[i] = z
        y = labels[i]
        # softplus(z) - y z, and d/dz = sigmoid(z) - y with sigmoid in its
        # tanh form: neither overflows.
        term = max(z, 0.0) + np.log1p(np.exp(-abs(z))) - y * z
        g = np.float32(0.5 * scale) * (np.tanh(np.float32(0.5) * z) + np.float32(1.0 - 2.0 * y))
        if weighted:
            term *= weights[i]
            g *= weights[i]
        loss += term
        dz[i] = g
    if mlp:
        grad_bias[0] = 0.0
        for c in range(hidden.shape[1]):
            grad_weight[c] = 0.0
        for i in range(n):
            grad_bias[0] += dz[i]
            for c in range(hidden.shape[1]):
                grad_weight[c] += dz[i] * hidden[i, c]
                g = dz[i] * weight[c]
                dhidden[i, c] = 0.0 if relu_input and hidden[i, c] <= 0.0 else g
        if relu_input:
            _bias_gradient(dhidden, grad_hidden_bias)
    return loss * scale


@_jit
def _bias_gradient(dh: np.ndarray, grad_bias: np.ndarray) -> None:
    """``grad_bias = dh.sum(axis=0)``: the gradient of the bias of the layer that output ``dh``."""
    grad_bias[:] = 0.0
    for i in range(dh.shape[0]):
        for c in range(dh.shape[1]):
            grad_bias[c] += dh[i, c]


@_jit
def relu_backward(dh: np.ndarray, h: np.ndarray, grad_bias: np.ndarray) -> None:
    """``dh *= h > 0`` in place (the ReLU whose output is ``h``), then :func:`_bias_gradient`."""
    for i in range(dh.shape[0]):
        for c in range(dh.shape[1]):
            if h[i, c] <= 0.0:
                dh[i, c] = 0.0
    _bias_gradient(dh, grad_bias)


@_jit
def backward_inputs(
    dz: np.ndarray,
    dflat: np.ndarray,
    mlp: bool,
    pooled: np.ndarray,
    flat: np.ndarray,
    total: np.ndarray,
    offsets: np.ndarray,
    slot_of: np.ndarray,
    mean: bool,
    id_bias: bool,
    fm: bool,
    linear_weight: np.ndarray,
    grad_linear_weight: np.ndarray,
    grad_linear_bias: np.ndarray,
    grad_values: np.ndarray,
) -> None:
    """The linear layer's gradients, and those of ``values`` (:func:`forward_inputs`' layout).

    ``dflat`` is the MLP's gradient of ``flat`` (read if ``mlp``).
    """
    n, slots, dim = pooled.shape
    skip = 1 if id_bias else 0
    vector = dim - skip
    width = slots * vector
    columns = flat.shape[1] - width if id_bias else flat.shape[1]
    first_column = width if id_bias else 0
    grad_linear_bias[0] = 0.0
    for c in range(columns):
        grad_linear_weight[c] = 0.0
    for i in range(n):
        grad_linear_bias[0] += dz[i]
        for c in range(columns):
            grad_linear_weight[c] += dz[i] * flat[i, first_column + c]
    g = np.empty(dim, dtype=np.float32)
    start = 0
    for p in range(offsets.shape[0]):
        k = slot_of[p]
        first = offsets[p, 0]
        for i in range(n):
            a, b = offsets[p, i], offsets[p, i + 1]
            if a == b:
                continue
            if id_bias:
                g[0] = dz[i]
            for d in range(vector):
                # d/dv of the FM term: (sum of the event's vectors) - v.
                x = dz[i] * (total[i, d] - pooled[i, k, skip + d]) if fm else np.float32(0.0)
                if mlp:
                    x += dflat[i, k * vector + d]
                if not id_bias:
                    x += dz[i] * linear_weight[k * vector + d]
                g[skip + d] = x
            if mean and b - a > 1:
                count = np.float32(b - a)
                for d in range(dim):
                    g[d] /= count
            for j in range(a, b):
                for d in range(dim):
                    grad_values[start + j - first, d] = g[d]
        start += offsets[p, n] - first
