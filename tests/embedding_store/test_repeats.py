"""Repeated ids in a batch, accumulator decay, and lookups of several slots at once."""

import numpy as np
import pytest

from headrace.embedding_store import SGD, Adagrad, Initializer, SlotConfig

DIM = 3


def _slot(name="item", **kwargs) -> SlotConfig:
    return SlotConfig(name=name, dim=DIM, initializer=Initializer(kind="zeros"), **kwargs)


def _one_batch(store, fids, grads, slot="item"):
    hit = store.lookup_for_training(slot, np.asarray(fids, dtype=np.int64), event_time=0.0)
    store.apply_gradients(hit, np.asarray(grads, dtype=np.float32))
    return store.lookup(slot, np.asarray([fids[0]], dtype=np.int64))[0]


def _per_event(optimizer: Adagrad, grads: np.ndarray) -> np.ndarray:
    """Plain Adagrad, one step per occurrence, in float64."""
    w, acc = np.zeros(DIM), np.zeros(DIM)
    for g in grads.astype(np.float64):
        acc = optimizer.decay * acc + g * g
        w -= optimizer.lr * g / (np.sqrt(acc) + optimizer.eps)
    return w


@pytest.mark.parametrize("decay", [1.0, 0.9])
def test_per_occurrence_accumulates_each_squared_gradient(open_store, decay):
    optimizer = Adagrad(lr=0.1, decay=decay)
    store = open_store([_slot(optimizer=optimizer, repeats="per_occurrence")])
    grads = np.random.default_rng(0).normal(size=(6, DIM)).astype(np.float32)
    got = _one_batch(store, [7] * 6, grads)
    squares = (grads.astype(np.float64) ** 2).sum(axis=0)
    expected = -0.1 * grads.sum(axis=0) / (np.sqrt(squares) + optimizer.eps)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # A second batch decays the accumulator once, then adds the new squares.
    again = _one_batch(store, [7], grads[:1])
    acc = decay * squares + grads[0].astype(np.float64) ** 2
    np.testing.assert_allclose(again, expected - 0.1 * grads[0] / np.sqrt(acc), rtol=1e-5)


def test_per_occurrence_learns_about_as_much_as_per_event_steps(open_store):
    optimizer = Adagrad(lr=0.1)
    store = open_store(
        [
            _slot(optimizer=optimizer, repeats="per_occurrence"),
            _slot("summed", optimizer=optimizer, repeats="sum"),
        ]
    )
    grads = np.full((16, DIM), 0.5, dtype=np.float32)  # an id seen 16 times, same push each time
    per_occurrence = _one_batch(store, [1] * 16, grads)
    summed = _one_batch(store, [1] * 16, grads, slot="summed")
    per_event = _per_event(optimizer, grads)
    # Summing squares the sum: one step's worth. Per occurrence: within 2x of 16 steps.
    np.testing.assert_allclose(summed, -0.1, rtol=1e-5)
    assert np.all(np.abs(per_occurrence) > 3 * np.abs(summed))
    assert np.all(np.abs(per_event) / np.abs(per_occurrence) < 2.0)


def test_slots_with_equal_settings_share_a_table_but_not_rows(open_store):
    sgd = SGD(lr=1.0)
    store = open_store(
        [
            _slot("user", optimizer=sgd),
            _slot("friend", optimizer=sgd),
            SlotConfig(name="big", dim=5),
        ]
    )
    user, _ = store._where["user"]
    friend, _ = store._where["friend"]
    assert user is friend and store._where["big"][0] is not user
    fids = np.array([5, 6], dtype=np.int64)
    hit = store.lookup_slots({"user": fids, "friend": fids[:1]}, event_time=1.0)
    assert hit.slots == ("user", "friend") and hit.bounds.tolist() == [0, 2, 3]
    store.apply_gradients(hit, np.array([[1.0] * DIM, [2.0] * DIM, [4.0] * DIM], np.float32))
    # The same fid in two slots is two rows, each with its own gradient.
    assert store.lookup("user", fids).tolist() == [[-1.0] * DIM, [-2.0] * DIM]
    assert store.lookup("friend", fids).tolist() == [[-4.0] * DIM, [0.0] * DIM]
    assert store.stats().rows == {"user": 2, "friend": 1, "big": 0}
    changes = store.drain_changes()
    assert sorted(changes["user"].fids.tolist()) == [5, 6]
    assert changes["friend"].fids.tolist() == [5]
    with pytest.raises(ValueError, match="share a dim"):
        store.lookup_slots({"user": fids, "big": fids}, event_time=1.0)
