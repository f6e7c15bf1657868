"""Checkpoints, reopening, change tracking and bad input."""

import numpy as np
import pytest
import torch

from headrace.embedding_store import (
    FTRL,
    SGD,
    CorruptStoreError,
    EmbeddingStore,
    FilterConfig,
    SlotConfig,
    StoreError,
)

from .conftest import fids

SLOTS = [
    SlotConfig(name="user", dim=4, occurrence_threshold=2, expire_after=50.0),
    SlotConfig(name="item", dim=3, optimizer=FTRL()),
]


def _train(store, slot, ids, t, scale=1.0):
    hit = store.lookup_for_training(slot, np.asarray(ids, dtype=np.int64), event_time=t)
    store.apply_gradients(hit, np.full(hit.values.shape, scale, dtype=np.float32))


def _state(store):
    """Everything a reopen must restore, per slot: rows keyed by fid."""
    out = {}
    for name, (table, local) in store._where.items():
        rows = table.live_rows(local)
        order = np.argsort(table.row_fid[rows])
        rows = rows[order]
        out[name] = (
            table.row_fid[rows].copy(),
            table.weights[rows].copy(),
            table.state[rows].copy(),
            table.last_seen[rows].copy(),
        )
    return out


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            np.testing.assert_array_equal(x, y)


def test_reopen_restores_rows_optimizer_state_counters_and_extra(open_store):
    store = open_store(SLOTS, seed=5)
    _train(store, "user", [1, 1, 2, 3, 3], 10.0)  # 1 and 3 admitted, 2 counted once
    _train(store, "item", [7, 8, 9], 11.0)
    _train(store, "item", [7], 12.0, scale=-0.5)
    store.checkpoint({"dense": b"\x00\x01weights", "offsets": b'{"p0": 42}'})
    saved = _state(store)
    store.close()

    reopened = open_store(SLOTS)
    _assert_same_state(saved, _state(reopened))
    assert reopened.seed == 5
    assert reopened.extra == {"dense": b"\x00\x01weights", "offsets": b'{"p0": 42}'}
    # The filter's count of 2 survived: one more sighting admits it.
    assert reopened.lookup_for_training("user", fids(2), event_time=13.0).rows[0] >= 0


def test_changes_after_the_last_checkpoint_are_not_restored(open_store):
    store = open_store(SLOTS)
    _train(store, "item", [1, 2], 1.0)
    store.checkpoint({"step": b"1"})
    saved = _state(store)
    _train(store, "item", [2, 3], 2.0)
    store.close()
    reopened = open_store(SLOTS)
    _assert_same_state(saved, _state(reopened))
    assert reopened.extra == {"step": b"1"}


def test_extra_is_replaced_and_none_keeps_it(open_store):
    store = open_store(SLOTS)
    store.checkpoint({"a": b"1", "b": b"2"})
    store.checkpoint({"b": b"3"})
    store.checkpoint()
    store.close()
    assert open_store(SLOTS).extra == {"b": b"3"}


def test_a_checkpoint_writes_only_what_changed(open_store):
    store = open_store(SLOTS)
    _train(store, "item", np.arange(100), 1.0)
    store.checkpoint()
    assert store._where["item"][0].dirty.size() == 0
    _train(store, "item", [5], 2.0)
    assert store._where["item"][0].dirty.size() == 1


def test_reopen_with_a_changed_learning_rate_and_a_new_slot(open_store):
    store = open_store(SLOTS)
    _train(store, "item", [1], 1.0)
    store.checkpoint()
    store.close()
    changed = [
        SLOTS[0].model_copy(update={"occurrence_threshold": 3}),
        SLOTS[1].model_copy(update={"optimizer": FTRL(alpha=0.5)}),
        SlotConfig(name="ctx", dim=2),
    ]
    reopened = open_store(changed)
    assert [s.name for s in reopened.slots] == ["user", "item", "ctx"]
    assert reopened.lookup("item", fids(1)).any()
    _train(reopened, "ctx", [4], 2.0)
    reopened.checkpoint()
    reopened.close()
    assert open_store(changed).lookup("ctx", fids(4)).any()


def test_drain_changes_reports_created_updated_and_removed(open_store):
    store = open_store([SlotConfig(name="item", dim=2, expire_after=10.0, optimizer=SGD())])
    _train(store, "item", [1, 2, 3], 0.0)
    changes = store.drain_changes()["item"]
    assert sorted(changes.fids.tolist()) == [1, 2, 3]
    np.testing.assert_array_equal(
        changes.vectors[np.argsort(changes.fids)], store.lookup("item", fids(1, 2, 3))
    )
    assert store.drain_changes()["item"].fids.size == 0
    _train(store, "item", [3], 5.0)
    store.expire(12.0)  # 1 and 2 go
    _train(store, "item", [2], 13.0)  # 2 comes back
    changes = store.drain_changes()["item"]
    assert sorted(changes.fids.tolist()) == [2, 3]
    assert changes.removed.tolist() == [1]
    assert store.pending_changes() == 0


def test_the_touched_set_keeps_every_change(open_store):
    store = open_store([SlotConfig(name="item", dim=2)])
    ids = np.arange(300_000, dtype=np.int64)
    for chunk in np.array_split(ids, 30):
        _train(store, "item", chunk, 0.0)
    assert store.pending_changes() == len(ids)
    assert np.array_equal(np.sort(store.drain_changes()["item"].fids), ids)


def test_changes_nobody_drains_are_let_go_once_they_outgrow_the_table(open_store):
    # A trainer without a publisher never drains: expiring ids day after day
    # must not grow the change log without bound.
    store = open_store([SlotConfig(name="item", dim=2, expire_after=10.0, optimizer=SGD())])
    table, _ = store._where["item"]
    table.touched.lose_after = 10_000  # instead of a million: the test stays small
    for day in range(20):
        _train(store, "item", np.arange(day * 1000, (day + 1) * 1000), day * 100.0)
        store.expire(day * 100.0 + 50.0)  # the day's 1000 ids go
    assert store.changes_lost()
    assert table.touched.nbytes <= table.touched.rows.nbytes  # the lists were let go
    with pytest.raises(StoreError, match="snapshot"):
        store.drain_changes()
    store.reset_changes()
    _train(store, "item", [7], 3000.0)
    assert not store.changes_lost()
    assert store.drain_changes()["item"].fids.tolist() == [7]


def test_torch_tensors_are_accepted(open_store):
    store = open_store(SLOTS)
    hit = store.lookup_for_training("item", torch.tensor([1, 2]), event_time=torch.tensor(3.0))
    store.apply_gradients(hit, torch.ones(2, 3))
    assert store.lookup("item", torch.tensor([1, 2])).shape == (2, 3)


def _after_lookup(grads):
    """A bad apply_gradients call, prepared by a valid training lookup."""

    def prepare(store):
        hit = store.lookup_for_training("item", fids(1), 0.0)
        return lambda: store.apply_gradients(hit, grads)

    return prepare


# Each case prepares the store and returns the bad call.
@pytest.mark.parametrize(
    ("prepare", "error", "message"),
    [
        (lambda s: lambda: s.lookup("user", np.array([1.0, 2.0])), TypeError, "int64"),
        (lambda s: lambda: s.lookup("user", np.array([[1]], dtype=np.int64)), ValueError, "1-d"),
        (lambda s: lambda: s.lookup("nope", fids(1)), KeyError, "unknown slot 'nope'"),
        (
            lambda s: lambda: s.lookup_for_training("item", fids(1), float("nan")),
            ValueError,
            "finite",
        ),
        (
            lambda s: lambda: s.lookup_for_training("item", fids(1, 2), np.zeros(3)),
            ValueError,
            r"shape \(2,\)",
        ),
        (_after_lookup(np.ones((1, 4), np.float32)), ValueError, "gradients have shape"),
        (_after_lookup(np.ones((1, 3), np.int64)), TypeError, "floating point"),
    ],
)
def test_bad_input_raises_a_clear_error_and_changes_nothing(open_store, prepare, error, message):
    store = open_store(SLOTS)
    _train(store, "item", [9], 0.0)
    call = prepare(store)
    before = _state(store)
    changes = store.pending_changes()
    with pytest.raises(error, match=message):
        call()
    _assert_same_state(before, _state(store))
    assert store.pending_changes() == changes


def test_a_lookup_from_before_an_expiry_sweep_is_refused(open_store):
    store = open_store(SLOTS)
    hit = store.lookup_for_training("item", fids(1), event_time=0.0)
    store.expire(1.0)
    with pytest.raises(StoreError, match="look the ids up again"):
        store.apply_gradients(hit, np.ones((1, 3), np.float32))


def test_open_errors_say_what_to_do(tmp_path):
    with pytest.raises(StoreError, match="pass slot configs"):
        EmbeddingStore.open(tmp_path / "new")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="not empty and holds no RocksDB"):
        EmbeddingStore.open(tmp_path / "junk", SLOTS)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        EmbeddingStore.open(tmp_path / "file", SLOTS)
    with pytest.raises(StoreError, match="unique"):
        EmbeddingStore.open(tmp_path / "dup", [SLOTS[0], SLOTS[0]])

    path = tmp_path / "store"
    with (
        EmbeddingStore.open(path, SLOTS, seed=1),
        pytest.raises(StoreError, match="open in another process"),
    ):
        EmbeddingStore.open(path, SLOTS)
    with pytest.raises(StoreError, match=r"dim 4 .* asks for dim 8"):
        EmbeddingStore.open(path, [SLOTS[0].model_copy(update={"dim": 8}), SLOTS[1]])
    with pytest.raises(StoreError, match=r"slots \['item'\] that the config does not name"):
        EmbeddingStore.open(path, SLOTS[:1])
    with pytest.raises(StoreError, match="seed 1, not 2"):
        EmbeddingStore.open(path, SLOTS, seed=2)
    with pytest.raises(StoreError, match="cannot change"):
        EmbeddingStore.open(path, SLOTS, filter=FilterConfig(capacity=1 << 12))
    EmbeddingStore.open(path, SLOTS).close()  # none of the failures broke it


def test_corrupt_data_is_reported_not_loaded(tmp_path):
    from rocksdict import Options, Rdict

    path = tmp_path / "store"
    with EmbeddingStore.open(path, SLOTS) as store:
        _train(store, "item", [1, 2], 0.0)
        store.checkpoint()
    db = Rdict(str(path), Options(raw_mode=True))
    key = next(iter(db.keys(from_key=b"r")))  # the first row key
    db[key] = b"short"
    db.close()
    with pytest.raises(CorruptStoreError, match=r"damaged: row value .* bytes"):
        EmbeddingStore.open(path, SLOTS)

    db = Rdict(str(path), Options(raw_mode=True))
    db[b"m"] = b"{not json"
    db.close()
    with pytest.raises(CorruptStoreError, match=r"metadata .* unreadable"):
        EmbeddingStore.open(path, SLOTS)

    (path / "CURRENT").write_text("MANIFEST-999999\n")
    with pytest.raises(CorruptStoreError, match="cannot open the RocksDB database"):
        EmbeddingStore.open(path, SLOTS)
