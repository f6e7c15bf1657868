"""Kafka source and sink on kafka-python 3.x, and topic administration."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError, TopicAlreadyExistsError
from kafka.producer.future import RecordMetadata
from kafka.structs import OffsetAndMetadata

from headrace.kafka_client import ENV_PREFIX, KafkaClientSettings
from headrace.schema import Reason

from .batch import Positions, Record
from .deadletter import DeadLetter

__all__ = [
    "BrokerUnavailable",
    "DeliveryError",
    "KafkaDeadLetterSink",
    "KafkaSink",
    "KafkaSource",
    "KafkaSourceConfig",
    "dead_letter_from_kafka",
    "ensure_topic",
    "parse_kafka_url",
    "read_dead_letters",
    "read_to_end",
    "split_key",
    "topic_partitions",
]


log = logging.getLogger(__name__)


class BrokerUnavailable(ConnectionError):
    """No broker answered at the bootstrap address, or it refused the client.

    The message says which setting to fix when the broker was reached but
    the TLS handshake or the SASL authentication failed.
    """


class DeliveryError(RuntimeError):
    """The broker did not acknowledge every message sent."""


def parse_kafka_url(url: str) -> tuple[str, str]:
    """Split ``kafka://HOST:PORT/TOPIC`` into (bootstrap servers, topic).

    Raises
    ------
    ValueError
        With the expected form, when ``url`` does not have it.
    """
    parts = urlsplit(url)
    topic = parts.path.strip("/")
    if parts.scheme != "kafka" or not parts.netloc or not topic or "/" in topic:
        raise ValueError(f"expected kafka://HOST:PORT/TOPIC, got {url!r}")
    return parts.netloc, topic


def split_key(key: str) -> tuple[str, int]:
    """A position key ``"<topic>:<partition>"`` as (topic, partition).

    >>> split_key("events.v2:3")
    ('events.v2', 3)
    """
    topic, _, partition = key.rpartition(":")
    return topic, int(partition)


class _Complaints(logging.Handler):
    """Keeps what kafka-python logs while a client bootstraps.

    kafka-python retries a failed handshake or authentication until its
    bootstrap timeout and then raises only a timeout; the cause is in its log.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def complaints(logger_name: str = "kafka") -> Iterator[list[str]]:
    """Collect the warnings a client library logs meanwhile (for :func:`diagnose`)."""
    handler = _Complaints()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


#: Substrings of kafka-python's and librdkafka's logs that tell why a bootstrap
#: failed, and what to fix.
_CAUSES = (
    (
        ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed"),
        "the broker's TLS certificate is not trusted: set ssl_cafile "
        f"({ENV_PREFIX}SSL_CAFILE) to the CA that signed it, or check ssl_check_hostname",
    ),
    (
        ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "certificate required"),
        "the broker refused the client certificate: set ssl_certfile and ssl_keyfile "
        f"({ENV_PREFIX}SSL_CERTFILE, {ENV_PREFIX}SSL_KEYFILE) to one its CA signed",
    ),
    (
        ("WRONG_VERSION_NUMBER", "record layer failure", "UNEXPECTED_EOF", "EOF occurred"),
        "the TLS handshake failed: check that the broker's listener speaks TLS "
        f"(security_protocol, {ENV_PREFIX}SECURITY_PROTOCOL)",
    ),
    (
        ("UnsupportedSaslMechanism", "does not support"),
        f"the broker does not offer this sasl_mechanism ({ENV_PREFIX}SASL_MECHANISM)",
    ),
    (
        ("Sasl", "SASL", "Authentication", "unknown-user", "Abort ('v')"),
        "SASL authentication failed: check sasl_plain_username, "
        f"{ENV_PREFIX}SASL_PLAIN_PASSWORD (or sasl_plain_password_file) and sasl_mechanism",
    ),
)


def diagnose(bootstrap_servers: str, client: KafkaClientSettings, messages: list[str]) -> str:
    """Why no broker answered, and what to change, from a client's :func:`complaints`."""
    text = "\n".join(messages)
    if client.uses_tls and client.ssl_certfile is None and "socket disconnected" in text:
        # Under TLS 1.3 a broker refuses a missing client certificate after
        # the client's side of the handshake: the client sees a disconnect.
        text += "\ncertificate required"
    for needles, cause in _CAUSES:
        if any(needle in text for needle in needles):
            return f"Kafka at {bootstrap_servers} ({client.describe()}): {cause}"
    return (
        f"no Kafka broker answered at {bootstrap_servers} ({client.describe()}); "
        "is it running and reachable, and does it expect this security_protocol?"
    )


def _connect(
    factory: Any, bootstrap_servers: str, client: KafkaClientSettings, **options: Any
) -> Any:
    """Build a kafka-python client with ``client``'s security settings.

    This is the one place where headrace's Kafka clients are made, so every
    one of them talks to the brokers the same way.

    Raises
    ------
    BrokerUnavailable
        When the bootstrap fails, saying which setting to fix when the
        broker was reached but refused the handshake or the credentials.
    """
    try:
        with complaints() as messages:
            # The caller's own options win (e.g. a test's ssl_context).
            return factory(
                bootstrap_servers=bootstrap_servers, **(client.client_options() | options)
            )
    except KafkaTimeoutError as exc:
        raise BrokerUnavailable(diagnose(bootstrap_servers, client, messages)) from exc


def ensure_topic(
    bootstrap_servers: str,
    topic: str,
    partitions: int = 1,
    *,
    bootstrap_timeout_s: float = 10.0,
    client: KafkaClientSettings | None = None,
) -> bool:
    """Create ``topic`` unless it exists.

    Parameters
    ----------
    bootstrap_servers
        ``HOST:PORT[,HOST:PORT...]``.
    topic
        The topic name.
    partitions
        Partitions of a new topic (an existing topic is left as it is).
    bootstrap_timeout_s
        How long to wait for the broker before raising :class:`BrokerUnavailable`.
    client
        TLS and SASL settings (plaintext by default).

    Returns
    -------
    bool
        Whether the topic was created.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    admin = _connect(
        KafkaAdminClient,
        bootstrap_servers,
        client or KafkaClientSettings(),
        bootstrap_timeout_ms=int(bootstrap_timeout_s * 1000),
    )
    try:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}})
    except TopicAlreadyExistsError:
        return False
    finally:
        admin.close()
    return True


def topic_partitions(
    bootstrap_servers: str,
    topic: str,
    *,
    bootstrap_timeout_s: float = 10.0,
    client: KafkaClientSettings | None = None,
) -> int:
    """How many partitions ``topic`` has (``client``: TLS and SASL settings).

    Raises
    ------
    BrokerUnavailable
        When no broker answers.
    ValueError
        When the topic does not exist.
    """
    consumer = _connect(
        KafkaConsumer,
        bootstrap_servers,
        client or KafkaClientSettings(),
        bootstrap_timeout_ms=int(bootstrap_timeout_s * 1000),
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
    finally:
        consumer.close()
    if not partitions:
        raise ValueError(f"topic {topic!r} does not exist at {bootstrap_servers}")
    return len(partitions)


@dataclass(frozen=True, slots=True)
class KafkaSourceConfig:
    """Where and how a :class:`KafkaSource` reads.

    Attributes
    ----------
    bootstrap_servers
        ``HOST:PORT[,HOST:PORT...]``.
    topic
        The events topic.
    partitions
        Manual assignment of these partitions; ``None`` for all of them.
        Ignored in group mode.
    group_id
        Consumer-group mode when set: the group assigns partitions and
        :meth:`KafkaSource.commit` stores positions in Kafka. Without it the
        caller owns positions (the trainer checkpoints them).
    start
        Where a partition without a saved position starts.
    session_timeout_ms, heartbeat_interval_ms, max_poll_interval_ms
        Group timing; the defaults let a group join in seconds (Tansu takes
        20 s and more with kafka-python's defaults).
    reconnect_backoff_max_ms
        Longest wait between attempts to reach a broker that went away.
    bootstrap_timeout_s
        How long to wait for the broker at start.
    options
        Further ``KafkaConsumer`` keyword arguments, passed as they are.
    client
        TLS and SASL settings (plaintext by default).
    """

    bootstrap_servers: str
    topic: str
    partitions: tuple[int, ...] | None = None
    group_id: str | None = None
    start: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 10000
    reconnect_backoff_max_ms: int = 1000
    bootstrap_timeout_s: float = 10.0
    options: Mapping[str, Any] = field(default_factory=dict)
    client: KafkaClientSettings = field(default_factory=KafkaClientSettings)

    def __post_init__(self) -> None:
        if self.start not in ("earliest", "latest"):
            raise ValueError(f"start must be 'earliest' or 'latest', not {self.start!r}")
        if self.partitions is not None and not self.partitions:
            raise ValueError("partitions must name at least one partition, or be None for all")


class KafkaSource:
    """Reads raw records from a Kafka topic.

    Positions are keyed ``"<topic>:<partition>"`` and hold the offset of the
    next record to read. kafka-python reconnects by itself when the broker
    goes away; meanwhile :meth:`poll` returns nothing, and reading continues
    at the same positions once the broker is back.

    Parameters
    ----------
    config
        Where and how to read.

    Raises
    ------
    BrokerUnavailable
        When no broker answers in ``config.bootstrap_timeout_s``.
    ValueError
        When the topic or a requested partition does not exist.
    """

    def __init__(self, config: KafkaSourceConfig) -> None:
        self.config = config
        self.exhausted = False  # a topic never ends
        self._positions: Positions = {}
        options: dict[str, Any] = {
            "enable_auto_commit": False,
            "auto_offset_reset": config.start,
            "reconnect_backoff_max_ms": config.reconnect_backoff_max_ms,
            "bootstrap_timeout_ms": int(config.bootstrap_timeout_s * 1000),
            # Large fetches keep the per-record cost of polling low.
            "max_partition_fetch_bytes": 8 << 20,
            "fetch_max_bytes": 64 << 20,
        }
        if config.group_id is not None:
            options |= {
                "group_id": config.group_id,
                "session_timeout_ms": config.session_timeout_ms,
                "heartbeat_interval_ms": config.heartbeat_interval_ms,
                "max_poll_interval_ms": config.max_poll_interval_ms,
            }
        self.consumer: KafkaConsumer = _connect(
            KafkaConsumer,
            config.bootstrap_servers,
            config.client,
            **(options | dict(config.options)),
        )
        try:
            self._attach()
        except Exception:
            self.consumer.close()
            raise

    def _attach(self) -> None:
        topic = self.config.topic
        if self.config.group_id is not None:
            self.consumer.subscribe([topic])
            return
        existing = self.consumer.partitions_for_topic(topic) or set()
        if not existing:
            raise ValueError(f"topic {topic!r} does not exist at {self.config.bootstrap_servers}")
        wanted = set(self.config.partitions or existing)
        if missing := wanted - existing:
            raise ValueError(
                f"topic {topic!r} has partitions {sorted(existing)}, not {sorted(missing)}"
            )
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(wanted)])

    def _key(self, tp: TopicPartition) -> str:
        return f"{tp.topic}:{tp.partition}"

    def _partition(self, key: str) -> TopicPartition:
        return TopicPartition(*split_key(key))

    def poll(self, max_records: int, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""
        return [
            Record(key, m.offset, m.value)
            for key, messages in self.poll_partitions(max_records, timeout_s)
            for m in messages
        ]

    def poll_partitions(
        self, max_records: int, timeout_s: float = 1.0
    ) -> list[tuple[str, list[ConsumerRecord]]]:
        """:meth:`poll`'s records as kafka-python gives them: by partition key, in order."""
        if max_records <= 0:
            return []
        fetched = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        by_key = [(self._key(tp), messages) for tp, messages in fetched.items()]
        for key, messages in by_key:
            self._positions[key] = messages[-1].offset + 1
        return by_key

    def highwater(self, key: str) -> int | None:
        """Partition ``key``'s end as the last fetch response gave it; None before one."""
        return self.consumer.highwater(self._partition(key))

    def assignment(self) -> list[TopicPartition]:
        """The partitions read now (in group mode: assigned by the group)."""
        return sorted(self.consumer.assignment())

    def positions(self) -> Positions:
        """The next offset of every assigned partition."""
        positions: Positions = {}
        for tp in self.assignment():
            key = self._key(tp)
            if key not in self._positions:
                # Not polled yet: ask where the reset policy puts it, once.
                self._positions[key] = self.consumer.position(tp)
            positions[key] = self._positions[key]
        return positions

    def seek(self, positions: Positions) -> None:
        """Continue each assigned partition at its saved offset.

        Keys of partitions this source does not read are ignored, so a subset
        of partitions can resume from a checkpoint of the whole topic.
        """
        assigned = set(self.assignment())
        for key, offset in positions.items():
            tp = self._partition(key)
            if tp in assigned:
                self.consumer.seek(tp, offset)
                self._positions[key] = offset

    def lag(self) -> dict[str, int]:
        """Records between each assigned partition's position and its end.

        The end is the largest of three readings, each of which can only be
        too low: the broker's answer to a ListOffsets request
        (``end_offsets``), the high watermark of the last fetch response, and
        this source's own position. So the lag is never negative, and once a
        partition has been fetched from it is right to within the records
        produced since. Tansu answers ListOffsets with the base offset of the
        partition's last record batch rather than the end: 6462 for a
        partition holding 6667 records, however long after the produce it is
        asked. Before the first fetch of a partition the lag on Tansu is
        therefore short by up to one producer batch.

        Returns
        -------
        dict[str, int]
            Partition key -> records not yet read.
        """
        ends = self.consumer.end_offsets(self.assignment())
        positions = self.positions()
        lag: dict[str, int] = {}
        for tp, end in ends.items():
            key = self._key(tp)
            end = max(end, self.consumer.highwater(tp) or 0, positions[key])
            lag[key] = end - positions[key]
        return lag

    def pause(self, keys: Iterable[str] | None = None) -> None:
        """Stop fetching the given partitions (all when ``None``), for backpressure."""
        self.consumer.pause(*self._select(keys))

    def resume(self, keys: Iterable[str] | None = None) -> None:
        """Fetch paused partitions again (all when ``None``)."""
        self.consumer.resume(*self._select(keys))

    def _select(self, keys: Iterable[str] | None) -> list[TopicPartition]:
        return self.assignment() if keys is None else [self._partition(k) for k in keys]

    def commit(self, positions: Positions | None = None) -> None:
        """Store positions (by default the current ones) in the consumer group."""
        if self.config.group_id is None:
            raise RuntimeError("commit needs group mode: set KafkaSourceConfig.group_id")
        offsets = {
            self._partition(key): OffsetAndMetadata(offset, "", -1)
            for key, offset in (positions or self.positions()).items()
        }
        self.consumer.commit(offsets)

    def close(self) -> None:
        self.consumer.close()


def read_to_end(
    source: KafkaSource, *, idle_timeout_s: float = 30.0
) -> Iterator[tuple[str, list[ConsumerRecord]]]:
    """The source's records (with their headers) from its positions to each partition's end.

    The end of a partition is its high watermark in the first fetch response
    that gives one, so reading stops however much is written meanwhile
    (records fetched past it are yielded too; the source's positions tell
    how far it read). ``KafkaConsumer.end_offsets`` is not used, since
    Tansu answers it with a stale offset (see :meth:`KafkaSource.lag`).

    Parameters
    ----------
    source
        A source with manually assigned partitions, seeked where to start.
    idle_timeout_s
        How long reading may make no progress before it gives up.

    Yields
    ------
    tuple[str, list[ConsumerRecord]]
        A partition key and records of it, in order, as
        :meth:`KafkaSource.poll_partitions` gives them.

    Raises
    ------
    TimeoutError
        When nothing came for ``idle_timeout_s`` and a partition's end is not reached.
    """
    ends: dict[str, int] = {}
    last_progress = time.monotonic()
    while True:
        positions = source.positions()
        for key in positions.keys() - ends.keys():
            if (end := source.highwater(key)) is not None:
                ends[key] = end
        if len(ends) == len(positions) and all(positions[k] >= ends[k] for k in positions):
            return
        if time.monotonic() - last_progress > idle_timeout_s:
            behind = {k: (positions[k], ends.get(k)) for k in positions}
            raise TimeoutError(
                f"could not read {source.config.topic!r} to its end in {idle_timeout_s:.0f} s "
                f"(partition: (position, end)) {behind}"
            )
        fetched = source.poll_partitions(1 << 16, timeout_s=0.2)
        if fetched:
            last_progress = time.monotonic()
        yield from fetched


class KafkaSink:
    """Produces messages to a topic and counts the broker's acknowledgements.

    Parameters
    ----------
    bootstrap_servers
        ``HOST:PORT[,HOST:PORT...]``.
    topic
        The topic messages go to.
    linger_ms
        How long the producer gathers messages into a request.
    delivery_timeout_ms
        How long a message may wait for the broker (through outages) before
        it counts as failed.
    bootstrap_timeout_s
        How long to wait for the broker at start.
    options
        Further ``KafkaProducer`` keyword arguments, passed as they are.
    client
        TLS and SASL settings (plaintext by default).

    Attributes
    ----------
    ends
        Partition -> the offset after the last message of this sink the
        broker acknowledged there (partitions written to only).

    Raises
    ------
    BrokerUnavailable
        When no broker answers in ``bootstrap_timeout_s``.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        linger_ms: int = 5,
        delivery_timeout_ms: int = 120_000,
        bootstrap_timeout_s: float = 10.0,
        options: Mapping[str, Any] | None = None,
        client: KafkaClientSettings | None = None,
    ) -> None:
        self.topic = topic
        self.sent = 0
        self.acked = 0
        self.ends: dict[int, int] = {}
        self.errors: list[Exception] = []
        self.producer: KafkaProducer = _connect(
            KafkaProducer,
            bootstrap_servers,
            client or KafkaClientSettings(),
            linger_ms=linger_ms,
            acks="all",
            delivery_timeout_ms=delivery_timeout_ms,
            bootstrap_timeout_ms=int(bootstrap_timeout_s * 1000),
            **(options or {}),
        )

    def send(
        self,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one message; :meth:`flush` waits for it."""
        future = self.producer.send(
            self.topic, value=value, key=key, partition=partition, headers=headers
        )
        self.sent += 1
        future.add_callback(self._on_ack)
        future.add_errback(self.errors.append)

    def partitions(self) -> int:
        """How many partitions the topic has (from the producer's metadata)."""
        return len(self.producer.partitions_for(self.topic))

    def _on_ack(self, metadata: RecordMetadata) -> None:
        self.acked += 1
        end = self.ends.get(metadata.partition, 0)
        self.ends[metadata.partition] = max(end, metadata.offset + 1)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every message sent is acknowledged.

        Raises
        ------
        DeliveryError
            When the broker refused messages or they timed out.
        """
        self.producer.flush(timeout=timeout_s)
        if self.errors:
            raise DeliveryError(
                f"{len(self.errors)} of {self.sent} messages were not delivered to "
                f"{self.topic!r}; first error: {self.errors[0]!r}"
            )

    def close(self) -> None:
        """Flush, then release the producer."""
        try:
            self.flush()
        finally:
            self.producer.close()


#: The Kafka headers of a dead letter; the message value is the raw record.
REASON, DETAIL, TOPIC, PARTITION, OFFSET = (
    "headrace.reason",
    "headrace.detail",
    "headrace.topic",
    "headrace.partition",
    "headrace.offset",
)


def _headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    topic, partition = split_key(letter.partition)
    return [
        (REASON, letter.reason.value.encode()),
        (DETAIL, letter.detail.encode()),
        (TOPIC, topic.encode()),
        (PARTITION, str(partition).encode()),
        (OFFSET, str(letter.offset).encode()),
    ]


def _source_position(message: ConsumerRecord) -> tuple[str, int] | None:
    """The source key and offset a dead-letter message names; None if it names none."""
    headers = dict(message.headers or ())
    try:
        key = f"{headers[TOPIC].decode()}:{int(headers[PARTITION])}"
        return key, int(headers[OFFSET])
    except (KeyError, ValueError):
        return None  # not a headrace dead letter


def dead_letter_from_kafka(message: ConsumerRecord) -> DeadLetter:
    """The :class:`DeadLetter` a message of a dead-letter topic holds.

    Raises
    ------
    ValueError
        When the message lacks the headers :class:`KafkaDeadLetterSink` writes.
    """
    position = _source_position(message)
    headers = dict(message.headers or ())
    if position is None or REASON not in headers:
        raise ValueError(
            f"{message.topic}:{message.partition} offset {message.offset} is not a dead "
            f"letter: it lacks the {REASON}, {TOPIC}, {PARTITION} and {OFFSET} headers"
        )
    return DeadLetter(
        Reason(headers[REASON].decode()),
        headers.get(DETAIL, b"").decode(),
        position[0],
        position[1],
        message.value or b"",
    )


def read_dead_letters(
    bootstrap_servers: str, topic: str, *, client: KafkaClientSettings | None = None
) -> Iterator[DeadLetter]:
    """Every dead letter in ``topic`` (a ``<topic>.dlq``), in order within each partition.

    Reads to the topic's end as of the call; raises :class:`ValueError` for
    a message that is not a dead letter, and when the topic does not exist.
    """
    reader = KafkaSource(
        KafkaSourceConfig(bootstrap_servers, topic, client=client or KafkaClientSettings())
    )
    try:
        for _, messages in read_to_end(reader):
            yield from map(dead_letter_from_kafka, messages)
    finally:
        reader.close()


#: Letters a :class:`KafkaDeadLetterSink` holds before it sends them unasked.
_SEND_EVERY = 4096


class KafkaDeadLetterSink:
    """Produces dead letters to a Kafka topic, by convention ``<topic>.dlq``.

    The message value is the raw bytes exactly as received, so a fixed
    consumer can replay them; the reason and the source position travel in
    headers (``headrace.reason``, ``headrace.detail``, ``headrace.topic``,
    ``headrace.partition``, ``headrace.offset``; :func:`read_dead_letters`
    reads them back). The letters of source partition ``p`` go to partition
    ``p mod n`` of the dead-letter topic, in order. They are sent at
    :meth:`flush` (and :meth:`mark`), or once 4096 wait.

    Exactly once across crashes: the mark holds, per source partition, an
    offset of its dead-letter partition that precedes every letter written
    after it. :meth:`resume` reads the dead-letter partitions from there (from
    their start without a mark) and keeps the source positions of the letters
    found at or after the positions resumed at; :meth:`write` skips those.
    Marks and positions are per source partition, so several trainer ranks
    reading disjoint partitions may share the topic, and a partition that
    changes rank takes its mark along. Letters of the topic written by another
    consumer of the same source (a fresh data directory, say) count as
    written, too: the topic holds each bad record once.

    Parameters
    ----------
    bootstrap_servers
        ``HOST:PORT[,HOST:PORT...]``.
    topic
        The dead-letter topic; it must exist (see :meth:`for_source`).
    client
        TLS and SASL settings (plaintext by default).
    bootstrap_timeout_s
        How long to wait for the broker at start.
    flush_timeout_s
        How long ``flush`` waits for the broker's acknowledgements.

    Attributes
    ----------
    skipped
        Letters not written because the topic held them already.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client: KafkaClientSettings | None = None,
        bootstrap_timeout_s: float = 10.0,
        flush_timeout_s: float = 30.0,
    ) -> None:
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self.skipped = 0
        self._reader = KafkaSourceConfig(
            bootstrap_servers,
            topic,
            client=client or KafkaClientSettings(),
            bootstrap_timeout_s=bootstrap_timeout_s,
        )
        self._sink = KafkaSink(
            bootstrap_servers, topic, client=client, bootstrap_timeout_s=bootstrap_timeout_s
        )
        # Letters wait here for flush() (or until there are _SEND_EVERY):
        # kafka-python's sender thread runs Python, and a request per letter
        # made the training thread wait ~5 ms for the GIL each time.
        self._unsent: list[tuple[int, bytes, list[tuple[str, bytes]]]] = []
        self._partitions = self._sink.partitions()
        # Source key -> the letters resume() found: their source offsets
        # (sorted), and where each is in the dead-letter partition.
        self._found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # Source key -> the last source offset written (or skipped as found).
        self._last: dict[str, int] = {}
        # Dead-letter partition -> an offset that precedes every letter to come.
        self._read_ends: dict[int, int] = {}
        self._sources: set[str] = set()

    @classmethod
    def for_source(
        cls,
        bootstrap_servers: str,
        source_topic: str,
        *,
        client: KafkaClientSettings | None = None,
        bootstrap_timeout_s: float = 10.0,
    ) -> KafkaDeadLetterSink:
        """The sink of ``<source_topic>.dlq``, created with the source's partition count if new."""
        partitions = topic_partitions(
            bootstrap_servers, source_topic, client=client, bootstrap_timeout_s=bootstrap_timeout_s
        )
        topic = f"{source_topic}.dlq"
        ensure_topic(
            bootstrap_servers,
            topic,
            partitions,
            client=client,
            bootstrap_timeout_s=bootstrap_timeout_s,
        )
        return cls(bootstrap_servers, topic, client=client, bootstrap_timeout_s=bootstrap_timeout_s)

    def _partition_of(self, source_key: str) -> int:
        return split_key(source_key)[1] % self._partitions

    def write(self, letter: DeadLetter) -> None:
        self._sources.add(letter.partition)
        self._last[letter.partition] = letter.offset
        found = self._found.get(letter.partition)
        if found is not None:
            i = int(np.searchsorted(found[0], letter.offset))
            if i < len(found[0]) and found[0][i] == letter.offset:
                self.skipped += 1
                return
        self._unsent.append((self._partition_of(letter.partition), letter.raw, _headers(letter)))
        if len(self._unsent) >= _SEND_EVERY:
            self._send()

    def _send(self) -> None:
        for partition, raw, headers in self._unsent:
            self._sink.send(raw, partition=partition, headers=headers)
        self._unsent.clear()

    def flush(self) -> None:
        """Wait for every dead letter written so far; raise if the broker refused one.

        Raises
        ------
        DeliveryError
            When the broker did not acknowledge them all.
        """
        self._send()
        self._sink.flush(self.flush_timeout_s)

    def mark(self) -> dict[str, int]:
        """Source key -> where a restart reads its dead-letter partition from.

        That is the partition's end as far as this sink knows it, or, if
        earlier, the first letter found by :meth:`resume` that the source has
        not come back to yet: a restart before it comes back must find it.
        """
        self.flush()
        ends = dict(self._read_ends)
        for p, end in dict(self._sink.ends).items():
            ends[p] = max(end, ends.get(p, 0))
        mark: dict[str, int] = {}
        for key in sorted(self._sources):
            p = self._partition_of(key)
            if p not in ends:
                continue  # nothing known: a restart reads the partition from its start
            mark[key] = ends[p]
            if key in self._found:
                offsets, at = self._found[key]
                ahead = at[np.searchsorted(offsets, self._last.get(key, -1), side="right") :]
                if len(ahead):
                    mark[key] = min(mark[key], int(ahead.min()))
        return mark

    def resume(self, mark: Mapping[str, int] | None, positions: Positions) -> None:
        """Find the letters of records at or after ``positions`` already in the topic.

        Reads the dead-letter partitions of ``positions``' source partitions
        from the mark's offsets (from their start where the mark has none)
        to their end.
        """
        if not positions:
            return
        mark = mark or {}
        # Dead-letter partition -> where its letters of these sources may start.
        starts: dict[int, int] = {}
        for key in positions:
            p, start = self._partition_of(key), mark.get(key, 0)
            starts[p] = min(start, starts.get(p, start))
        found: dict[str, list[tuple[int, int]]] = {key: [] for key in positions}
        reader = KafkaSource(replace(self._reader, partitions=tuple(sorted(starts))))
        try:
            # An offset before the partition's start (0, or one removed by
            # retention) resets to its start.
            reader.seek({f"{self.topic}:{p}": start for p, start in starts.items()})
            for _, messages in read_to_end(reader):
                for message in messages:
                    position = _source_position(message)
                    # Letters of other ranks' partitions, and of records before
                    # the positions, are not read again: no need to skip them.
                    if position is not None and position[0] in positions:
                        key, offset = position
                        if offset >= positions[key]:
                            found[key].append((offset, message.offset))
            self._read_ends |= {split_key(k)[1]: end for k, end in reader.positions().items()}
        finally:
            reader.close()
        self._sources |= positions.keys()
        self._last = {key: offset - 1 for key, offset in positions.items()}
        self._found = {
            key: tuple(np.array(sorted(pairs), np.int64).T) for key, pairs in found.items() if pairs
        }
        if self._found:
            log.info(
                "%s already holds %d dead letters of records that will be read again; "
                "they are not written twice",
                self.topic,
                sum(len(offsets) for offsets, _ in self._found.values()),
            )

    def close(self) -> None:
        """Flush, then release the producer."""
        self._send()
        self._sink.close()
