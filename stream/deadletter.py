"""Dead letters: messages that could not become events, kept with the reason.

A bad message never stops the stream: the parser hands it here with the reason,
its source position and its raw bytes, and the good events beside it go on.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from headrace.schema import Reason

from .file import open_log

if TYPE_CHECKING:
    from kafka import KafkaProducer
    from kafka.producer.future import FutureRecordMetadata

__all__ = [
    "DeadLetter",
    "DeadLetterSink",
    "JsonlDeadLetterSink",
    "KafkaDeadLetterSink",
    "ListDeadLetterSink",
]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that broke the schema, with why and where."""

    reason: Reason
    detail: str
    partition: str
    offset: int
    raw: bytes

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict; the raw bytes in base64, since they need not be UTF-8."""
        return {
            "reason": self.reason.value,
            "detail": self.detail,
            "partition": self.partition,
            "offset": self.offset,
            "raw_b64": base64.b64encode(self.raw).decode("ascii"),
        }


class DeadLetterSink(Protocol):
    """Where dead letters go. ``flush`` returns once all written are durable."""

    def write(self, letter: DeadLetter) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class ListDeadLetterSink:
    """Keeps dead letters in memory (tests, and callers that inspect them)."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def write(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to close."""

    @property
    def counts(self) -> Counter[str]:
        """Dead letters per reason."""
        return Counter(letter.reason.value for letter in self.letters)


class JsonlDeadLetterSink:
    """Appends dead letters to a JSONL file (gzip when the name ends in ``.gz``).

    A consumer that checkpoints its input positions saves :meth:`size` with
    them and, after a crash, calls :meth:`truncate` with it: the letters of
    records it will read again are dropped, so each is written once.

    Parameters
    ----------
    path
        The file; its folder is created if needed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from headrace.schema import Reason
    >>> sink = JsonlDeadLetterSink(pathlib.Path(tempfile.mkdtemp()) / "dead.jsonl")
    >>> letter = DeadLetter(Reason.NOT_JSON, "", "log", 3, b"{")
    >>> sink.write(letter); mark = sink.size()
    >>> sink.write(letter); sink.truncate(mark)
    >>> len(sink.path.read_text().splitlines())
    1
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open_log(self.path, "at")

    def write(self, letter: DeadLetter) -> None:
        self._file.write(json.dumps(letter.to_json()) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def size(self) -> int:
        """Bytes written so far (after a flush); a mark for :meth:`truncate`."""
        self._plain_file_only()
        self.flush()
        return self.path.stat().st_size

    def truncate(self, size: int) -> None:
        """Drop every letter written after the file had ``size`` bytes."""
        self._plain_file_only()
        self._file.close()
        os.truncate(self.path, min(size, self.path.stat().st_size))
        self._file = open_log(self.path, "at")

    def _plain_file_only(self) -> None:
        # A gzip member cannot be cut at an arbitrary byte.
        if self.path.suffix == ".gz":
            raise ValueError(f"{self.path}: only a plain .jsonl dead-letter file can be truncated")

    def close(self) -> None:
        self._file.close()


class KafkaDeadLetterSink:
    """Produces dead letters to a Kafka topic, by convention ``<topic>.dlq``.

    The message value is the raw bytes exactly as received, so a fixed
    consumer can replay it; reason, detail and source position travel in
    headers (``headrace.reason``, ``headrace.detail``, ``headrace.partition``,
    ``headrace.offset``).

    Parameters
    ----------
    producer
        A producer the caller owns (and closes), e.g. a
        :class:`~headrace.stream.KafkaSink`'s, which carries the Kafka
        client settings (TLS, SASL).
    topic
        The dead-letter topic.
    flush_timeout_s
        How long ``flush`` waits for the broker's acknowledgements.
    """

    def __init__(self, producer: KafkaProducer, topic: str, flush_timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._pending: list[FutureRecordMetadata] = []

    def write(self, letter: DeadLetter) -> None:
        headers = [
            ("headrace.reason", letter.reason.value.encode()),
            ("headrace.detail", letter.detail.encode()),
            ("headrace.partition", letter.partition.encode()),
            ("headrace.offset", str(letter.offset).encode()),
        ]
        self._pending.append(self.producer.send(self.topic, value=letter.raw, headers=headers))

    def flush(self) -> None:
        """Wait for every dead letter written so far; raise if the broker refused one."""
        self.producer.flush(timeout=self.flush_timeout_s)
        pending, self._pending = self._pending, []
        for future in pending:
            # A future that failed holds the broker's error; get() re-raises it.
            future.get(timeout=0)

    def close(self) -> None:
        self.flush()
