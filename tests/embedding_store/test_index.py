"""FidIndex against a plain dict, compiled and in numpy rounds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.embedding_store.index import FidIndex

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@pytest.mark.parametrize("compiled", [True, False])
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(int64s, max_size=40)), max_size=30))
def test_index_agrees_with_a_dict(compiled, operations):
    index = FidIndex(capacity=16, compiled=compiled)
    reference: dict[int, int] = {}
    next_row = 0
    for is_insert, fids in operations:
        if is_insert:
            new = sorted(set(fids) - reference.keys())
            rows = np.arange(next_row, next_row + len(new))
            index.insert(np.array(new, dtype=np.int64), rows)
            reference.update(zip(new, rows.tolist(), strict=True))
            next_row += len(new)
        else:
            distinct = sorted(set(fids))
            removed = index.remove(np.array(distinct, dtype=np.int64))
            assert removed.tolist() == [reference.pop(f, -1) for f in distinct]
        probe = np.array(list(reference) + fids, dtype=np.int64)
        assert index.find(probe).tolist() == [reference.get(f, -1) for f in probe.tolist()]
        assert len(index) == len(reference)


@pytest.mark.parametrize("compiled", [True, False])
def test_many_keys_grow_the_table_and_stay_findable(compiled):
    rng = np.random.default_rng(7)
    keys = np.unique(rng.integers(-(2**63), 2**63 - 1, size=200_000, dtype=np.int64))
    index = FidIndex(compiled=compiled)
    for start in range(0, len(keys), 10_000):
        part = keys[start : start + 10_000]
        index.insert(part, np.arange(start, start + len(part)))
    assert (index.find(keys) == np.arange(len(keys))).all()
    index.remove(keys[::2])
    found = index.find(keys)
    assert (found[::2] == -1).all() and (found[1::2] == np.arange(1, len(keys), 2)).all()
    # Tombstones are reused and dropped on rehash: the table does not grow
    # without bound under churn.
    capacity = len(index._keys)
    for _ in range(5):
        index.insert(keys[::2], np.arange(0, len(keys), 2))
        index.remove(keys[::2])
    assert len(index._keys) == capacity


def test_both_ways_put_keys_at_the_same_positions():
    """Placed one at a time (no clash within a round), both take each key's first free position."""
    rng = np.random.default_rng(2)
    keys = np.unique(rng.integers(-(2**63), 2**63 - 1, size=3000, dtype=np.int64))
    compiled, rounds = FidIndex(capacity=8192), FidIndex(capacity=8192, compiled=False)
    for index in (compiled, rounds):
        for row in range(len(keys)):
            index.insert(keys[row : row + 1], np.array([row]))
        index.remove(keys[::3])  # tombstones, taken again by the keys below
        for row in range(0, len(keys), 3):
            index.insert(keys[row : row + 1], np.array([row]))
    assert np.array_equal(compiled._entries, rounds._entries)
