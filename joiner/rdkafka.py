"""The joiner's Kafka clients, on librdkafka (confluent-kafka).

The joiner reads two topics and writes a third, one message out for about
every message in. kafka-python builds and decodes every record in Python
(its producer costs ~95 µs a message here, its consumer ~9 µs), which held
the joiner to ~7k events/s. librdkafka fetches, decodes, batches and sends
on its own C threads, outside the GIL: a Python call per message is left
(~1 µs), and the join itself becomes the cost.

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

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from headrace.kafka_client import KafkaClientSettings
from headrace.stream import BrokerUnavailable, DeliveryError, Positions, Record

__all__ = ["RdKafkaSink", "RdKafkaSource"]

log = logging.getLogger(__name__)

_QUERY_TIMEOUT_S = 10.0


def _check_reachable(client: Consumer | Producer, servers: str, topic: str) -> int:
    """The partition count of ``topic``; raises when no broker answers or it is missing."""
    try:
        metadata = client.list_topics(topic, timeout=_QUERY_TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerUnavailable(
            f"no Kafka broker answered at {servers} ({exc.args[0]}); check the address "
            "and the [kafka] settings"
        ) from None
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
        The partitions to read.
    client
        TLS and SASL settings.

    Raises
    ------
    BrokerUnavailable
        When no broker answers.
    ValueError
        When the topic does not exist.
    """

    exhausted = False  # a topic never ends

    def __init__(
        self,
        servers: str,
        topic: str,
        partitions: Iterable[int],
        client: KafkaClientSettings | None = None,
    ) -> None:
        self.servers, self.topic = servers, topic
        self._keys = {p: f"{topic}:{p}" for p in partitions}
        self._consumer = Consumer(
            {
                "bootstrap.servers": servers,
                # Positions are ours (committed with the joiner's state); the
                # group id only satisfies librdkafka, nothing is committed.
                "group.id": f"headrace-join-{topic}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 64 << 20,
                "max.partition.fetch.bytes": 8 << 20,
                # A partition's queue full (queued.min.messages) pauses its
                # fetching this long; the default 1 s let the joiner drain the
                # queue and wait.
                "fetch.queue.backoff.ms": 20,
                "logger": log,
                **(client or KafkaClientSettings()).librdkafka_options(),
            }
        )
        try:
            _check_reachable(self._consumer, servers, topic)
            self._positions: Positions = {key: self._query(p)[0] for p, key in self._keys.items()}
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
        partition = int(key.rpartition(":")[2])
        _, high = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), cached=True
        )
        return None if high == OFFSET_INVALID or high < 0 else high

    def lag(self) -> dict[str, int]:
        """Records between each partition's position and its end.

        The end is the last fetch's high watermark (librdkafka fetches on
        ahead, so it is fresh); the broker is asked only for a partition not
        fetched from yet. Never negative.
        """
        lag = {}
        for partition, key in self._keys.items():
            end = self.highwater(key)
            if end is None:
                end = self._query(partition)[1]
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
                **(client or KafkaClientSettings()).librdkafka_options(),
            }
        )
        _check_reachable(self._producer, servers, topic)

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
