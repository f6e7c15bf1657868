"""A Kafka source whose consumer runs in a child process.

Decoding Kafka records and parsing the JSON into columns hold the GIL, so a
reader thread cannot overlap them with training; a second process can. The
child polls an :class:`~headrace.stream.RdKafkaSource` (librdkafka decodes
records in C: ~1 µs a record where kafka-python's consumer takes ~5) and
sends the raw values in chunks. A config with kafka-python ``options`` is
read with a :class:`~headrace.stream.KafkaSource`, which understands them. Positions are this
process's own (the offset after the last record
:meth:`ProcessKafkaSource.poll` returned), so read-ahead never reaches a
checkpoint.

Once :meth:`ProcessKafkaSource.parse_with` is called, the child parses each
chunk too, as one batch (parsing 1024 records at once costs about half as
much per record as 32 at a time), and :meth:`ProcessKafkaSource.poll_parsed`
hands out slices of it. The parent then spends no time on the records
before training on them.

Everything between the two processes travels over one pipe, in order: the
parent's commands one way; chunks and answers the other. So the chunks that
arrive before the answer to a seek are exactly those read before it, and a
dead child is an end-of-file, never a silent wait.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import multiprocessing
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import repeat
from multiprocessing.connection import Connection
from operator import attrgetter
from typing import Any

import numpy as np

from .batch import Positions, Record
from .kafka import KafkaSource, KafkaSourceConfig
from .parse import EventParser, ParserConfig, ParseResult
from .rdkafka import RdKafkaSource

__all__ = ["ProcessKafkaSource", "ReaderProcessError"]

#: Records per poll of the child, and so per chunk sent. A chunk (~220 kB of
#: typical events) about fills the pipe's buffer, so the child reads one
#: chunk ahead while another waits in the pipe.
_CHUNK_RECORDS = 1024
#: How long the child waits on the broker before it looks for commands.
_WAIT_S = 0.05
#: How long a command may take in the child (a lag query asks the broker).
_ANSWER_TIMEOUT_S = 60.0

_PARTITION, _OFFSET, _VALUE = map(attrgetter, ("partition", "offset", "value"))


class ReaderProcessError(RuntimeError):
    """The child process that reads Kafka died, failed or stopped answering."""


@dataclass
class _ParsedChunk:
    """A chunk parsed in the child, and how much of it :meth:`poll_parsed` handed out."""

    keys: list[str]
    #: Each record's partition, as an index into ``keys``.
    key_index: np.ndarray
    #: Each record's offset.
    offsets: np.ndarray
    result: ParseResult
    taken: int = 0
    #: ``result.event_bounds()``, computed once.
    events: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.events = self.result.event_bounds()


class ProcessKafkaSource:
    """Reads raw records from Kafka through a consumer in a child process.

    It behaves as a :class:`~headrace.stream.KafkaSource` with manual
    partition assignment: the same positions, exact seeks, lag, pause and
    resume. Consumer-group mode is not offered, since a rebalance in the
    child would revoke partitions whose records are already read ahead.

    The child reads at most two chunks of 1024 records ahead of
    :meth:`poll` (one in the pipe, one being sent), besides kafka-python's
    own fetch buffer. It is started with ``spawn``, so ``config`` must be
    picklable (module-level functions only in ``config.options``) and a script that opens
    this source needs the ``if __name__ == "__main__":`` guard. It ignores
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

    def __init__(self, config: KafkaSourceConfig) -> None:
        if config.group_id is not None:
            raise ValueError(
                "ProcessKafkaSource reads assigned partitions; for consumer-group "
                "mode use KafkaSource"
            )
        self.config = config
        self.exhausted = False  # a topic never ends
        self._pending: deque[Record] = deque()
        self._parsed: deque[_ParsedChunk] = deque()
        self._parsing = False
        self._started = False  # the child sends chunks once asked (see _pump)
        self._highwater: Positions = {}
        self._failure: BaseException | None = None  # a fetch error, raised by the next poll
        self._lock = threading.Lock()
        # spawn, not fork: the parent may hold torch's and kafka-python's threads.
        context = multiprocessing.get_context("spawn")
        self._pipe, child_pipe = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(config, child_pipe),
            name=f"headrace-kafka-reader-{config.topic}",
            daemon=True,
        )
        self._process.start()
        # Only the child holds its end now, so its death is an end-of-file here.
        child_pipe.close()
        # A source never closed must not hold the interpreter at exit:
        # multiprocessing's own exit hook joins daemon children after a
        # SIGTERM, which the child ignores. Registered later, this runs first.
        self._at_exit = functools.partial(_stop_child, self._pipe, self._process)
        atexit.register(self._at_exit)
        try:
            with self._lock:
                self._positions: Positions = self._answer(config.bootstrap_timeout_s + 60)
        except BaseException:
            self._stop()
            raise

    def __enter__(self) -> ProcessKafkaSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self, max_records: int, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first.

        Raises
        ------
        ReaderProcessError
            When the child died, or the source is closed.
        Exception
            What failed in the child (e.g. a value that cannot be pickled),
            once the records before it are returned. The source is then
            closed, since the child has read past the failed records:
            open a new one and seek it to :meth:`positions`.
        """
        if max_records <= 0:
            return []
        if self._parsing:
            raise RuntimeError(
                "this source parses in its child since parse_with(): use poll_parsed"
            )
        with self._lock:
            self._check_open()
            if not self._started:
                self._call("start")
                self._started = True
            if not self._pending:
                self._receive_records(timeout_s)
            take = min(max_records, len(self._pending))
            records = [self._pending.popleft() for _ in range(take)]
            # The last offset of each partition, found at C speed: a dict built
            # from (key, offset) pairs keeps the last pair of each key.
            last = dict(zip(map(_PARTITION, records), map(_OFFSET, records), strict=True))
            for key, offset in last.items():
                self._positions[key] = offset + 1
            return records

    def parse_with(self, config: ParserConfig) -> bool:
        """Parse in the child from now on; :meth:`poll_parsed` then replaces :meth:`poll`.

        Records read ahead are dropped and read again, to be parsed. Returns
        True (the source parses), as :class:`~headrace.stream.EventStream` asks.
        """
        with self._lock:
            self._pending.clear()
            self._call("parse_with", config, self._positions, stale=True)
            self._parsing = self._started = True
        return True

    def poll_parsed(self, max_records: int, timeout_s: float = 1.0) -> ParseResult | None:
        """Up to ``max_records`` records, parsed; ``None`` if none came in ``timeout_s``.

        The result's ``kept`` has one entry per record, and its batch the
        positions after the last of them. Raises as :meth:`poll` does.
        """
        if not self._parsing:
            raise RuntimeError("call parse_with() before poll_parsed()")
        with self._lock:
            self._check_open()
            if not self._parsed:
                self._receive_records(timeout_s)
            if not self._parsed or max_records <= 0:
                return None
            chunk = self._parsed[0]
            start = chunk.taken
            stop = chunk.taken = min(start + max_records, len(chunk.offsets))
            if stop == len(chunk.offsets):
                self._parsed.popleft()
            taken = chunk.key_index[start:stop]
            for k, key in enumerate(chunk.keys):
                last = np.flatnonzero(taken == k)
                if len(last):
                    self._positions[key] = int(chunk.offsets[start + last[-1]]) + 1
            return chunk.result.slice(start, stop, dict(self._positions), chunk.events)

    def positions(self) -> Positions:
        """The next offset of every assigned partition."""
        return dict(self._positions)

    def seek(self, positions: Positions) -> None:
        """Continue each assigned partition at its saved offset.

        Keys of partitions this source does not read are ignored, as
        :meth:`KafkaSource.seek` does; partitions ``positions`` leaves out
        continue where :meth:`poll` left them. Records read ahead are dropped.
        """
        target = {key: positions.get(key, offset) for key, offset in self._positions.items()}
        if negative := {key: offset for key, offset in target.items() if offset < 0}:
            raise ValueError(f"offsets must be >= 0, not {negative}")
        with self._lock:
            self._pending.clear()
            self._parsed.clear()
            # The child seeks every partition: what it read ahead of this
            # process's positions is dropped for all of them alike.
            self._call("seek", target, stale=True)
            self._positions = target

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

    def close(self) -> None:
        """Stop the child process and close its consumer."""
        with self._lock:
            if self._pipe.closed:
                return
            try:
                # If it is gone already, _stop makes sure.
                with contextlib.suppress(ReaderProcessError):
                    self._call("close", stale=True)
            finally:
                self._stop()

    def _stop(self) -> None:
        atexit.unregister(self._at_exit)
        _stop_child(self._pipe, self._process)

    # -- the pipe (called holding the lock) -------------------------------------

    def _receive_records(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for a chunk that holds records."""
        deadline = time.monotonic() + timeout_s
        while not (self._pending or self._parsed) and self._failure is None:
            if not self._pipe.poll(max(0.0, deadline - time.monotonic())):
                return
            self._take(self._receive(), stale=False)
        if self._failure is not None and not (self._pending or self._parsed):
            self._stop()
            raise self._failure

    def _call(self, command: str, *args: Any, stale: bool = False) -> Any:
        """Run ``command`` in the child and return its answer (or raise its error).

        Chunks that arrive first are kept, or dropped with ``stale`` (they
        were read before a seek); their ends are kept either way.
        """
        self._check_open()
        try:
            self._pipe.send((command, args))
        except OSError:
            raise self._dead() from None
        return self._answer(_ANSWER_TIMEOUT_S, stale=stale)

    def _answer(self, timeout_s: float, *, stale: bool = False) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self._pipe.poll(max(0.0, deadline - time.monotonic())):
                self._process.kill()  # an answer arriving later would answer the next call
                self._stop()
                raise ReaderProcessError(
                    f"the Kafka reader process did not answer in {timeout_s:.0f} s; "
                    "it was stopped, open a new source"
                )
            message = self._receive()
            if message[0] == "answer":
                if isinstance(message[1], BaseException):
                    raise message[1]
                return message[1]
            self._take(message, stale=stale)

    def _take(self, message: tuple[Any, ...], *, stale: bool) -> None:
        kind, payload, highwater = message
        # The ends hold whatever the positions are; the child sends them only
        # when they change, so even those of a stale chunk are kept.
        self._highwater.update(highwater)
        if stale:
            return
        if kind == "failure":
            self._failure = self._failure or payload  # the first is the cause
            return
        if kind == "parsed":
            self._parsed.append(_ParsedChunk(*payload))
            return
        keys, key_index, offsets, values = payload
        # tuple.__new__ makes the Records without the Python-level
        # namedtuple constructor: a third of the cost per record.
        rows = zip(map(keys.__getitem__, key_index.tolist()), offsets.tolist(), values, strict=True)
        self._pending.extend(map(tuple.__new__, repeat(Record), rows))

    def _check_open(self) -> None:
        if self._pipe.closed:
            raise ReaderProcessError(
                "this Kafka source is closed (by close() or after a failure); open a new one"
            )

    def _receive(self) -> tuple[Any, ...]:
        try:
            return self._pipe.recv()
        except (EOFError, OSError):
            raise self._dead() from None

    def _dead(self) -> ReaderProcessError:
        self._stop()
        code = self._process.exitcode
        how = f"was killed by signal {-code}" if code and code < 0 else f"exited with code {code}"
        return ReaderProcessError(f"the Kafka reader process {how}; open a new source")


def _stop_child(pipe: Connection, process: multiprocessing.process.BaseProcess) -> None:
    """Close the pipe (the child leaves at its end), wait a little, then kill."""
    pipe.close()
    process.join(timeout=10)
    if process.is_alive():
        process.kill()
        process.join()


# -- the child ----------------------------------------------------------------


def _with_child_traceback(exc: BaseException) -> BaseException:
    exc.add_note("raised in the Kafka reader process:\n" + traceback.format_exc())
    return exc


def _serve(config: KafkaSourceConfig, pipe: Connection) -> None:
    """The child: read chunks ahead and send them; run the parent's commands in between."""
    # A terminal's Ctrl-C and a service manager's SIGTERM reach the whole
    # process group; the parent decides when this stops (it closes the pipe).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        source = _open_reader(config)
        positions = source.positions()
    except Exception as exc:
        pipe.send(("answer", _with_child_traceback(exc)))
        return
    try:
        pipe.send(("answer", positions))
        _pump(source, list(positions), pipe)
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        source.close()


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


def _pump(source: KafkaSource | RdKafkaSource, keys: list[str], pipe: Connection) -> None:
    sent_highwater: Positions = {}
    parser: EventParser | None = None
    # Chunks are sent from the first poll or parse_with on: one that a
    # parse_with would drop costs a seek, which throws away the consumer's
    # read-ahead (a fetch in flight: ~0.1 s before the next records).
    pumping = False
    while True:
        while pipe.poll(0 if pumping else _WAIT_S):
            command, args = pipe.recv()
            if command == "close":
                pipe.send(("answer", None))
                return
            try:
                answer = None
                if command == "start":
                    pumping = True
                elif command == "parse_with":
                    config, positions = args
                    parser, pumping = EventParser(config), True
                    if positions != source.positions():
                        source.seek(positions)
                else:
                    answer = _run(source, command, args)
            except Exception as exc:
                answer = _with_child_traceback(exc)
            pipe.send(("answer", answer))
        if not pumping:
            continue
        message: tuple[Any, ...] | None = None
        highwater = sent_highwater
        try:
            records = source.poll(_CHUNK_RECORDS, timeout_s=_WAIT_S)
            highwater = {key: end for key in keys if (end := source.highwater(key)) is not None}
            if records and parser is not None:
                message = ("parsed", (*_columns(records), parser.parse(records, {})), highwater)
            elif records or highwater != sent_highwater:
                message = ("chunk", (*_columns(records), list(map(_VALUE, records))), highwater)
        except Exception as exc:
            message = ("failure", _with_child_traceback(exc), highwater)
        if message is not None:
            _send(pipe, message)
        sent_highwater = highwater


def _columns(records: list[Record]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The records' partitions (distinct keys, each record's index into them) and offsets."""
    keys = list(dict.fromkeys(map(_PARTITION, records)))
    index = {key: k for k, key in enumerate(keys)}
    key_index = np.fromiter(
        map(index.__getitem__, map(_PARTITION, records)), np.int32, len(records)
    )
    return keys, key_index, np.fromiter(map(_OFFSET, records), np.int64, len(records))


def _send(pipe: Connection, message: tuple[Any, ...]) -> None:
    """Send ``message``; one that cannot be pickled goes as a failure instead."""
    try:
        pipe.send(message)  # pickles the whole message before writing any of it
    except OSError:
        raise  # the parent is gone
    except Exception as exc:  # e.g. a value a configured deserializer made
        pipe.send(("failure", _with_child_traceback(exc), message[2]))


def _run(source: KafkaSource | RdKafkaSource, command: str, args: tuple[Any, ...]) -> Any:
    if command == "seek":
        return source.seek(*args)
    if command == "lag":
        return source.lag(), source.positions()
    if command in ("pause", "resume"):
        return getattr(source, command)(*args)
    raise ValueError(f"unknown command {command!r}")
