"""Kafka clients on librdkafka (confluent-kafka): the hot paths' reader and writer.

kafka-python builds and decodes every record in Python (its producer costs
~95 µs a message here, its consumer ~5-9 µs), which held the joiner to ~7k
events/s and the trainer's reader process to ~100k records/s. librdkafka
fetches, decodes, batches and sends on its own C threads, outside the GIL:
a Python call per message is left (~1 µs). The joiner reads and writes
with these; the trainer's reader process reads with :class:`RdKafkaSource`.

:class:`RdKafkaSource` keeps the source contract of
:mod:`headrace.stream` (``poll``, ``positions``, ``seek``, ``highwater``,
``lag``): positions are this process's own (the offset after the last
record returned), so librdkafka's read-ahead never reaches a commit.
:class:`RdKafkaSink` reports only failed deliveries (librdkafka's
``delivery.report.only.error``), so a delivered message costs no Python
callback; :meth:`RdKafkaSink.flush` raises if any failed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from headrace.kafka_client import KafkaClientSettings

from .batch import Positions, Record
from .kafka import BrokerUnavailable, DeliveryError, complaints, diagnose, split_key

__all__ = ["RdKafkaSink", "RdKafkaSource"]

log = logging.getLogger(__name__)

_QUERY_TIMEOUT_S = 10.0


def _check_reachable(
    client: Consumer | Producer,
    servers: str,
    topic: str,
    settings: KafkaClientSettings,
    timeout_s: float = _QUERY_TIMEOUT_S,
) -> int:
    """The partition count of ``topic``; raises when no broker answers or it is missing."""
    with complaints(log.name) as messages:
        try:
            metadata = client.list_topics(topic, timeout=timeout_s)
        except KafkaException:
            # librdkafka hands its log over when it is served; the cause is there.
            client.poll(0)
            raise BrokerUnavailable(diagnose(servers, settings, messages)) from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ValueError(f"topic {topic!r} does not exist at {servers}")
    return len(found.partitions)


class RdKafkaSource:
    """Reads raw records of some partitions of a topic, from saved positions.

    Parameters
    ----------
    servers
        ``HOST:PORT[,HOST:PORT...]``.
    topic
        The topic.
    partitions
        The partitions to read; ``None`` for all of them.
    client
        TLS and SASL settings.
    start
        Where a partition starts before :meth:`seek`: its first record or its end.
    timeout_s
        How long to wait for the broker's answer at start.
    reconnect_backoff_max_ms
        Longest wait between attempts to reach a broker that went away.

    Raises
    ------
    BrokerUnavailable
        When no broker answers.
    ValueError
        When the topic or a partition asked for does not exist.
    """

    exhausted = False  # a topic never ends

    def __init__(
        self,
        servers: str,
        topic: str,
        partitions: Iterable[int] | None = None,
        client: KafkaClientSettings | None = None,
        start: Literal["earliest", "latest"] = "earliest",
        timeout_s: float = _QUERY_TIMEOUT_S,
        reconnect_backoff_max_ms: int = 10_000,
    ) -> None:
        self.servers, self.topic = servers, topic
        client = client or KafkaClientSettings()
        self._consumer = Consumer(
            {
                "bootstrap.servers": servers,
                # Positions are ours (checkpointed with the caller's state);
                # the group id only satisfies librdkafka, nothing is committed.
                "group.id": f"headrace-{topic}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 64 << 20,
                "max.partition.fetch.bytes": 8 << 20,
                # A partition's queue full (queued.min.messages) pauses its
                # fetching this long; the default 1 s let the joiner drain the
                # queue and wait.
                "fetch.queue.backoff.ms": 20,
                "reconnect.backoff.max.ms": reconnect_backoff_max_ms,
                "logger": log,
                **client.librdkafka_options(),
            }
        )
        try:
            count = _check_reachable(self._consumer, servers, topic, client, timeout_s)
            wanted = sorted(set(range(count) if partitions is None else partitions))
            if missing := [p for p in wanted if not 0 <= p < count]:
                raise ValueError(
                    f"topic {topic!r} has partitions {list(range(count))}, not {missing}"
                )
            self._keys = {p: f"{topic}:{p}" for p in wanted}
            end = 0 if start == "earliest" else 1
            self._positions: Positions = {key: self._query(p)[end] for p, key in self._keys.items()}
            self._assign()
        except BaseException:
            self._consumer.close()
            raise

    def _query(self, partition: int) -> tuple[int, int]:
        """(low, high) offsets of ``partition`` as the broker says now."""
        low, high = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=_QUERY_TIMEOUT_S, cached=False
        )
        return low, high

    def _assign(self) -> None:
        self._consumer.assign(
            [TopicPartition(self.topic, p, self._positions[k]) for p, k in self._keys.items()]
        )

    def poll(self, max_records: int, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""
        # librdkafka's consume() waits for all ``max_records`` (or the
        # timeout): take what is queued now, and wait only when nothing is.
        consumer = self._consumer
        messages = consumer.consume(max_records, 0)
        if not messages:
            first = consumer.poll(timeout_s)
            if first is None:
                return []
            messages = [first, *consumer.consume(max_records - 1, 0)]
        keys, records = self._keys, []
        append = records.append
        for message in messages:
            if message.error() is not None:
                self._complain(message.error())
                continue
            append(Record(keys[message.partition()], message.offset(), message.value()))
        positions = self._positions
        for record in records:
            positions[record.partition] = record.offset + 1
        return records

    @staticmethod
    def _complain(error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        log.warning("Kafka consumer: %s (librdkafka retries by itself)", error.str())

    def positions(self) -> Positions:
        """The next offset of every partition read."""
        return dict(self._positions)

    def seek(self, positions: Positions) -> None:
        """Continue each partition read at its saved offset (other keys are ignored)."""
        known = {key: offset for key, offset in positions.items() if key in self._positions}
        self._positions |= known
        self._assign()

    def highwater(self, key: str) -> int | None:
        """Partition ``key``'s end as the last fetch gave it; None before one."""
        _, high = self._consumer.get_watermark_offsets(TopicPartition(*split_key(key)), cached=True)
        return None if high == OFFSET_INVALID or high < 0 else high

    def pause(self, keys: Iterable[str] | None = None) -> None:
        """Stop fetching the given partitions (all when ``None``), for backpressure."""
        self._consumer.pause(self._partitions(keys))

    def resume(self, keys: Iterable[str] | None = None) -> None:
        """Fetch paused partitions again (all when ``None``)."""
        self._consumer.resume(self._partitions(keys))

    def _partitions(self, keys: Iterable[str] | None) -> list[TopicPartition]:
        chosen = self._keys if keys is None else {split_key(k)[1] for k in keys}
        return [TopicPartition(self.topic, p) for p in chosen]

    def lag(self) -> dict[str, int]:
        """Records between each partition's position and its end.

        The end is the larger of the broker's answer now and the last
        fetch's high watermark: a paused partition is not fetched, and Tansu
        answers with the start of the last record batch (see
        :meth:`KafkaSource.lag`). Never negative.
        """
        lag = {}
        for partition, key in self._keys.items():
            end = max(self._query(partition)[1], self.highwater(key) or 0)
            lag[key] = max(end - self._positions[key], 0)
        return lag

    def close(self) -> None:
        self._consumer.close()


class RdKafkaSink:
    """Produces messages to a topic (keyed messages go where Java's partitioner puts them).

    Parameters
    ----------
    servers
        ``HOST:PORT[,HOST:PORT...]``.
    topic
        The topic messages go to.
    client
        TLS and SASL settings.
    linger_ms
        How long the producer gathers messages into a request.

    Raises
    ------
    BrokerUnavailable
        When no broker answers.
    ValueError
        When the topic does not exist.
    """

    def __init__(
        self,
        servers: str,
        topic: str,
        client: KafkaClientSettings | None = None,
        linger_ms: int = 20,
    ) -> None:
        self.topic = topic
        self.sent = 0
        self.errors: list[KafkaError] = []
        client = client or KafkaClientSettings()
        self._producer = Producer(
            {
                "bootstrap.servers": servers,
                "acks": "all",
                "message.timeout.ms": 120_000,
                "linger.ms": linger_ms,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": 1_000_000,
                # The partitioner kafka-python and Java use: a key's partition
                # is the same whichever of our clients wrote it.
                "partitioner": "murmur2_random",
                "delivery.report.only.error": True,
                "on_delivery": self._on_error,
                "logger": log,
                **client.librdkafka_options(),
            }
        )
        _check_reachable(self._producer, servers, topic, client)

    def _on_error(self, error: KafkaError | None, _message: object) -> None:
        if error is not None:
            self.errors.append(error)

    def send(self, value: bytes, key: bytes | None = None) -> None:
        """Queue one message; :meth:`flush` waits for it."""
        try:
            self._producer.produce(self.topic, value, key)
        except BufferError:  # the local queue is full: let librdkafka send some
            self._producer.flush()
            self._producer.produce(self.topic, value, key)
        self.sent += 1

    def flush(self) -> None:
        """Wait until every message sent is acknowledged.

        Raises
        ------
        DeliveryError
            When the broker refused messages or they timed out.
        """
        while self._producer.flush(1.0):
            pass
        if self.errors:
            raise DeliveryError(
                f"{len(self.errors)} of {self.sent} messages were not delivered to "
                f"{self.topic!r}; first error: {self.errors[0].str()}"
            )

    def close(self) -> None:
        """Flush (the producer is released when garbage collected)."""
        self.flush()
