"""The compiled Adagrad step of the in-memory store against the numpy formula, bit for bit."""

import numpy as np
import pytest

from headrace.embedding_store import Adagrad, SlotConfig
from headrace.embedding_store.optimizers import update
from headrace.embedding_store.table import RowTable


@pytest.mark.parametrize("repeats", ["per_occurrence", "sum"])
@pytest.mark.parametrize("decay", [1.0, 0.995])
def test_compiled_adagrad_step_gives_the_numpy_formulas_bits(repeats, decay):
    rng = np.random.default_rng(3)
    optimizer = Adagrad(lr=0.07, decay=decay, initial_accumulator_value=0.02)
    table = RowTable(SlotConfig(name="s", dim=9, optimizer=optimizer, repeats=repeats), ["s"], [0], 0)
    table.create(0, np.arange(1, 51, dtype=np.int64), 0.0)
    table.state[:50] = rng.uniform(0, 1, (50, 9)).astype(np.float32)
    table.dirty.clear()
    table.touched.clear()
    # Repeated rows, and -1 for ids without one.
    rows = rng.choice(np.r_[np.arange(50), [-1, -1]], 200)
    grads = rng.normal(0, 1, (200, 9)).astype(np.float32)
    weights, state = table.weights.copy(), table.state.copy()

    found = rows >= 0
    distinct, summed, squares = table.sum_by_row(
        rows[found], grads[found], repeats == "per_occurrence"
    )
    expected_w, expected_s = update(optimizer, weights[distinct], state[distinct], summed, squares)
    table.apply(rows, grads)

    assert np.array_equal(table.weights[distinct], expected_w)
    assert np.array_equal(table.state[distinct], expected_s)
    untouched = np.setdiff1d(np.arange(len(weights)), distinct)
    assert np.array_equal(table.weights[untouched], weights[untouched])
    assert np.array_equal(table.state[untouched], state[untouched])
    assert np.array_equal(np.flatnonzero(table.dirty.rows), np.sort(distinct))
    assert np.array_equal(np.flatnonzero(table.touched.rows), np.sort(distinct))
