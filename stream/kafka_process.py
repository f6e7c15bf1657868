"""A Kafka source whose consumer runs in a child process.

Decoding Kafka records and parsing the JSON into columns hold the GIL, so a
reader thread cannot overlap them with training; a second process can (the
machinery, shared with :class:`~headrace.stream.ProcessFileSource`, is in
:mod:`headrace.stream.reader_process`). The child polls an
:class:`~headrace.stream.RdKafkaSource` (librdkafka decodes records in C:
~1 µs a record where kafka-python's consumer takes ~5) and sends the raw
values in chunks. A config with kafka-python ``options`` is read with a
:class:`~headrace.stream.KafkaSource`, which understands them. Positions are
this process's own (the offset after the last record
:meth:`ProcessKafkaSource.poll` returned), so read-ahead never reaches a
checkpoint.

Once :meth:`ProcessKafkaSource.parse_with` is called, the child parses each
chunk too, as one batch, and :meth:`ProcessKafkaSource.poll_parsed` hands
out slices of it. The parent then spends no time on the records before
training on them.

Everything between the two processes travels over one pipe, in order: the
parent's commands one way; chunks and answers the other. So the chunks that
arrive before the answer to a seek are exactly those read before it, and a
dead child is an end-of-file, never a silent wait.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .batch import Positions, Record
from .kafka import KafkaSource, KafkaSourceConfig
from .rdkafka import RdKafkaSource
from .reader_process import WAIT_S, ReaderProcess, ReaderProcessError

__all__ = ["ProcessKafkaSource", "ReaderProcessError"]


class ProcessKafkaSource(ReaderProcess):
    """Reads raw records from Kafka through a consumer in a child process.

    It behaves as a :class:`~headrace.stream.KafkaSource` with manual
    partition assignment: the same positions, exact seeks, lag, pause and
    resume. Consumer-group mode is not offered, since a rebalance in the
    child would revoke partitions whose records are already read ahead.

    The child reads ahead of :meth:`poll` what the pipe holds (about two
    chunks of 1024 records) and, once a poll asks for more, that many
    records besides; and kafka-python has its own fetch buffer. It is a
    fresh interpreter (it does not import this process's main module), so
    ``config`` must be picklable (module-level functions only in
    ``config.options``). It ignores
    SIGINT and SIGTERM, which a terminal or a service manager may send to
    the whole process group, and exits when this object closes or this
    process dies. One thread at a time may use an instance.

    Parameters
    ----------
    config
        Where and how to read; ``config.group_id`` must be ``None``.

    Raises
    ------
    BrokerUnavailable
        When no broker answers in ``config.bootstrap_timeout_s``.
    ValueError
        When the topic or a requested partition does not exist, or
        ``config`` asks for group mode.
    ReaderProcessError
        When the child process dies or fails; the source is then closed.

    Examples
    --------
    Use it wherever a :class:`~headrace.stream.KafkaSource` is read, and
    close it (or use it as a context manager) to stop the child::

        with ProcessKafkaSource(KafkaSourceConfig("127.0.0.1:9092", "events")) as source:
            stream = EventStream(source, ListDeadLetterSink())
            batch = stream.next_batch(4096)
    """

    _what = "Kafka"

    def __init__(self, config: KafkaSourceConfig) -> None:
        if config.group_id is not None:
            raise ValueError(
                "ProcessKafkaSource reads assigned partitions; for consumer-group "
                "mode use KafkaSource"
            )
        self.config = config
        self._highwater: Positions = {}
        super().__init__(
            _KafkaReader,
            config,
            open_timeout_s=config.bootstrap_timeout_s + 60,
        )

    def highwater(self, key: str) -> int | None:
        """Partition ``key``'s end as the last fetch response gave it; None before one."""
        return self._highwater.get(key)

    def lag(self) -> dict[str, int]:
        """Records between each partition's position here and its end.

        See :meth:`KafkaSource.lag`; records read ahead but not yet returned
        by :meth:`poll` count as lag.
        """
        with self._lock:
            child_lag, child_positions = self._call("lag")
            return {
                key: lag + child_positions[key] - self._positions[key]
                for key, lag in child_lag.items()
            }

    def pause(self, keys: Iterable[str] | None = None) -> None:
        """Stop fetching the given partitions (all when ``None``).

        Records already read ahead are still returned.
        """
        with self._lock:
            self._call("pause", None if keys is None else list(keys))

    def resume(self, keys: Iterable[str] | None = None) -> None:
        """Fetch paused partitions again (all when ``None``)."""
        with self._lock:
            self._call("resume", None if keys is None else list(keys))

    def _on_status(self, status: Any, *, stale: bool) -> None:
        # The ends hold whatever the positions are; the child sends them only
        # when they change, so even those of a stale chunk are kept.
        self._highwater.update(status)


# -- the child ----------------------------------------------------------------


class _KafkaReader:
    """The child's consumer; its status is each partition's high watermark."""

    idle = False  # a topic never ends

    def __init__(self, config: KafkaSourceConfig) -> None:
        self.source = _open_reader(config)
        self.keys = list(self.source.positions())

    def positions(self) -> Positions:
        return self.source.positions()

    def poll(self, max_records: int) -> list[Record]:
        return self.source.poll(max_records, timeout_s=WAIT_S)

    def status(self) -> Positions:
        return {key: end for key in self.keys if (end := self.source.highwater(key)) is not None}

    def seek(self, positions: Positions) -> None:
        self.source.seek(positions)

    def run(self, command: str, args: tuple[Any, ...]) -> Any:
        if command == "lag":
            return self.source.lag(), self.source.positions()
        if command in ("pause", "resume"):
            return getattr(self.source, command)(*args)
        raise ValueError(f"unknown command {command!r}")

    def close(self) -> None:
        self.source.close()


def _open_reader(config: KafkaSourceConfig) -> KafkaSource | RdKafkaSource:
    """librdkafka, unless the config passes options of kafka-python's consumer."""
    if config.options:
        return KafkaSource(config)
    return RdKafkaSource(
        config.bootstrap_servers,
        config.topic,
        config.partitions,
        config.client,
        start=config.start,
        timeout_s=config.bootstrap_timeout_s,
        reconnect_backoff_max_ms=config.reconnect_backoff_max_ms,
    )
