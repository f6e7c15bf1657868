"""The joiner's inputs and outputs, named by URL, split across joiner processes.

Inputs are ``kafka://HOST:PORT/TOPIC`` or ``file://PATH.jsonl[.gz]``; outputs
are ``kafka://HOST:PORT/TOPIC`` (created if missing) or ``file://PATH``
(appended to). Joiner process ``rank`` of ``ranks`` reads the partitions
``p`` with ``p % ranks == rank`` of both topics, which must have as many
partitions and be keyed by request id (as the synthetic generator writes
them), so that an impression and its actions meet in the same process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlsplit

from headrace.kafka_client import KafkaClientSettings
from headrace.stream import (
    FileSource,
    RdKafkaSink,
    RdKafkaSource,
    Source,
    ensure_topic,
    parse_kafka_url,
    topic_partitions,
)

__all__ = ["EndpointError", "FileSink", "Sink", "my_partitions", "open_inputs", "open_sink"]


class EndpointError(ValueError):
    """A URL or a partition layout the joiner cannot use; the message says what to fix."""


class Sink(Protocol):
    """Where emitted events and late actions go: a Kafka topic or a log file."""

    def send(self, value: bytes, key: bytes | None = None) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """Appends messages as lines to a plain file, cut back to a mark after a crash.

    The joiner saves :meth:`size` with each commit and, on restart,
    :meth:`truncate` s the file to it: what was written after the last
    commit is cut, and written again once, as the inputs are read again.

    >>> import tempfile, pathlib
    >>> sink = FileSink(pathlib.Path(tempfile.mkdtemp()) / "out.jsonl")
    >>> sink.send(b'{"a":1}'); mark = sink.size()
    >>> sink.send(b'{"a":2}'); sink.truncate(mark)
    >>> sink.path.read_bytes().splitlines()
    [b'{"a":1}']
    """

    def __init__(self, path: Path) -> None:
        if path.suffix == ".gz":
            raise EndpointError(
                f"{path}: the joiner writes plain files (a restart cuts them back to its "
                "last commit, which a gzip stream cannot be); drop the .gz"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[bytes] = path.open("ab")

    def send(self, value: bytes, key: bytes | None = None) -> None:
        """Write one line; ``key`` (a Kafka message key) is not kept."""
        self._file.write(value + b"\n")

    def flush(self) -> None:
        self._file.flush()

    def size(self) -> int:
        """Bytes written so far: a mark for :meth:`truncate`."""
        self.flush()
        return os.fstat(self._file.fileno()).st_size

    def truncate(self, size: int) -> None:
        """Drop every line written after the file had ``size`` bytes."""
        self.flush()
        os.ftruncate(self._file.fileno(), min(size, self.size()))

    def close(self) -> None:
        self._file.close()


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
    """A sink for ``url``; a Kafka topic is created (with ``partitions``) if missing.

    A file is appended to, exactly once across crashes (:class:`FileSink`);
    a topic gets each message at least once (the trainer drops repeated
    events by ``event_id``).
    """
    if url.startswith("kafka://"):
        try:
            servers, topic = parse_kafka_url(url)
        except ValueError as exc:
            raise EndpointError(f"{option}: {exc}") from None
        ensure_topic(servers, topic, partitions, client=client)
        return RdKafkaSink(servers, topic, client)
    return FileSink(_file_path(url, option))
