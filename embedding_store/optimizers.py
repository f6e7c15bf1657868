"""Per-row sparse optimizers, vectorised over the rows a batch touched.

Each update takes the gathered weights, optimizer state and summed gradients
of distinct rows and returns their new weights and state; the table gathers
and scatters. The formulas follow ``torch.optim`` where torch has the
optimizer (SGD, Adagrad) and McMahan et al. (2013) for FTRL-Proximal.
"""

from __future__ import annotations

import numpy as np

from headrace.embedding_store.config import FTRL, SGD, Adagrad

__all__ = ["initial_state", "state_width", "update"]


def state_width(optimizer: SGD | Adagrad | FTRL) -> int:
    """Optimizer state per element of a row: 0 (SGD), 1 (Adagrad), 2 (FTRL z, n)."""
    return {"sgd": 0, "adagrad": 1, "ftrl": 2}[optimizer.kind]


def initial_state(optimizer: SGD | Adagrad | FTRL, n: int, dim: int) -> np.ndarray:
    """Optimizer state of ``n`` new rows, shape ``(n, state_width * dim)``."""
    state = np.zeros((n, state_width(optimizer) * dim), dtype=np.float32)
    if isinstance(optimizer, Adagrad):
        state[:] = optimizer.initial_accumulator_value
    return state


def update(
    optimizer: SGD | Adagrad | FTRL,
    weights: np.ndarray,
    state: np.ndarray,
    grads: np.ndarray,
    squares: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """New ``(weights, state)`` of rows after one step with ``grads`` (float32, 2-d).

    ``squares`` is what the squared-gradient accumulators (Adagrad's, FTRL's
    ``n``) add: ``grads ** 2`` when ``None``; the sum of each occurrence's
    squared gradient when a row's gradient sums several occurrences, so that
    the accumulator grows as it would over that many per-event steps.
    """
    if squares is None:
        squares = grads * grads
    if isinstance(optimizer, SGD):
        return weights - np.float32(optimizer.lr) * grads, state
    if isinstance(optimizer, Adagrad):
        acc = state + squares if optimizer.decay == 1.0 else state * optimizer.decay + squares
        std = np.sqrt(acc) + np.float32(optimizer.eps)
        return weights - np.float32(optimizer.lr) * (grads / std), acc
    return _ftrl(optimizer, weights, state, grads, squares)


def _ftrl(
    opt: FTRL, weights: np.ndarray, state: np.ndarray, grads: np.ndarray, squares: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    dim = weights.shape[1]
    z, n = state[:, :dim], state[:, dim:]
    n_new = n + squares
    sigma = (np.sqrt(n_new) - np.sqrt(n)) / np.float32(opt.alpha)
    z_new = z + grads - sigma * weights
    shrunk = z_new - np.sign(z_new) * np.float32(opt.l1)
    denom = (np.float32(opt.beta) + np.sqrt(n_new)) / np.float32(opt.alpha) + np.float32(opt.l2)
    w_new = np.where(np.abs(z_new) <= opt.l1, np.float32(0), -shrunk / denom)
    return w_new.astype(np.float32), np.concatenate([z_new, n_new], axis=1)
