"""A serving worker under a memory budget: rows in a local RocksDB replica, a cache in memory."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from headrace.embedding_store import EmbeddingStore, SlotConfig
from headrace.serving.params import ParameterState, RejectedUpdate
from headrace.serving.protocol import SlotRows, Update
from headrace.serving.publisher import ParameterPublisher
from headrace.serving.sync import SyncLoop
from headrace.serving.transport import DirectoryReader, DirectoryWriter

SLOTS = [
    SlotConfig(name="user", dim=4, expire_after=100.0),
    SlotConfig(name="item", dim=3),
]
IDS = np.arange(1, 2000, dtype=np.int64)
# Room for ~50 rows in all: far fewer than the worker serves.
BUDGET = 50 * (4 * 4 + 16 + 64)


def _lookup(state: ParameterState, slot: str, fids: np.ndarray) -> np.ndarray:
    with state.read() as view:
        return view.lookup(slot, fids)


def test_a_budgeted_worker_serves_what_an_in_memory_one_does(tmp_path):
    """The same published updates, one worker in memory and one over a replica."""
    store = EmbeddingStore.open(tmp_path / "store", SLOTS)
    clock = [1000.0]
    publisher = ParameterPublisher(
        store,
        DirectoryWriter(tmp_path / "params"),
        lambda: b"dense",
        {"model": "test"},
        sync_interval=1.0,
        dense_sync_interval=5.0,
        snapshot_interval=30.0,
        clock=lambda: clock[0],
    )
    memory = ParameterState(lambda meta, dense: dense)
    budgeted = ParameterState(
        lambda meta, dense: dense, memory_budget=BUDGET, replica_dir=tmp_path / "replicas"
    )
    registry = CollectorRegistry()
    loops = [
        SyncLoop(DirectoryReader(tmp_path / "params"), memory),
        SyncLoop(DirectoryReader(tmp_path / "params"), budgeted, registry=registry),
    ]
    rng = np.random.default_rng(0)
    snapshots = set()
    for t in range(60):
        for cfg in SLOTS:
            # A moving window of ids, so that some go unseen and expire.
            start = t * 40 % 1500
            fids = rng.choice(IDS[start : start + 500], 300)
            hit = store.lookup_for_training(cfg.name, fids, event_time=float(t * 5))
            store.apply_gradients(hit, rng.normal(size=hit.values.shape).astype(np.float32))
        if t % 20 == 19 and t > 20:
            assert store.expire(float(t * 5))["user"] > 0
        clock[0] += 1.0
        update = publisher(float(t * 5))
        if update is not None and update.kind == "snapshot":
            snapshots.add(update.version)
        for loop in loops:
            loop.step(timeout_s=0.2)
        assert budgeted.version == memory.version == publisher.version
        probe = rng.choice(IDS, 500)
        for cfg in SLOTS:
            np.testing.assert_array_equal(
                _lookup(budgeted, cfg.name, probe), _lookup(memory, cfg.name, probe)
            )
            np.testing.assert_array_equal(
                _lookup(budgeted, cfg.name, probe), store.lookup(cfg.name, probe)
            )
        assert budgeted.rows() == memory.rows()
        stats = budgeted.cache_stats()
        assert stats["memory_bytes"] <= BUDGET
    assert len(snapshots) >= 2  # replicas were replaced, not only changed
    assert stats["misses"] > 0 and stats["memory_rows"] < sum(budgeted.rows().values()) / 10
    # Totals run on across replicas, and reach Prometheus.
    assert registry.get_sample_value("headrace_serving_cache_misses_total") == stats["misses"]
    assert registry.get_sample_value("headrace_serving_memory_bytes") == stats["memory_bytes"]
    # Only the current replica is left on disk.
    assert len(list((tmp_path / "replicas").iterdir())) == 1
    budgeted.close()
    assert list((tmp_path / "replicas").iterdir()) == []
    in_memory = memory.cache_stats()
    assert in_memory["memory_rows"] == sum(memory.rows().values())
    assert in_memory["hits"] == in_memory["misses"] == 0
    store.close()


def _snapshot(version: int, user: SlotRows) -> Update:
    item = SlotRows.empty(3)
    return Update("snapshot", version, 0.0, 0.0, {"user": user, "item": item}, b"d", {})


def _rows(fids, value: float, dim: int = 4, removed=()) -> SlotRows:
    fids = np.asarray(fids, dtype=np.int64)
    vectors = np.full((len(fids), dim), value, dtype=np.float32)
    return SlotRows(fids, vectors, np.asarray(removed, dtype=np.int64))


def test_a_delta_applies_whole_or_not_at_all_over_the_replica(tmp_path):
    state = ParameterState(lambda meta, dense: dense, memory_budget=BUDGET, replica_dir=tmp_path)
    state.apply(_snapshot(1, _rows(np.arange(1, 500), 1.0)))
    before = _lookup(state, "user", np.arange(0, 600))  # fills the cache
    bad = {"user": _rows([1, 2], 9.0), "nope": _rows([3], 9.0)}
    with pytest.raises(RejectedUpdate, match="bad slot"):
        state.apply(Update("delta", 2, 0.0, 0.0, bad))
    np.testing.assert_array_equal(_lookup(state, "user", np.arange(0, 600)), before)
    assert state.version == 1

    # Removed and put again in one delta: the put wins, as in memory.
    delta = {"user": _rows([5, 600, 601], 2.0, removed=[5, 6, 700])}
    state.apply(Update("delta", 2, 0.0, 0.0, delta))
    got = _lookup(state, "user", np.array([5, 6, 7, 600, 601, 700]))
    np.testing.assert_array_equal(got[:, 0], [2.0, 0.0, 1.0, 2.0, 2.0, 0.0])
    assert state.rows()["user"] == 499 - 1 + 2
    state.close()


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="memory_budget"):
        ParameterState(lambda meta, dense: dense, memory_budget=0)
