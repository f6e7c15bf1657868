"""The joiner's inputs and outputs, named by URL, split across joiner processes.

Inputs are ``kafka://HOST:PORT/TOPIC`` or ``file://PATH.jsonl[.gz]``; outputs
are ``kafka://HOST:PORT/TOPIC`` (created if missing) or ``file://PATH``
(appended to). Joiner process ``rank`` of ``ranks`` reads the partitions
``p`` with ``p % ranks == rank`` of both topics, which must have as many
partitions and be keyed by request id (as the synthetic generator writes
them), so that an impression and its actions meet in the same process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from headrace.joiner.rdkafka import RdKafkaSink, RdKafkaSource
from headrace.kafka_client import KafkaClientSettings
from headrace.stream import (
    FileSource,
    LogSink,
    Source,
    ensure_topic,
    parse_kafka_url,
    topic_partitions,
)

__all__ = ["EndpointError", "Sink", "my_partitions", "open_inputs", "open_sink"]


class EndpointError(ValueError):
    """A URL or a partition layout the joiner cannot use; the message says what to fix."""


class Sink(Protocol):
    """Where emitted events and late actions go: a Kafka topic or a log file."""

    def send(self, value: bytes, key: bytes | None = None) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def my_partitions(partitions: int, rank: int, ranks: int) -> tuple[int, ...]:
    """The partitions joiner ``rank`` of ``ranks`` reads.

    >>> my_partitions(5, 1, 2)
    (1, 3)
    """
    if not 0 <= rank < ranks:
        raise EndpointError(f"rank must be in [0, {ranks}), not {rank}")
    mine = tuple(p for p in range(partitions) if p % ranks == rank)
    if not mine:
        raise EndpointError(
            f"{ranks} joiners for {partitions} partitions leave joiner {rank} nothing to read; "
            "run at most as many joiners as partitions"
        )
    return mine


def _file_path(url: str, option: str) -> Path:
    parts = urlsplit(url)
    path = parts.netloc + parts.path
    if parts.scheme != "file" or not path:
        raise EndpointError(
            f"{option}: expected kafka://HOST:PORT/TOPIC or file://PATH, got {url!r}"
        )
    return Path(path)


def open_inputs(
    impressions: str,
    actions: str,
    rank: int = 0,
    ranks: int = 1,
    client: KafkaClientSettings | None = None,
) -> tuple[Source, Source]:
    """Open both inputs for joiner ``rank`` of ``ranks`` (``client``: TLS and SASL settings).

    Raises
    ------
    EndpointError
        For a malformed URL, mixed kinds, topics with unequal partition
        counts, or several joiners on files.
    headrace.stream.BrokerUnavailable
        When no Kafka broker answers.
    """
    kafka = [url.startswith("kafka://") for url in (impressions, actions)]
    if kafka == [False, False]:
        if ranks != 1:
            raise EndpointError("files have one partition: run one joiner (--ranks 1) on them")
        paths = [_file_path(impressions, "--impressions"), _file_path(actions, "--actions")]
        return FileSource(paths[0], key="impressions"), FileSource(paths[1], key="actions")
    if kafka != [True, True]:
        raise EndpointError("give both inputs as kafka:// or both as file://")
    try:
        (imp_servers, imp_topic), (act_servers, act_topic) = map(
            parse_kafka_url, (impressions, actions)
        )
    except ValueError as exc:
        raise EndpointError(str(exc)) from None
    counts = (
        topic_partitions(imp_servers, imp_topic, client=client),
        topic_partitions(act_servers, act_topic, client=client),
    )
    if counts[0] != counts[1]:
        raise EndpointError(
            f"{imp_topic!r} has {counts[0]} partitions and {act_topic!r} {counts[1]}: "
            "give both topics as many partitions, keyed by request id"
        )
    mine = my_partitions(counts[0], rank, ranks)
    first = RdKafkaSource(imp_servers, imp_topic, mine, client)
    try:
        second = RdKafkaSource(act_servers, act_topic, mine, client)
    except BaseException:
        first.close()
        raise
    return first, second


def open_sink(
    url: str, option: str, partitions: int = 1, client: KafkaClientSettings | None = None
) -> Sink:
    """A sink for ``url``; a Kafka topic is created (with ``partitions``) if missing."""
    if url.startswith("kafka://"):
        try:
            servers, topic = parse_kafka_url(url)
        except ValueError as exc:
            raise EndpointError(f"{option}: {exc}") from None
        ensure_topic(servers, topic, partitions, client=client)
        return RdKafkaSink(servers, topic, client)
    return LogSink(_file_path(url, option), append=True)
