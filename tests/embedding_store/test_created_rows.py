"""A training lookup says which rows it created; a read fills ids without a row."""

from __future__ import annotations

import numpy as np
import pytest

from headrace.embedding_store import EmbeddingStore, SlotConfig


@pytest.mark.parametrize("threshold", [1, 2])  # the compiled lookup, and the general one
def test_a_lookup_marks_the_rows_it_created(tmp_path, threshold):
    slots = [SlotConfig(name="user", dim=3, occurrence_threshold=threshold)]
    with EmbeddingStore.open(tmp_path, slots) as store:
        for _ in range(threshold):
            store.lookup_for_training("user", np.array([1, 2]), 0.0)
        # 3 is new, twice in the lookup (both positions count as created, and
        # the filter admits it); 4 once (held back at threshold 2); 1 is known.
        hit = store.lookup_for_training("user", np.array([1, 3, 3, 2, 4]), 1.0)
        once = threshold == 1
        assert hit.created.tolist() == [False, True, True, False, once]
        assert (hit.rows[4] >= 0) == once
        again = store.lookup_for_training("user", np.array([4, 1, 3]), 2.0)
        assert again.created.tolist() == [not once, False, False]


def test_a_read_fills_ids_without_a_row(tmp_path):
    with EmbeddingStore.open(tmp_path, [SlotConfig(name="user", dim=2)]) as store:
        store.lookup_for_training("user", np.array([1]), 0.0)
        fill = np.array([5.0, -5.0], np.float32)
        values = store.lookup("user", np.array([1, 9]), fill)
        np.testing.assert_array_equal(values[1], fill)
        np.testing.assert_array_equal(values[0], store.lookup("user", np.array([1]))[0])
        assert not store.lookup("user", np.array([9])).any()
