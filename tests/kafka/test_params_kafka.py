"""Parameter sync over a real Kafka topic."""

import numpy as np
import pytest

from headrace.embedding_store import EmbeddingStore, SlotConfig
from headrace.serving.publisher import ParameterPublisher
from headrace.serving.transport import KafkaReader, KafkaWriter
from tests.serving.test_sync import FakeClock, Worker

pytestmark = pytest.mark.kafka


def test_workers_follow_the_trainer_through_kafka(kafka_bootstrap, topic_name, tmp_path):
    topic = topic_name("params")
    ids = np.arange(1, 3000, dtype=np.int64)
    clock = FakeClock()
    with EmbeddingStore.open(tmp_path / "store", [SlotConfig(name="user", dim=8)]) as store:
        # Small parts, so that updates span several messages.
        writer = KafkaWriter(kafka_bootstrap, topic, max_part_bytes=20_000)
        publisher = ParameterPublisher(
            store, writer, lambda: b"w" * 50_000, {"model": "t"}, snapshot_interval=30, clock=clock
        )
        early = Worker(KafkaReader(kafka_bootstrap, topic))
        snapshots = []
        for t in range(80):
            hit = store.lookup_for_training("user", ids[t * 20 : t * 20 + 600], float(t))
            store.apply_gradients(hit, np.full(hit.values.shape, 0.01, np.float32))
            clock.now += 1.0
            update = publisher(float(t))
            if update is not None and update.kind == "snapshot":
                snapshots.append(update.version)
            if t % 10 == 0:
                early.sync()
        assert writer.latest_version() == publisher.version
        writer.close()
        # A worker started now finds the newest snapshot near the end of the
        # topic and replays only what came after it.
        late = Worker(KafkaReader(kafka_bootstrap, topic, window=16))
        for worker in (early, late):
            for _ in range(20):
                worker.sync()
                if worker.state.version == publisher.version:
                    break
            assert worker.state.version == publisher.version
            with worker.state.read() as view:
                np.testing.assert_array_equal(view.lookup("user", ids), store.lookup("user", ids))
            assert worker.rejected == {}
        assert len(snapshots) >= 3
        assert late.applied[0] == ("snapshot", snapshots[-1])
