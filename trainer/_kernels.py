"""Compiled (numba) per-step bookkeeping of the trainer: the progressive metrics' update.

At batch 32 :meth:`~headrace.trainer.evaluation.ProgressiveMetrics.update`
was some thirty numpy calls (clipping, logs, four ``np.add.at`` into the
histograms, the ring buffer): a tenth of the step. Compiled on first use and
cached on disk (see :mod:`headrace.embedding_store._kernels`).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


@_jit
def progressive_update(
    probabilities: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    weighted: bool,
    eps: float,
    histograms: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    ring: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    head: int,
    filled: int,
    losses: np.ndarray,
) -> tuple[float, float, float, float, int, int]:
    """Count a batch into the run's and the window's histograms and the window's ring.

    ``histograms`` are (positives, negatives) of the run, then of the
    window, per probability bin; ``ring`` holds the window's (bin, label,
    loss, weight, prediction) per event, ``head`` its next slot and
    ``filled`` its events. Writes the per-event log losses into ``losses``;
    returns the batch's weighted sums of loss, weight, prediction and label,
    and the new ``head`` and ``filled``.
    """
    pos, neg, win_pos, win_neg = histograms
    ring_bin, ring_label, ring_loss, ring_weight, ring_predicted = ring
    bins, window = len(pos), len(ring_bin)
    n = len(probabilities)
    sums = np.zeros(4)
    for i in range(n):
        p = min(max(float(probabilities[i]), eps), 1.0 - eps)
        y = float(labels[i])
        w = float(weights[i]) if weighted else 1.0
        loss = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
        losses[i] = loss
        which = min(int(p * bins), bins - 1)
        if y >= 0.5:
            pos[which] += w
        else:
            neg[which] += w
        sums[0] += w * loss
        sums[1] += w
        sums[2] += w * p
        sums[3] += w * y
        if i < n - window:
            continue  # the ring keeps the last ``window`` events
        slot = head
        if slot < filled:  # evict the event there
            if ring_label[slot] >= 0.5:
                win_pos[ring_bin[slot]] -= ring_weight[slot]
            else:
                win_neg[ring_bin[slot]] -= ring_weight[slot]
        ring_bin[slot] = which
        ring_label[slot] = y
        ring_loss[slot] = loss
        ring_weight[slot] = w
        ring_predicted[slot] = p
        if y >= 0.5:
            win_pos[which] += w
        else:
            win_neg[which] += w
        head = (head + 1) % window
        filled = min(window, filled + 1)
    return sums[0], sums[1], sums[2], sums[3], head, filled
