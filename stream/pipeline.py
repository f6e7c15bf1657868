"""A source, the parser and a dead-letter sink, read as a stream of batches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from .batch import Batch, Positions, Record
from .deadletter import DeadLetter, DeadLetterSink
from .parse import EventParser, ParserConfig, ParseResult

__all__ = ["EventStream", "ParsingSource", "Source"]


class Source(Protocol):
    """What :class:`EventStream` reads: Kafka, a log file or the generator."""

    @property
    def exhausted(self) -> bool:
        """True when no record will ever come again (a finite source at its end)."""
        ...

    def poll(self, max_records: int, timeout_s: float = ...) -> list[Record]: ...

    def positions(self) -> Positions: ...

    def seek(self, positions: Positions) -> None: ...

    def close(self) -> None: ...


class ParsingSource(Source, Protocol):
    """A source that can parse what it reads where it reads it (in a reader process)."""

    def parse_with(self, config: ParserConfig) -> bool:
        """Parse with ``config`` from now on; False if this source cannot."""
        ...

    def poll_parsed(self, max_records: int, timeout_s: float = ...) -> ParseResult | None:
        """Up to ``max_records`` records parsed (``kept`` has one entry each); None if none came."""
        ...


class EventStream:
    """Turns a source's raw records into batches; bad records become dead letters.

    Parameters
    ----------
    source
        Where records come from.
    dead_letters
        Where bad records go. Before a batch is returned, the dead letters of
        its records are flushed, so its positions never pass an unsaved one.
    parser
        How records are parsed; a training parser by default. A
        :class:`ParsingSource` is asked to parse with its config itself.

    Attributes
    ----------
    records_read
        Records taken from the source.
    events_ingested
        Good events delivered in batches.
    dead_letter_counts
        Dead letters per reason (``Reason`` values).
    """

    def __init__(
        self,
        source: Source,
        dead_letters: DeadLetterSink,
        parser: EventParser | None = None,
    ) -> None:
        self.source = source
        self.dead_letters = dead_letters
        self.parser = parser or EventParser()
        parse_with = getattr(source, "parse_with", None)
        #: True when the source parses (in a reader process): reading then costs a slice.
        self.source_parses = parse_with is not None and parse_with(self.parser.config)
        self.records_read = 0
        self.events_ingested = 0
        self.dead_letter_counts: Counter[str] = Counter()

    def next_batch(self, max_events: int = 4096, timeout_s: float = 1.0) -> Batch:
        """Read up to ``max_events`` records and parse them.

        The batch may be empty (nothing arrived in ``timeout_s``, or every
        record was bad); its positions are current either way. The dead
        letters of its records are written before it is returned.
        """
        result = self.read(max_events, timeout_s)
        self.write_dead_letters(result.dead_letters)
        return result.batch

    def read(self, max_events: int = 4096, timeout_s: float = 1.0) -> ParseResult:
        """:meth:`next_batch` without writing the dead letters: they come back with the batch.

        For a reader that works ahead of its consumer: the letters of a batch
        read but never used (and so read again later) are then never
        written twice. Pass them to :meth:`write_dead_letters` before saving
        the batch's positions, so that no position passes an unsaved letter.
        """
        if self.source_parses:
            result = self.source.poll_parsed(max_events, timeout_s)  # type: ignore[attr-defined]
            if result is None:
                result = self.parser.parse([], self.source.positions())
        else:
            result = self.parser.parse(
                self.source.poll(max_events, timeout_s), self.source.positions()
            )
        self.records_read += len(result.kept)
        self.events_ingested += len(result.batch)
        self.dead_letter_counts.update(letter.reason.value for letter in result.dead_letters)
        return result

    def write_dead_letters(self, letters: list[DeadLetter], *, flush: bool = True) -> None:
        """Write ``letters`` to the dead-letter sink and flush it.

        Without ``flush`` they become durable at the sink's next flush or
        :meth:`~headrace.stream.DeadLetterSink.mark`: for a consumer that
        checkpoints the mark, which saves a round trip to a Kafka broker per batch.
        """
        if letters:
            for letter in letters:
                self.dead_letters.write(letter)
            if flush:
                self.dead_letters.flush()

    def __iter__(self) -> Iterator[Batch]:
        """Non-empty batches until the source is exhausted (forever for Kafka)."""
        while not self.source.exhausted:
            batch = self.next_batch()
            if len(batch):
                yield batch

    def positions(self) -> Positions:
        """Where the source stands: after the last batch returned."""
        return self.source.positions()

    def seek(self, positions: Positions) -> None:
        """Resume the source at positions saved from a batch."""
        self.source.seek(positions)

    def close(self) -> None:
        """Close the source and the dead-letter sink."""
        try:
            self.source.close()
        finally:
            self.dead_letters.close()
