"""Frequency filter and expiry at their boundaries, and the bounded counter."""

import numpy as np
import pytest

from headrace.embedding_store import FilterConfig, SlotConfig
from headrace.embedding_store.admission import CountingFilter

from .conftest import fids


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_a_row_appears_at_exactly_the_threshold(open_store, threshold):
    store = open_store([SlotConfig(name="user", dim=4, occurrence_threshold=threshold)])
    for seen in range(1, threshold):
        hit = store.lookup_for_training("user", fids(42), event_time=float(seen))
        assert hit.rows.tolist() == [-1], f"admitted after {seen} < {threshold} sightings"
        assert not hit.values.any()
        assert not store.lookup("user", fids(42)).any()
    hit = store.lookup_for_training("user", fids(42), event_time=10.0)
    assert hit.rows[0] >= 0
    assert hit.values.any()
    stats = store.stats()
    assert stats.rows == {"user": 1}
    assert stats.admitted == {"user": 1}
    assert stats.filtered == {"user": threshold - 1}


def test_occurrences_within_one_batch_count(open_store):
    store = open_store([SlotConfig(name="user", dim=4, occurrence_threshold=3)])
    hit = store.lookup_for_training("user", fids(7, 7, 8, 7, 8), event_time=0.0)
    # 7 is seen three times and admitted in this lookup; 8 twice, not yet.
    assert (hit.rows[[0, 1, 3]] >= 0).all() and (hit.rows[[2, 4]] == -1).all()
    assert store.lookup_for_training("user", fids(8), event_time=0.0).rows[0] >= 0


def test_gradients_of_filtered_ids_are_dropped(open_store):
    store = open_store([SlotConfig(name="user", dim=2, occurrence_threshold=2)])
    store.lookup_for_training("user", fids(1), event_time=0.0)
    hit = store.lookup_for_training("user", fids(1, 2), event_time=0.0)
    before = store.lookup("user", fids(1, 2))
    store.apply_gradients(hit, np.ones((2, 2), dtype=np.float32))
    after = store.lookup("user", fids(1, 2))
    assert (after[0] != before[0]).all()
    assert (after[1] == 0).all() and store.stats().rows == {"user": 1}


def test_expiry_at_exactly_expire_after(open_store):
    store = open_store([SlotConfig(name="item", dim=2, expire_after=100.0)])
    store.lookup_for_training("item", fids(5), event_time=1000.0)
    assert store.expire(1099.999) == {"item": 0}
    assert store.lookup("item", fids(5)).any()
    assert store.expire(1100.0) == {"item": 1}
    assert not store.lookup("item", fids(5)).any()
    assert store.stats().expired == {"item": 1}


def test_a_training_lookup_refreshes_expiry_and_a_plain_lookup_does_not(open_store):
    store = open_store([SlotConfig(name="item", dim=2, expire_after=10.0)])
    store.lookup_for_training("item", fids(1, 2), event_time=0.0)
    store.lookup_for_training("item", fids(1), event_time=8.0)
    store.lookup("item", fids(2))
    assert store.expire(12.0) == {"item": 1}
    assert store.lookup("item", fids(1)).any() and not store.lookup("item", fids(2)).any()


def test_per_fid_event_times_keep_the_latest(open_store):
    store = open_store([SlotConfig(name="item", dim=2, expire_after=10.0)])
    store.lookup_for_training("item", fids(1, 1, 2), event_time=np.array([5.0, 9.0, 1.0]))
    assert store.expire(18.0) == {"item": 1}  # 2 (seen at 1.0) goes, 1 (seen at 9.0) stays
    assert store.lookup("item", fids(1)).any()


def test_an_expired_id_requalifies_through_the_filter(open_store):
    store = open_store([SlotConfig(name="item", dim=2, occurrence_threshold=2, expire_after=5.0)])
    store.lookup_for_training("item", fids(9, 9), event_time=0.0)
    store.expire(100.0)
    assert store.lookup_for_training("item", fids(9), event_time=101.0).rows[0] == -1
    assert store.lookup_for_training("item", fids(9), event_time=101.0).rows[0] >= 0


def test_expiry_removes_rows_from_rocksdb(open_store):
    slots = [SlotConfig(name="item", dim=2, expire_after=5.0)]
    store = open_store(slots)
    store.lookup_for_training("item", fids(1, 2), event_time=0.0)
    store.checkpoint()
    store.lookup_for_training("item", fids(2), event_time=4.0)
    store.expire(6.0)
    store.checkpoint()
    store.close()
    reopened = open_store(slots)
    assert reopened.stats().rows == {"item": 1}
    assert not reopened.lookup("item", fids(1)).any() and reopened.lookup("item", fids(2)).any()


def test_an_expired_and_readmitted_row_starts_fresh_from_its_seed(open_store):
    store = open_store([SlotConfig(name="item", dim=3, expire_after=1.0)])
    first = store.lookup_for_training("item", fids(4), event_time=0.0)
    store.apply_gradients(first, np.ones((1, 3), dtype=np.float32))
    store.expire(2.0)
    again = store.lookup_for_training("item", fids(4), event_time=3.0)
    np.testing.assert_array_equal(again.values, first.values)


def test_initial_values_do_not_depend_on_arrival_order(tmp_path):
    from headrace.embedding_store import EmbeddingStore

    ids = np.arange(1000, 1100, dtype=np.int64)
    slot = [SlotConfig(name="user", dim=8, occurrence_threshold=2)]
    values = []
    for run, order in enumerate([ids, ids[::-1], np.random.default_rng(1).permutation(ids)]):
        with EmbeddingStore.open(tmp_path / str(run), slot, seed=11) as store:
            for chunk in np.array_split(np.repeat(order, 2), 7):
                store.lookup_for_training("user", chunk, event_time=0.0)
            values.append(store.lookup("user", ids))
    assert values[0].any()
    np.testing.assert_array_equal(values[0], values[1])
    np.testing.assert_array_equal(values[0], values[2])
    with EmbeddingStore.open(tmp_path / "other-seed", slot, seed=12) as store:
        store.lookup_for_training("user", np.repeat(ids, 2), event_time=0.0)
        assert not np.array_equal(store.lookup("user", ids), values[0])


def test_probabilistic_admission_rate_and_determinism(tmp_path):
    from headrace.embedding_store import EmbeddingStore

    slot = SlotConfig(name="user", dim=2, occurrence_threshold=10, admission="probabilistic")
    ids = np.arange(20_000, dtype=np.int64)
    admitted = []
    for run in range(2):
        with EmbeddingStore.open(tmp_path / str(run), [slot], seed=3) as store:
            admitted.append(store.lookup_for_training("user", ids, event_time=0.0).rows >= 0)
    p = slot.admit_probability
    assert p == pytest.approx(1 - 0.05**0.1)
    assert admitted[0].mean() == pytest.approx(p, abs=0.015)
    np.testing.assert_array_equal(admitted[0], admitted[1])


def test_counting_filter_memory_is_bounded_and_eviction_never_admits_early():
    config = FilterConfig(capacity=4096, bucket_size=8)
    counter = CountingFilter(config)
    nbytes = counter.nbytes
    rng = np.random.default_rng(5)
    early = 0
    for _ in range(50):
        keys = np.unique(rng.integers(0, 2**63, size=5_000).astype(np.uint64))
        totals = counter.add(keys, np.ones(len(keys), dtype=np.int64))
        early += int(np.count_nonzero(totals >= 2))  # every key here is new: true count 1
    assert counter.nbytes == nbytes == 3 * config.capacity
    # Only a shared (bucket, fingerprint) pair can count a new key twice:
    # about bucket_size / 65535 per key.
    assert early / (50 * 5_000) < 8 / 65535 * 3


def test_counting_filter_counts_exactly_without_pressure():
    counter = CountingFilter(FilterConfig(capacity=1 << 16))
    keys = np.arange(1, 2001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for step in range(1, 4):
        assert (counter.add(keys, np.full(len(keys), 2)) == 2 * step).all()
    assert (counter.add(keys[:1], np.array([1000])) == 255).all()  # saturates
