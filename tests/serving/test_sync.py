"""Parameter sync from a real store to serving state, over the directory transport."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from headrace.embedding_store import EmbeddingStore, SlotConfig
from headrace.serving.params import ParameterState
from headrace.serving.publisher import ParameterPublisher
from headrace.serving.sync import SyncLoop
from headrace.serving.transport import DirectoryReader, DirectoryWriter, open_reader, open_writer

SLOTS = [
    SlotConfig(name="user", dim=4, expire_after=100.0),
    SlotConfig(name="item", dim=3, occurrence_threshold=2),
]
IDS = np.arange(1, 400, dtype=np.int64)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Worker:
    """A serving worker minus HTTP: its sync loop, stepped by the test."""

    def __init__(self, reader) -> None:
        # The "model" is the dense blob itself: enough to see which one applies.
        self.state = ParameterState(lambda meta, dense: dense)
        self.registry = CollectorRegistry()
        self.loop = SyncLoop(reader, self.state, registry=self.registry)
        self.applied: list[tuple[str, int]] = []
        apply = self.state.apply

        def recording_apply(update):
            apply(update)
            self.applied.append((update.kind, update.version))

        self.state.apply = recording_apply

    def sync(self) -> None:
        self.loop.step(timeout_s=0.2)

    @property
    def rejected(self) -> dict[str, float]:
        return {
            s.labels["reason"]: s.value
            for metric in self.registry.collect()
            if metric.name == "headrace_serving_rejected_updates"
            for s in metric.samples
            if s.name.endswith("_total")
        }

    def vectors(self, slot: str, fids: np.ndarray) -> np.ndarray:
        with self.state.read() as view:
            return view.lookup(slot, fids)


@pytest.fixture
def trainer(tmp_path):
    store = EmbeddingStore.open(tmp_path / "store", SLOTS)
    clock = FakeClock()
    dense = {"blob": b"dense-0"}
    publisher = ParameterPublisher(
        store,
        DirectoryWriter(tmp_path / "params"),
        lambda: dense["blob"],
        {"model": "test"},
        sync_interval=1.0,
        dense_sync_interval=5.0,
        snapshot_interval=60.0,
        clock=clock,
    )
    yield store, publisher, clock, dense
    store.close()


def _step(store, slot, fids, t, scale=0.1):
    hit = store.lookup_for_training(slot, fids, event_time=t)
    store.apply_gradients(hit, np.full(hit.values.shape, scale, np.float32))


def _assert_in_sync(store, worker):
    for cfg in SLOTS:
        np.testing.assert_array_equal(worker.vectors(cfg.name, IDS), store.lookup(cfg.name, IDS))


def test_deltas_keep_a_worker_in_sync_and_expiry_reaches_it(trainer, tmp_path):
    store, publisher, clock, _ = trainer
    worker = Worker(DirectoryReader(tmp_path / "params"))
    _step(store, "user", IDS[:100], 0.0)
    assert publisher(0.0).kind == "snapshot"  # the first call bootstraps
    worker.sync()
    assert worker.state.version == 1
    _assert_in_sync(store, worker)

    for t in range(1, 8):
        _step(store, "user", IDS[t * 10 : t * 10 + 50], float(t * 20))
        _step(store, "item", np.repeat(IDS[t * 5 : t * 5 + 20], 2), float(t * 20))
        clock.now += 0.4
        publisher(float(t * 20))  # publishes only once a second has passed
        worker.sync()
    assert worker.state.version == publisher.version > 2
    clock.now += 1.0
    publisher(140.0)
    worker.sync()
    _assert_in_sync(store, worker)

    removed = store.expire(250.0)["user"]
    assert removed > 0
    clock.now += 1.0
    update = publisher(250.0)
    assert len(update.slots["user"].removed) == removed
    worker.sync()
    _assert_in_sync(store, worker)
    assert worker.state.rows()["user"] == store.stats().rows["user"]
    assert worker.rejected == {}


def test_dense_weights_follow_their_interval(trainer, tmp_path):
    _, publisher, clock, dense = trainer
    worker = Worker(DirectoryReader(tmp_path / "params"))
    publisher(0.0)
    dense["blob"] = b"dense-1"
    clock.now += 1.0
    assert publisher(1.0).dense is None
    clock.now += 5.0
    assert publisher(2.0).dense == b"dense-1"
    worker.sync()
    with worker.state.read() as view:
        assert view.model == b"dense-1"


def test_a_late_worker_bootstraps_from_the_newest_snapshot(trainer, tmp_path):
    store, publisher, clock, _ = trainer
    for t in range(200):
        _step(store, "user", IDS[t % 50 : t % 50 + 30], float(t))
        clock.now += 1.0
        publisher(float(t))
    assert publisher._snapshots._value.get() >= 3
    assert DirectoryWriter(tmp_path / "params").latest_version() == publisher.version
    late = Worker(DirectoryReader(tmp_path / "params"))
    late.sync()
    assert late.state.version == publisher.version
    _assert_in_sync(store, late)
    # Files before the previous snapshot are pruned.
    names = sorted(p.name for p in (tmp_path / "params").iterdir())
    assert sum(n.endswith(".snapshot") for n in names) == 2
    assert names[0].endswith(".snapshot")


def test_a_backlog_larger_than_max_delta_rows_becomes_a_snapshot(trainer):
    store, publisher, clock, _ = trainer
    publisher(0.0)
    publisher.max_delta_rows = 50
    _step(store, "user", IDS[:80], 1.0)
    clock.now += 1.0
    assert publisher(1.0).kind == "snapshot"
    assert store.pending_changes() == 0


def test_changes_the_store_let_go_become_a_snapshot_that_serving_follows(trainer, tmp_path):
    store, publisher, clock, _ = trainer
    worker = Worker(DirectoryReader(tmp_path / "params"))
    publisher(0.0)
    # Many ids expire between two publishes (as when no publisher drains for
    # long): the store lets its change log go and the next update is whole.
    store._where["user"][0].touched.lose_after = 2000  # not a million: the test stays small
    for day in range(1, 6):
        _step(store, "user", np.arange(1000, 2000, dtype=np.int64) * day, day * 1000.0)
        store.expire(day * 1000.0 + 500.0)
    _step(store, "user", IDS[:100], 6000.0)
    assert store.changes_lost()
    clock.now += 1.0
    assert publisher(6000.0).kind == "snapshot"
    assert not store.changes_lost()
    worker.sync()
    _assert_in_sync(store, worker)


def test_a_damaged_update_is_rejected_and_the_last_good_version_kept(trainer, tmp_path):
    store, publisher, clock, _ = trainer
    worker = Worker(DirectoryReader(tmp_path / "params"))
    _step(store, "user", IDS[:50], 0.0)
    publisher(0.0)
    worker.sync()
    good = worker.vectors("user", IDS)

    _step(store, "user", IDS[:50], 1.0)
    clock.now += 1.0
    update = publisher(1.0)
    path = tmp_path / "params" / f"{update.version:012d}.delta"
    path.write_bytes(path.read_bytes()[:-100])  # truncated on disk
    worker.sync()
    assert worker.rejected == {"checksum": 1.0}
    assert worker.state.version == update.version - 1
    np.testing.assert_array_equal(worker.vectors("user", IDS), good)

    # The next delta does not follow the version the worker has: it waits
    # for the next snapshot, and then catches up.
    clock.now += 1.0
    publisher(2.0)
    worker.sync()
    assert worker.rejected == {"checksum": 1.0, "gap": 1.0}
    clock.now += 60.0
    publisher(3.0)
    worker.sync()
    assert worker.state.version == publisher.version
    _assert_in_sync(store, worker)


def test_urls_pick_the_transport(tmp_path):
    assert isinstance(open_writer(f"dir://{tmp_path}/p"), DirectoryWriter)
    assert isinstance(open_reader(f"dir://{tmp_path}/p"), DirectoryReader)
    with pytest.raises(ValueError, match="neither dir://PATH nor kafka://HOST:PORT/TOPIC"):
        open_writer("http://example/p")


def test_a_new_sample_rate_goes_out_at_once_in_a_snapshot(tmp_path):
    store = EmbeddingStore.open(tmp_path / "store", SLOTS)
    meta = {"model": "test", "sample_rate": 1.0}
    clock = FakeClock()
    publisher = ParameterPublisher(
        store,
        DirectoryWriter(tmp_path / "params"),
        lambda: b"dense",
        lambda: dict(meta),
        snapshot_interval=600.0,
        clock=clock,
    )
    try:
        assert publisher(0.0).kind == "snapshot"
        clock.now += 1.0
        assert publisher(1.0).kind == "delta"
        meta["sample_rate"] = 0.1  # the stream's negatives are now downsampled
        clock.now += 0.1  # well before the next delta, let alone snapshot
        update = publisher(1.1)
        assert update.kind == "snapshot" and update.meta["sample_rate"] == 0.1
    finally:
        store.close()
