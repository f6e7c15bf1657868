"""Sources named by URL, their dead-letter sinks, and a Kafka reader with fixed batches.

The reader's batches depend on positions alone.

``kafka://HOST:PORT/TOPIC``, ``file://PATH`` (``.jsonl`` or ``.jsonl.gz``) or
``synthetic://?events=N&seed=S``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from headrace.kafka_client import KafkaClientSettings
from headrace.stream import (
    DeadLetterSink,
    KafkaDeadLetterSink,
    KafkaSource,
    KafkaSourceConfig,
    ParserConfig,
    ParseResult,
    Positions,
    ProcessFileSource,
    ProcessKafkaSource,
    Record,
    Source,
    SyntheticConfig,
    SyntheticSource,
    parse_kafka_url,
    topic_partitions,
)

__all__ = ["OrderedKafkaReader", "SourceUrlError", "open_dead_letters", "open_source"]

_USAGE = "kafka://HOST:PORT/TOPIC, file://PATH or synthetic://?events=N&seed=S"


class SourceUrlError(ValueError):
    """A source URL is malformed; the message shows the accepted forms."""


class OrderedKafkaReader:
    """Reads a Kafka topic, optionally to its end, optionally in a fixed order.

    kafka-python returns whichever partitions' fetches arrived first, so
    batches differ from run to run. With ``ordered`` this reader deals
    records round-robin, one per partition in key order, skipping partitions
    at their end, and waits for a partition that has records it has not
    fetched yet. From given positions it then returns the same records in the
    same order, so training is reproducible.

    A partition's end is its high watermark as reported by fetch responses.
    ``KafkaConsumer.end_offsets`` is not used: the Tansu test broker answers
    ListOffsets(latest) with a stale offset.

    Parameters
    ----------
    source
        A source with manually assigned partitions.
    until_end
        :attr:`exhausted` turns true once every partition is read up to its
        high watermark; otherwise reading goes on as the topic grows.
    ordered
        Deal records round-robin as described (for ``--deterministic``);
        otherwise pass records through in arrival order.
    """

    def __init__(
        self, source: KafkaSource | ProcessKafkaSource, *, until_end: bool, ordered: bool
    ) -> None:
        self.source = source
        self.until_end = until_end
        self.ordered = ordered
        self._buffers: dict[str, deque[Record]] = {}
        self._next: Positions = dict(source.positions())

    def _end(self, key: str) -> int | None:
        """The partition's high watermark from the last fetch; None before one."""
        return self.source.highwater(key)

    def _at_end(self, key: str) -> bool:
        end = self._end(key)
        return end is not None and self._next[key] >= end

    @property
    def exhausted(self) -> bool:
        """True when ``until_end`` and every partition is read to its end."""
        return self.until_end and all(map(self._at_end, self._next))

    def poll(self, max_records: int, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records; with ``ordered``, none rather than a partial deal."""
        if not self.ordered:
            records = self.source.poll(max_records, timeout_s)
            for record in records:
                self._next[record.partition] = record.offset + 1
            return records
        deadline = time.monotonic() + timeout_s
        taken: list[Record] = []
        keys = sorted(self._next)
        while len(taken) < max_records and not self.exhausted:
            for key in keys:
                if len(taken) == max_records:
                    break
                buffer = self._buffers.setdefault(key, deque())
                if not buffer and not self._fill(key, deadline):
                    self._give_back(taken)
                    return []
                if buffer:
                    record = buffer.popleft()
                    self._next[key] = record.offset + 1
                    taken.append(record)
        return taken

    def parse_with(self, config: ParserConfig) -> bool:
        """Have the reader process parse, unless records are dealt in order here."""
        parse_with = getattr(self.source, "parse_with", None)
        return not self.ordered and parse_with is not None and parse_with(config)

    def poll_parsed(self, max_records: int, timeout_s: float = 1.0) -> ParseResult | None:
        """Up to ``max_records`` records parsed by the reader process (after :meth:`parse_with`)."""
        result = self.source.poll_parsed(max_records, timeout_s)  # type: ignore[union-attr]
        if result is not None:
            self._next.update(result.batch.positions)
        return result

    def _fill(self, key: str, deadline: float) -> bool:
        """Fetch until ``key`` has a record or is at its end; False if the deadline passed."""
        buffer = self._buffers[key]
        while not buffer and not (self.until_end and self._at_end(key)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for record in self.source.poll(1 << 16, min(remaining, 0.5)):
                # A fetch in flight before a seek may still deliver older records.
                if record.offset >= self._next[record.partition]:
                    self._buffers.setdefault(record.partition, deque()).append(record)
        return True

    def _give_back(self, taken: list[Record]) -> None:
        for record in reversed(taken):
            self._buffers[record.partition].appendleft(record)
            self._next[record.partition] = record.offset

    def positions(self) -> Positions:
        """Offsets after the last record returned (buffered records do not count)."""
        return dict(self._next)

    def seek(self, positions: Positions) -> None:
        """Resume at saved positions; buffered records are dropped."""
        self._buffers.clear()
        known = {k: v for k, v in positions.items() if k in self._next}
        self.source.seek(known)
        self._next.update(known)

    def lag(self) -> dict[str, int]:
        """Records between each partition's position and its last known end."""
        ends = {key: self._end(key) for key in self._next}
        return {key: max(0, end - self._next[key]) for key, end in ends.items() if end is not None}

    def close(self) -> None:
        self.source.close()


def _query_int(query: dict[str, list[str]], name: str, default: int | None) -> int | None:
    if name not in query:
        return default
    try:
        return int(query[name][-1])
    except ValueError:
        raise SourceUrlError(f"{name}={query[name][-1]!r} must be an integer") from None


def _load_kernels_while_a_reader_starts() -> None:
    """Load the trainer's kernels on a thread while a reader process starts.

    Kafka and file sources read and parse in a child process, off this
    process's GIL; this process waits while it starts (and, for Kafka,
    reaches the broker).
    """
    from headrace.trainer.loop import load_kernels_meanwhile

    load_kernels_meanwhile()


def open_source(
    url: str,
    *,
    until_end: bool = False,
    deterministic: bool = False,
    kafka: KafkaClientSettings | None = None,
    rank: int = 0,
    world: int = 1,
) -> Source:
    """Open the source a URL names (its share ``rank`` of ``world`` in a distributed run).

    Parameters
    ----------
    url
        ``kafka://HOST:PORT/TOPIC``, ``file://PATH`` or ``synthetic://?events=N&seed=S``
        (``events`` omitted: endless).
    until_end
        Kafka only: stop once every partition is read to its end, so a topic
        written before the run is a finite source.
    deterministic
        Kafka only: read with :class:`OrderedKafkaReader`'s fixed order.
    kafka
        Kafka only: TLS and SASL settings (plaintext by default).
    rank, world
        With ``world`` > 1: Kafka reads partitions ``rank, rank + world, ...``
        (of the partitions in order), a file the lines ``i`` with
        ``i % world == rank``; synthetic sources run in one process only.

    Raises
    ------
    SourceUrlError
        For a malformed URL, an unknown scheme, or a source that cannot be
        split ``world`` ways.
    headrace.stream.BrokerUnavailable
        When no Kafka broker answers.
    """
    parts = urlsplit(url)
    if parts.scheme == "kafka":
        try:
            bootstrap, topic = parse_kafka_url(url)
        except ValueError as exc:
            raise SourceUrlError(str(exc)) from None
        client = kafka or KafkaClientSettings()
        partitions = None
        if world > 1:
            count = topic_partitions(bootstrap, topic, client=client)
            if count < world:
                raise SourceUrlError(
                    f"topic {topic!r} has {count} partitions, too few for {world} ranks: "
                    f"run at most {count} ranks or add partitions to the topic"
                )
            partitions = tuple(range(rank, count, world))
        _load_kernels_while_a_reader_starts()
        source = ProcessKafkaSource(
            KafkaSourceConfig(bootstrap, topic, partitions=partitions, client=client)
        )
        return OrderedKafkaReader(source, until_end=until_end, ordered=deterministic)
    if parts.scheme == "file":
        path = parts.netloc + parts.path
        if not path:
            raise SourceUrlError(f"expected file://PATH, got {url!r}")
        _load_kernels_while_a_reader_starts()
        return ProcessFileSource(path, rank=rank, world=world)
    if parts.scheme == "synthetic":
        if world > 1:
            raise SourceUrlError(
                "synthetic:// runs in one process; for several ranks write the events "
                "to a file first (headrace generate --out F.jsonl) and train on file://F.jsonl"
            )
        query = parse_qs(parts.query)
        unknown = sorted(query.keys() - {"events", "seed"})
        if unknown:
            raise SourceUrlError(f"synthetic:// takes events= and seed=, not {unknown}")
        events = _query_int(query, "events", None)
        if events is not None and events < 1:
            raise SourceUrlError(f"events={events} must be at least 1")
        seed = _query_int(query, "seed", 0)
        return SyntheticSource(SyntheticConfig(seed=seed or 0), limit=events)
    raise SourceUrlError(f"unknown source {url!r}; expected {_USAGE}")


def open_dead_letters(
    url: str,
    choice: Literal["auto", "topic", "file"] = "auto",
    *,
    kafka: KafkaClientSettings | None = None,
) -> DeadLetterSink | None:
    """The dead-letter sink for the source ``url`` names.

    ``"auto"`` is the topic ``<topic>.dlq`` for a Kafka source (created, with
    the source's partition count, if missing) and the trainer's file
    otherwise; ``"topic"`` and ``"file"`` force one. ``None`` stands for the
    file, ``dead_letters.jsonl`` in the trainer's data directory.

    Raises
    ------
    ValueError
        For ``"topic"`` with a source that is not Kafka, naming the setting.
    headrace.stream.BrokerUnavailable
        When no Kafka broker answers.
    """
    is_kafka = urlsplit(url).scheme == "kafka"
    if choice == "topic" and not is_kafka:
        raise ValueError(
            f"dead letters go to a topic only for a kafka:// source, not {url!r}: "
            'use --dead-letters file (dead_letters = "file" in the trainer config)'
        )
    if choice == "file" or not is_kafka:
        return None
    try:
        bootstrap, topic = parse_kafka_url(url)
    except ValueError as exc:
        raise SourceUrlError(str(exc)) from None
    return KafkaDeadLetterSink.for_source(bootstrap, topic, client=kafka)
