"""A Kafka source whose consumer runs in a child process.

kafka-python decodes every record in Python, about 9 µs of CPU per message
on these machines, and parsing the JSON into columns costs as much again.
Both hold the GIL, so a reader thread cannot overlap them; a second process
can. The child polls a :class:`~headrace.stream.KafkaSource` ahead of the
reader, by at most ``read_ahead`` records, and ships the raw values in
chunks; this process parses them. Positions are this process's own (the
offset after the last record :meth:`ProcessKafkaSource.poll` returned), so
read-ahead never reaches a checkpoint.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import time
import traceback
from collections import deque
from collections.abc import Iterable
from itertools import repeat
from multiprocessing.connection import Connection
from operator import attrgetter
from typing import Any

from .batch import Positions, Record
from .kafka import KafkaSource, KafkaSourceConfig

__all__ = ["ProcessKafkaSource", "ReaderProcessError"]

#: Records per poll of the child, and so per chunk shipped.
_CHUNK_RECORDS = 4096
#: How long the child waits on the broker or a full queue before it looks
#: for commands again: the longest a seek or a close waits.
_WAIT_S = 0.05

_PARTITION, _OFFSET, _VALUE = map(attrgetter, ("partition", "offset", "value"))

#: A chunk: each partition's offsets and values, in order.
_Chunk = list[tuple[str, list[int], list[bytes | None]]]


class ReaderProcessError(RuntimeError):
    """The child process that reads Kafka died or stopped answering."""


class ProcessKafkaSource:
    """Reads raw records from Kafka through a consumer in a child process.

    It behaves as a :class:`~headrace.stream.KafkaSource` with manual
    partition assignment: the same positions, exact seeks, lag, pause and
    resume. Consumer-group mode is not offered, since a rebalance in the
    child would revoke partitions whose records are already read ahead.

    Parameters
    ----------
    config
        Where and how to read; ``config.group_id`` must be ``None``.
    read_ahead
        Most records the child fetches beyond what :meth:`poll` returned.

    Raises
    ------
    BrokerUnavailable
        When no broker answers in ``config.bootstrap_timeout_s``.
    ValueError
        When the topic or a requested partition does not exist, or
        ``config`` asks for group mode.
    ReaderProcessError
        When the child process does not start.

    Examples
    --------
    Use it wherever a :class:`~headrace.stream.KafkaSource` is read, and
    close it (or use it as a context manager) to stop the child::

        with ProcessKafkaSource(KafkaSourceConfig("127.0.0.1:9092", "events")) as source:
            stream = EventStream(source, ListDeadLetterSink())
            batch = stream.next_batch(4096)
    """

    def __init__(self, config: KafkaSourceConfig, *, read_ahead: int = 1 << 16) -> None:
        if config.group_id is not None:
            raise ValueError(
                "ProcessKafkaSource reads assigned partitions; for consumer-group "
                "mode use KafkaSource"
            )
        if read_ahead < 1:
            raise ValueError(f"read_ahead must be at least 1, not {read_ahead}")
        self.config = config
        self.exhausted = False  # a topic never ends
        # spawn, not fork: the parent may hold torch's and kafka-python's threads.
        context = multiprocessing.get_context("spawn")
        self._control, child_control = context.Pipe()
        self._chunks: multiprocessing.Queue[tuple[int, _Chunk | BaseException, Positions]] = (
            context.Queue(maxsize=max(1, read_ahead // _CHUNK_RECORDS))
        )
        self._process = context.Process(
            target=_serve,
            args=(config, child_control, self._chunks),
            name=f"headrace-kafka-reader-{config.topic}",
            daemon=True,
        )
        self._process.start()
        child_control.close()
        self._pending: deque[Record] = deque()
        self._highwater: Positions = {}
        self._generation = 0  # chunks fetched before the latest seek are dropped
        try:
            self._positions: Positions = self._answer(config.bootstrap_timeout_s + 60)
        except BaseException:
            self._stop()
            raise

    def __enter__(self) -> ProcessKafkaSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self, max_records: int, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""
        if max_records <= 0:
            return []
        if not self._pending:
            self._receive(timeout_s)
        take = min(max_records, len(self._pending))
        records = [self._pending.popleft() for _ in range(take)]
        # The last offset of each partition, found at C speed: a dict built
        # from (key, offset) pairs keeps the last pair of each key.
        last = dict(zip(map(_PARTITION, records), map(_OFFSET, records), strict=True))
        for key, offset in last.items():
            self._positions[key] = offset + 1
        return records

    def _receive(self, timeout_s: float) -> None:
        """Move chunks into the pending records: wait up to ``timeout_s`` for
        records, then take whatever else is queued without waiting."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait = 0.0 if self._pending else max(0.0, deadline - time.monotonic())
            try:
                generation, chunk, highwater = self._chunks.get(timeout=wait)
            except queue.Empty:
                self._check_alive()
                return
            # The ends hold whatever the positions; the child sends them only
            # when they change, so even those of a stale chunk are kept.
            self._highwater.update(highwater)
            if generation != self._generation:
                continue  # records fetched before the latest seek
            if isinstance(chunk, BaseException):
                raise chunk
            for key, offsets, values in chunk:
                # tuple.__new__ makes the Records without the Python-level
                # namedtuple constructor: a third of the cost per record.
                rows = zip(repeat(key), offsets, values, strict=False)
                self._pending.extend(map(tuple.__new__, repeat(Record), rows))

    def positions(self) -> Positions:
        """The next offset of every assigned partition."""
        return dict(self._positions)

    def seek(self, positions: Positions) -> None:
        """Continue each assigned partition at its saved offset.

        Keys of partitions this source does not read are ignored, as
        :meth:`KafkaSource.seek` does. Records read ahead are dropped.
        """
        known = {key: offset for key, offset in positions.items() if key in self._positions}
        self._generation += 1
        self._call("seek", self._generation, known)
        self._pending.clear()
        self._positions.update(known)

    def highwater(self, key: str) -> int | None:
        """Partition ``key``'s end as the last fetch response gave it; None before one."""
        return self._highwater.get(key)

    def lag(self) -> dict[str, int]:
        """Records between each partition's position here and its end.

        See :meth:`KafkaSource.lag`; records read ahead but not yet returned
        by :meth:`poll` count as lag.
        """
        child_lag, child_positions = self._call("lag")
        return {
            key: lag + child_positions[key] - self._positions[key] for key, lag in child_lag.items()
        }

    def pause(self, keys: Iterable[str] | None = None) -> None:
        """Stop fetching the given partitions (all when ``None``).

        Records already read ahead are still returned.
        """
        self._call("pause", None if keys is None else list(keys))

    def resume(self, keys: Iterable[str] | None = None) -> None:
        """Fetch paused partitions again (all when ``None``)."""
        self._call("resume", None if keys is None else list(keys))

    def close(self) -> None:
        """Stop the child process and close its consumer."""
        if self._process.is_alive():
            # If it is going away anyway, _stop makes sure.
            with contextlib.suppress(ReaderProcessError):
                self._call("close")
        self._stop()

    def _stop(self) -> None:
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._control.close()
        self._chunks.close()

    def _call(self, command: str, *args: Any) -> Any:
        """Run ``command`` in the child and return its answer (or raise its error)."""
        self._check_alive()
        self._control.send((command, args))
        return self._answer(timeout_s=self.config.bootstrap_timeout_s + 60)

    def _answer(self, timeout_s: float) -> Any:
        while not self._control.poll(min(timeout_s, 1.0)):
            self._check_alive()
            timeout_s -= 1.0
            if timeout_s <= 0:
                raise ReaderProcessError("the Kafka reader process stopped answering")
        answer = self._control.recv()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _check_alive(self) -> None:
        if not self._process.is_alive():
            raise ReaderProcessError(
                f"the Kafka reader process exited with code {self._process.exitcode}; "
                "see its error above"
            )


def _with_child_traceback(exc: BaseException) -> BaseException:
    exc.add_note("raised in the Kafka reader process:\n" + traceback.format_exc())
    return exc


def _serve(
    config: KafkaSourceConfig,
    control: Connection,
    chunks: multiprocessing.Queue[tuple[int, _Chunk | BaseException, Positions]],
) -> None:
    """The child: poll ahead into ``chunks``, run the parent's commands in between."""
    # Ctrl-C reaches the whole process group; the parent decides when this stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Chunks the parent no longer reads must not hold this process at exit.
    chunks.cancel_join_thread()
    try:
        source = KafkaSource(config)
        positions = source.positions()
    except Exception as exc:
        control.send(_with_child_traceback(exc))
        return
    control.send(positions)
    try:
        _pump(source, list(positions), control, chunks)
    finally:
        source.close()


def _pump(
    source: KafkaSource,
    keys: list[str],
    control: Connection,
    chunks: multiprocessing.Queue[tuple[int, _Chunk | BaseException, Positions]],
) -> None:
    generation = 0
    unsent: tuple[int, _Chunk | BaseException, Positions] | None = None
    shipped_highwater: Positions = {}
    while True:
        while control.poll(0):
            try:
                command, args = control.recv()
            except EOFError:  # the parent is gone
                return
            if command == "close":
                control.send(None)
                return
            if command == "seek":
                generation = args[0]
                unsent = None  # fetched from the old positions
            try:
                control.send(_run(source, command, args))
            except Exception as exc:
                control.send(_with_child_traceback(exc))
        if unsent is None:
            try:
                unsent = _fetch(source, keys, generation, shipped_highwater)
            except Exception as exc:
                unsent = (generation, _with_child_traceback(exc), {})
            if unsent is not None:
                shipped_highwater = unsent[2]
        if unsent is not None:
            try:
                chunks.put(unsent, timeout=_WAIT_S)
                unsent = None
            except queue.Full:
                pass


def _run(source: KafkaSource, command: str, args: tuple[Any, ...]) -> Any:
    if command == "seek":
        return source.seek(args[1])
    if command == "lag":
        return source.lag(), source.positions()
    if command in ("pause", "resume"):
        return getattr(source, command)(*args)
    raise ValueError(f"unknown command {command!r}")


def _fetch(
    source: KafkaSource, keys: list[str], generation: int, shipped_highwater: Positions
) -> tuple[int, _Chunk, Positions] | None:
    """The next chunk, or None when there are no records and no news of the ends."""
    by_key = source.poll_partitions(_CHUNK_RECORDS, timeout_s=_WAIT_S)
    highwater = {key: end for key in keys if (end := source.highwater(key)) is not None}
    if not by_key and highwater == shipped_highwater:
        return None
    chunk: _Chunk = [
        (key, list(map(_OFFSET, messages)), list(map(_VALUE, messages))) for key, messages in by_key
    ]
    return generation, chunk, highwater
