"""The compiled Adagrad step of the in-memory store against the numpy formula, bit for bit."""

import numpy as np
import pytest

from headrace.embedding_store import Adagrad, EmbeddingStore, SlotConfig
from headrace.embedding_store.optimizers import update
from headrace.embedding_store.table import RowTable


@pytest.mark.parametrize("repeats", ["per_occurrence", "sum"])
@pytest.mark.parametrize("decay", [1.0, 0.995])
def test_compiled_adagrad_step_gives_the_numpy_formulas_bits(repeats, decay):
    rng = np.random.default_rng(3)
    optimizer = Adagrad(lr=0.07, decay=decay, initial_accumulator_value=0.02)
    table = RowTable(
        SlotConfig(name="s", dim=9, optimizer=optimizer, repeats=repeats), ["s"], [0], 0
    )
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


@pytest.mark.parametrize("initializer", ["uniform", "zeros"])
def test_compiled_training_lookup_gives_what_the_general_path_gives(tmp_path, initializer):
    """Scalar event times take the compiled lookup, per-id times the numpy one."""
    optimizer = Adagrad(lr=0.1, initial_accumulator_value=0.1)
    slots = [
        SlotConfig(name=name, dim=4, optimizer=optimizer, expire_after=4.0,
                   initializer={"kind": initializer, "scale": 0.3})
        for name in ("a", "b")
    ]  # fmt: skip
    rng = np.random.default_rng(8)
    with (
        EmbeddingStore.open(tmp_path / "compiled", slots, seed=5) as compiled,
        EmbeddingStore.open(tmp_path / "general", slots, seed=5) as general,
    ):
        assert all(t.compiled_lookup for t in compiled._tables)
        for step in range(40):
            ids = {"a": rng.integers(0, 60, 20), "b": rng.integers(0, 60, 7)}
            got = compiled.lookup_slots(ids, float(step))
            expected = general.lookup_slots(ids, np.full(27, float(step)))
            assert np.array_equal(got.values, expected.values)
            assert np.array_equal(got.rows >= 0, expected.rows >= 0)
            grads = rng.normal(size=got.values.shape).astype(np.float32)
            compiled.apply_gradients(got, grads)
            general.apply_gradients(expected, grads)
            # Rows unseen for 4 s go, and their row numbers are reused.
            assert compiled.expire(float(step)) == general.expire(float(step))
        a, b = compiled.stats(), general.stats()
        assert (a.rows, a.admitted, a.expired) == (b.rows, b.admitted, b.expired)
        assert sum(b.expired.values()) > 0
        changed = compiled.drain_changes(), general.drain_changes()
        for slot in ("a", "b"):
            (fa, va), (fb, vb) = compiled.export(slot), general.export(slot)
            assert np.array_equal(np.sort(fa), np.sort(fb))
            assert np.array_equal(va[np.argsort(fa)], vb[np.argsort(fb)])
            a_changed, b_changed = (c[slot].fids for c in changed)
            assert np.array_equal(np.sort(a_changed), np.sort(b_changed))
