"""A store with a memory budget: RocksDB holds the table, memory the hot and changed rows."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headrace.embedding_store import (
    SGD,
    CorruptStoreError,
    EmbeddingStore,
    MemoryBudgetError,
    SlotConfig,
    StoreError,
)
from headrace.embedding_store.cache import choose_victims
from headrace.embedding_store.table import RowTable

SLOTS = [
    SlotConfig(name="user", dim=4, expire_after=100.0),
    SlotConfig(name="item", dim=4, optimizer=SGD(lr=1.0)),
]
N = 5000
# The larger of the two tables' row sizes in memory (asserted below).
ROW_BYTES = 109


def _ids(n: int = N, offset: int = 0) -> np.ndarray:
    return np.arange(offset, offset + n, dtype=np.int64) * 7919


def _build(path: Path, t: float = 0.0) -> dict[str, np.ndarray]:
    """A store of N rows per slot, trained once and checkpointed; returns its vectors."""
    with EmbeddingStore.open(path, SLOTS, seed=1) as store:
        assert max(t.row_bytes for t in store._tables) == ROW_BYTES
        hit = store.lookup_slots({"user": _ids(), "item": _ids()}, t)
        store.apply_gradients(hit, np.ones_like(hit.values))
        store.checkpoint({"step": b"1"})
        return {s.name: store.lookup(s.name, _ids()) for s in SLOTS}


def test_open_reads_no_rows_and_lookups_read_them_from_disk(tmp_path):
    vectors = _build(tmp_path)
    with EmbeddingStore.open(tmp_path, SLOTS, memory_budget=1000 * ROW_BYTES) as store:
        stats = store.stats()
        assert stats.memory_rows == 0
        assert stats.rows == {"user": N, "item": N}
        assert stats.disk_rows == 2 * N
        assert store.extra == {"step": b"1"}
        for slot in SLOTS:
            np.testing.assert_array_equal(store.lookup(slot.name, _ids()), vectors[slot.name])
        # Training lookups keep what they read, within the budget.
        hit = store.lookup_for_training("item", _ids(800), 1.0)
        np.testing.assert_array_equal(hit.values, vectors["item"][:800])
        assert store.stats().memory_rows == 800
        assert store.stats().cache_misses == 800


@pytest.mark.parametrize("prefetch", [False, True], ids=["read-on-lookup", "read-ahead"])
def test_training_under_a_budget_matches_training_in_memory(tmp_path, prefetch):
    _build(tmp_path / "a")
    _build(tmp_path / "b")
    rng = np.random.default_rng(0)
    tiered = EmbeddingStore.open(tmp_path / "a", SLOTS, memory_budget=600 * ROW_BYTES)
    memory = EmbeddingStore.open(tmp_path / "b", SLOTS)
    with tiered, memory:
        batches = [_ids()[rng.zipf(1.2, 300) % N] for _ in range(31)]
        if prefetch:
            tiered.prefetch({"user": batches[0]})
        for step, ids in enumerate(batches[:-1]):
            if prefetch:
                # Read ahead for the next step, across checkpoints and evictions.
                tiered.prefetch({"user": batches[step + 1]})
            for store in (tiered, memory):
                hit = store.lookup_for_training("user", ids, float(step))
                store.apply_gradients(hit, np.full_like(hit.values, 0.5))
                if store.checkpoint_due or step % 10 == 9:
                    store.checkpoint()
        np.testing.assert_array_equal(tiered.lookup("user", _ids()), memory.lookup("user", _ids()))
        stats = tiered.stats()
        assert stats.evictions > 0
        assert stats.memory_rows * ROW_BYTES <= 600 * ROW_BYTES
        assert stats.cache_hits > 0 and stats.cache_misses > 0


def test_a_read_ahead_never_hands_out_a_row_that_a_checkpoint_rewrote(tmp_path):
    """A row read ahead, then changed, checkpointed and evicted before its lookup, is read again."""
    _build(tmp_path / "a")
    _build(tmp_path / "b")
    user, item, more = _ids(50), _ids(50, 100), _ids(160, 200)
    # Room for the 160 new item rows once the 50 clean item rows and 10
    # clean user rows (of 109 and 93 bytes) have left memory.
    tiered = EmbeddingStore.open(tmp_path / "a", SLOTS, memory_budget=20_330)
    memory = EmbeddingStore.open(tmp_path / "b", SLOTS)
    with tiered, memory:
        tiered.prefetch({"item": item})
        # Read while only RocksDB holds the user rows, for the lookup after next.
        tiered.prefetch({"user": user})
        tiered._prefetched[-1]._reads[id(tiered._where["user"][0])][1].result()
        for store in (tiered, memory):
            hit = store.lookup_slots({"user": user, "item": item}, 1.0)
            store.apply_gradients(hit, np.full_like(hit.values, 0.25))
            store.checkpoint()
        misses = tiered.stats().cache_misses
        # The item rows need room: the clean item rows leave memory, then ten user rows.
        lookups = [
            store.lookup_slots({"item": more, "user": user}, 2.0) for store in (tiered, memory)
        ]
        assert tiered.stats().cache_misses - misses == len(more) + 10  # user rows read again
        np.testing.assert_array_equal(lookups[0].values, lookups[1].values)
        np.testing.assert_array_equal(tiered.lookup("user", user), memory.lookup("user", user))


def test_a_store_closes_with_a_read_ahead_pending(tmp_path):
    vectors = _build(tmp_path)
    with EmbeddingStore.open(tmp_path, SLOTS, memory_budget=2000 * ROW_BYTES) as store:
        store.prefetch({"user": _ids(800), "item": _ids(800)})
        hit = store.lookup_slots({"user": _ids(800), "item": _ids(800)}, 1.0)
        np.testing.assert_array_equal(hit.values[:800], vectors["user"][:800])
        np.testing.assert_array_equal(hit.values[800:], vectors["item"][:800])
        store.prefetch({"user": _ids(N)})
    with EmbeddingStore.open(tmp_path, SLOTS) as store:  # an unbudgeted store ignores it
        store.prefetch({"user": _ids(10)})
        assert store.stats().memory_rows == 2 * N


def test_a_lookup_larger_than_the_budget_fails_and_changes_nothing(tmp_path):
    _build(tmp_path)
    with EmbeddingStore.open(tmp_path, SLOTS, memory_budget=100 * ROW_BYTES) as store:
        before = store.stats()
        with pytest.raises(MemoryBudgetError, match=r"Raise store\.memory_budget"):
            store.lookup_slots({"user": _ids(60), "item": _ids(60)}, 5.0)
        after = store.stats()
        assert (after.rows, after.admitted, after.filtered) == (
            before.rows,
            before.admitted,
            before.filtered,
        )
        assert store.drain_changes()["user"].fids.size == 0
        # Changed rows are pinned: without a checkpoint the next lookup cannot fit.
        store.lookup_for_training("user", _ids(60), 5.0)
        assert store.checkpoint_due
        with pytest.raises(MemoryBudgetError, match="checkpoints more often"):
            store.lookup_for_training("item", _ids(60), 5.0)
        store.checkpoint()
        store.lookup_for_training("item", _ids(60), 5.0)


def test_expiry_sweeps_rows_on_disk_without_loading_them(tmp_path):
    _build(tmp_path, t=0.0)
    with EmbeddingStore.open(tmp_path, SLOTS, memory_budget=1000 * ROW_BYTES) as store:
        kept = _ids(10)
        store.lookup_for_training("user", kept, 150.0)  # seen again: survives
        assert store.expire(120.0) == {"user": N - 10, "item": 0}
        assert store.stats().memory_rows == 10
        assert store.stats().rows["user"] == 10
        # Removed ids are not read back from disk before the checkpoint deletes them.
        assert not store.lookup("user", _ids()[10:20]).any()
        changes = store.drain_changes()["user"]
        assert len(changes.removed) == N - 10
        store.checkpoint()
    with EmbeddingStore.open(tmp_path, SLOTS, memory_budget=1000 * ROW_BYTES) as store:
        assert store.stats().rows["user"] == 10
        assert store.expire(240.0) == {"user": 0, "item": 0}
        assert store.expire(251.0) == {"user": 10, "item": 0}
    with EmbeddingStore.open(tmp_path, SLOTS) as store:  # all in memory: the same rows
        assert store.stats().rows["user"] == 10


def test_changes_of_rows_that_left_memory_are_drained_from_disk(tmp_path):
    _build(tmp_path)
    with EmbeddingStore.open(tmp_path, SLOTS, memory_budget=400 * ROW_BYTES) as store:
        store.drain_changes()
        hit = store.lookup_for_training("item", _ids(100), 1.0)
        store.apply_gradients(hit, np.ones_like(hit.values))
        expected = store.lookup("item", _ids(100))
        store.checkpoint()
        store.lookup_for_training("item", _ids(460, offset=1000), 2.0)  # evicts the first 100
        assert store.stats().evictions >= 100
        assert not store._tables[1].find(0, _ids(100)).max() >= 0
        changes = store.drain_changes()["item"]
        order = np.argsort(changes.fids)
        np.testing.assert_array_equal(changes.fids[order][:100], _ids(100))
        np.testing.assert_array_equal(changes.vectors[order][:100], expected)
        # The other rows were only read (and stamped): not changes to publish.
        assert len(changes.fids) == 100


def test_export_merges_disk_and_memory(tmp_path):
    _build(tmp_path)
    with EmbeddingStore.open(tmp_path, SLOTS, memory_budget=300 * ROW_BYTES) as store:
        hit = store.lookup_for_training("item", _ids(50), 1.0)
        store.apply_gradients(hit, np.ones_like(hit.values))
        fids, vectors = store.export("item")
        assert sorted(fids.tolist()) == sorted(_ids().tolist())
        by_fid = dict(zip(fids.tolist(), vectors, strict=True))
        np.testing.assert_array_equal(by_fid[int(_ids(1)[0])], hit.values[0] - 1.0)


def test_an_unreadable_sst_file_gives_a_clear_error(tmp_path):
    _build(tmp_path)
    with EmbeddingStore.open(tmp_path, SLOTS) as store:
        store._db.flush()  # the rows into an SST file
    assert list(tmp_path.glob("*.sst"))
    for sst in tmp_path.glob("*.sst"):
        data = bytearray(sst.read_bytes())
        data[100 : len(data) * 3 // 4] = bytes(len(data) * 3 // 4 - 100)  # the data blocks
        sst.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="damaged or unreadable"):
        store = EmbeddingStore.open(tmp_path, SLOTS, memory_budget=1000 * ROW_BYTES)
        try:
            store.lookup("user", _ids())
            store.lookup("item", _ids())
        finally:
            store.close()


def test_a_budget_must_be_positive(tmp_path):
    with pytest.raises(StoreError, match="memory_budget"):
        EmbeddingStore.open(tmp_path, SLOTS, memory_budget=0)


@pytest.mark.parametrize("policy", ["lfu", "lru"])
def test_the_victims_are_the_candidates_the_policy_ranks_first(policy):
    table = RowTable(SLOTS[0], ["user"], [0], seed=0)
    rng = np.random.default_rng(5)
    rows = table.create(0, np.arange(3000, dtype=np.int64), 0.0)
    # Few distinct counts and times, so that ties are common.
    table.freq[rows] = rng.integers(0, 4, len(rows))
    table.used[rows] = rng.integers(0, 6, len(rows))
    candidates = np.zeros(len(table.live), dtype=bool)
    candidates[rows] = rng.random(len(rows)) < 0.7
    score = table.used[:].astype(np.int64)
    if policy == "lfu":
        score += table.freq.astype(np.int64) << 32
    for n in (0, 1, 17, 1000, int(candidates.sum()), 5000):
        victims = choose_victims(table, candidates, n, policy)
        assert len(victims) == min(n, candidates.sum()) == len(np.unique(victims))
        assert candidates[victims].all()
        spared = np.setdiff1d(np.flatnonzero(candidates), victims)
        if len(victims) and len(spared):
            assert score[victims].max() <= score[spared].min()


def test_the_budget_counts_rocksdb_and_working_memory_besides_rows(tmp_path):
    """Past its first MiB, what else the store holds takes room from rows."""
    ids = np.arange(200_000, dtype=np.int64)
    with EmbeddingStore.open(tmp_path, SLOTS[:1]) as store:
        store.lookup_for_training("user", ids, 0.0)
        store.checkpoint()
    budget = 4 << 20
    with EmbeddingStore.open(tmp_path, SLOTS[:1], memory_budget=budget) as store:
        row_bytes = store._tables[0].row_bytes
        for step in range(6):
            store.lookup_for_training("user", ids[step * 20_000 : (step + 1) * 20_000], 1.0)
            assert store._resident_bytes() <= budget
            if store.checkpoint_due:
                store.checkpoint()
                # Its file's filter and index grow RocksDB's memory: rows make room.
                assert store._resident_bytes() <= budget
        # A lookup of 20k ids keeps a third of the budget as working memory;
        # RocksDB's bloom filter of 200k keys holds ~250 KB.
        assert store._overhead_bytes() > budget // 3 + 200_000 - (1 << 20)
        assert store.stats().memory_rows * row_bytes <= budget - store._overhead_bytes()


_NUMBA_PROBE = """
import sys
import numpy as np
from headrace.embedding_store import EmbeddingStore, SlotConfig

budget = {budget}
slots = [SlotConfig(name="a", dim=4, expire_after=50.0), SlotConfig(name="b", dim=4)]
with EmbeddingStore.open(sys.argv[1], slots, memory_budget=budget) as store:
    rng = np.random.default_rng(0)
    for t in range(30):
        ids = {{"a": rng.integers(0, 20_000, 3000), "b": rng.integers(0, 500, 90)}}
        hit = store.lookup_slots(ids, t)
        store.apply_gradients(hit, np.ones_like(hit.values))
        if store.checkpoint_due or t % 10 == 9:
            store.checkpoint()
    store.expire(60.0)
    store.lookup("a", np.arange(100))
print("numba" in sys.modules)
"""


@pytest.mark.parametrize(("budget", "numba"), [(3_000_000, False), (None, True)])
def test_a_budgeted_store_keeps_numba_out_of_its_process(tmp_path, budget, numba):
    """numba's LLVM costs a process ~150 MB of RSS, a third of the bench's budget.

    The in-memory store (no budget) compiles its training path, so it does import it.
    """
    code = _NUMBA_PROBE.format(budget=budget)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(numba)
