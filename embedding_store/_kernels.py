"""Compiled kernels of the in-memory training path: index probes, stamping, the Adagrad step.

A training step of 32 events touched the store in a few dozen numpy calls
of 1-5 µs each (probe rounds, duplicate-row sums, the optimizer formula,
change marks): the calls, not the arithmetic, were the cost. Each kernel
here does one of those jobs in one call, looping over the batch's ids.

They are compiled by numba on first use and cached on disk (numba's cache:
``__pycache__`` beside this file, or the user's cache directory when that
is read-only; ``NUMBA_CACHE_DIR`` moves it). No ``fastmath``: the Adagrad
kernel computes in float32 in the order the numpy formula of
:func:`~headrace.embedding_store.optimizers.update` does, and tests check
that it gives the same bits. ``nogil``: the reader thread parses the next
batch meanwhile.
"""

from __future__ import annotations

import numba
import numpy as np

from headrace.embedding_store.index import EMPTY

_jit = numba.njit(cache=True, nogil=True)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@_jit
def _mix64(z: np.uint64) -> np.uint64:
    """SplitMix64's finaliser, as :func:`~headrace.embedding_store._hashing.mix64`."""
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


@_jit
def _home(key: np.int64, salt: np.uint64, mask: np.uint64) -> np.int64:
    return np.int64(_mix64(np.uint64(key) ^ salt) & mask)


@_jit
def probe(
    entries: np.ndarray, mask: np.uint64, salt: np.uint64, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions and rows of ``keys`` in an open-addressing table; -1 for both where absent.

    ``entries`` ``(capacity, 2)`` int64 holds (key, row) per position; a row
    of ``EMPTY`` ends a chain, a tombstone (another negative row) lets it go on.
    """
    n = len(keys)
    positions = np.full(n, -1, dtype=np.int64)
    rows = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        key = keys[i]
        pos = _home(key, salt, mask)
        while True:
            row = entries[pos, 1]
            if row == EMPTY:
                break
            if row >= 0 and entries[pos, 0] == key:
                positions[i] = pos
                rows[i] = row
                break
            pos = (pos + 1) & np.int64(mask)
    return positions, rows


@_jit
def place(
    entries: np.ndarray, mask: np.uint64, salt: np.uint64, keys: np.ndarray, rows: np.ndarray
) -> int:
    """Put distinct absent ``keys`` with their ``rows`` at the first free position of their chains.

    Returns how many of those positions were empty (not tombstones).
    """
    filled = 0
    for i in range(len(keys)):
        pos = _home(keys[i], salt, mask)
        while entries[pos, 1] >= 0:
            pos = (pos + 1) & np.int64(mask)
        filled += entries[pos, 1] == EMPTY
        entries[pos, 0] = keys[i]
        entries[pos, 1] = rows[i]
    return filled


@_jit
def see(rows: np.ndarray, event_time: float, last_seen: np.ndarray, dirty: np.ndarray) -> int:
    """Stamp the rows found (``rows >= 0``) with ``event_time`` and mark them changed.

    Returns how many of ``rows`` are -1 (no row).
    """
    missing = 0
    for i in range(len(rows)):
        row = rows[i]
        if row < 0:
            missing += 1
            continue
        if last_seen[row] < event_time:
            last_seen[row] = event_time
        dirty[row] = True
    return missing


@_jit
def adagrad_apply(
    rows: np.ndarray,
    grads: np.ndarray,
    weights: np.ndarray,
    state: np.ndarray,
    lr: np.float32,
    eps: np.float32,
    decay: np.float32,
    per_occurrence: bool,
    scratch: np.ndarray,
    dirty: np.ndarray,
    touched: np.ndarray,
    mark_touched: bool,
) -> None:
    """One Adagrad step of the rows of a batch, in place; ``rows`` -1 are skipped.

    Gradients of one row are summed in batch order; its accumulator adds
    the sum of their squares (``per_occurrence``) or the square of their
    sum. ``acc = decay * acc + squares`` (``decay == 1``: no multiply, as
    the numpy formula), ``w -= lr * g / (sqrt(acc) + eps)``. The rows are
    marked in ``dirty`` and, if ``mark_touched``, in ``touched``.
    ``scratch`` is per-row int32 working space (any contents).
    """
    n, dim = grads.shape
    for i in range(n):
        if rows[i] >= 0:
            scratch[rows[i]] = -1
    distinct = np.empty(n, dtype=np.int64)
    summed = np.zeros((n, dim), dtype=np.float32)
    squares = np.zeros((n, dim), dtype=np.float32)
    k = 0
    for i in range(n):
        row = rows[i]
        if row < 0:
            continue
        at = scratch[row]
        if at < 0:
            at = k
            scratch[row] = k
            distinct[k] = row
            k += 1
        for j in range(dim):
            g = grads[i, j]
            summed[at, j] += g
            squares[at, j] += g * g
    for at in range(k):
        row = distinct[at]
        for j in range(dim):
            g = summed[at, j]
            square = squares[at, j] if per_occurrence else g * g
            acc = state[row, j] + square if decay == 1.0 else state[row, j] * decay + square
            state[row, j] = acc
            weights[row, j] = weights[row, j] - lr * (g / (np.sqrt(acc) + eps))
        dirty[row] = True
        if mark_touched:
            touched[row] = True


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@_jit
def train_lookup(
    salts: np.ndarray,
    fids: np.ndarray,
    slots: np.ndarray,
    event_time: float,
    index: tuple[np.ndarray, np.uint64, np.uint64],
    table: tuple,
    free: np.ndarray,
    n_free: int,
    high_water: int,
    init: tuple[np.uint64, bool, float, np.float32],
    counters: tuple[np.ndarray, np.ndarray],
    mark_touched: bool,
    rows: np.ndarray,
    values: np.ndarray,
) -> tuple[int, int, int]:
    """A training lookup of one in-memory table that admits every id: find, create, stamp, gather.

    The index key of a (local ``slots``, ``fids``) pair is the fid xor its
    slot's entry of ``salts`` (the table's key salts, as int64); ``index``
    the (entries, mask, salt) of :func:`probe`; ``table`` the row arrays
    (weights, state, last_seen, persisted, freq, used, row_fid, row_slot,
    live, dirty rows, touched rows). An absent key gets a row
    from the end of ``free[:n_free]``, else at ``high_water`` (the caller
    made room for every key), initialised as
    :func:`~headrace.embedding_store._hashing.initial_rows` does (``init``:
    the mixed seed salt, uniform or zeros, the scale; then the optimizer
    state's initial value). Rows are stamped with ``event_time`` and marked
    changed; ``counters`` (rows, admitted per local slot) count the new ones.
    Writes ``rows`` and ``values``; returns the new ``n_free`` and
    ``high_water`` and the empty index positions taken.
    """
    entries, mask, salt = index
    weights, state, last_seen, persisted, freq, used, row_fid, row_slot, live, dirty, touched = (
        table
    )
    seed_salt, uniform, scale, accumulator = init
    live_rows, admitted = counters
    dim = weights.shape[1]
    step = np.int64(mask)
    filled = 0
    for i in range(len(fids)):
        key = fids[i] ^ salts[slots[i]]
        home = _home(key, salt, mask)
        pos = home
        row = -1
        while entries[pos, 1] != EMPTY:
            if entries[pos, 1] >= 0 and entries[pos, 0] == key:
                row = entries[pos, 1]
                break
            pos = (pos + 1) & step
        if row < 0:
            pos = home
            while entries[pos, 1] >= 0:
                pos = (pos + 1) & step
            if n_free > 0:
                n_free -= 1
                row = free[n_free]
            else:
                row = high_water
                high_water += 1
            filled += entries[pos, 1] == EMPTY
            entries[pos, 0] = key
            entries[pos, 1] = row
            base = _mix64(np.uint64(fids[i]) ^ seed_salt)
            for j in range(dim):
                if uniform:
                    bits = _mix64(base + np.uint64(j) * _GOLDEN) >> np.uint64(11)
                    u = np.float64(bits) * (1.0 / 9007199254740992.0)
                    weights[row, j] = np.float32((2.0 * u - 1.0) * scale)
                else:
                    weights[row, j] = 0.0
            state[row, :] = accumulator
            last_seen[row] = event_time
            persisted[row] = np.nan
            freq[row] = 0
            used[row] = 0
            row_fid[row] = fids[i]
            row_slot[row] = slots[i]
            live[row] = True
            if mark_touched:
                touched[row] = True
            live_rows[slots[i]] += 1
            admitted[slots[i]] += 1
        elif last_seen[row] < event_time:
            last_seen[row] = event_time
        dirty[row] = True
        rows[i] = row
        for j in range(dim):
            values[i, j] = weights[row, j]
    return n_free, high_water, filled
