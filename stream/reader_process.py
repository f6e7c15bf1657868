"""A source read (and parsed) in a child process: the machinery Kafka and files share.

Reading records and parsing the JSON into columns hold the GIL, so a reader
thread cannot overlap them with training; a second process can. The child
opens a reader (a :class:`ChildReader`: Kafka's consumer, a log file), reads
chunks of 1024 records and sends them to this process; once
:meth:`ReaderProcess.parse_with` is called it parses each chunk too, as one
batch (parsing 1024 records at once costs about half as much per record as
32 at a time), and :meth:`ReaderProcess.poll_parsed` hands out slices of it.
The parent then spends no time on the records before training on them.
Positions are this process's own (after the last record handed out), so
read-ahead never reaches a checkpoint.

Everything between the two processes travels over one pipe, in order: the
parent's commands one way; chunks and answers the other. So the chunks that
arrive before the answer to a seek are exactly those read before it, and a
dead child is an end-of-file, never a silent wait. Once a poll asks for
more records than the pipe holds, the child reads that many ahead besides:
its chunks and answers queue, in that one order, for a thread of the child
that writes them to the pipe. With the pipe alone, the child stopped while
a large batch trained: a trainer at batch 8192 waited for its reader 2.8 s
of a 9 s run and trained 175k events/s against 250k with the queue.

The child is a fresh interpreter with this process's ``sys.path`` (see
:func:`_start_child`: neither fork nor multiprocessing's spawn), ignores SIGINT and
SIGTERM (a terminal or a service manager signals the whole process group;
the parent decides when it stops), and leaves when the pipe closes: when the
source closes or its process dies.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from operator import attrgetter
from typing import Any, ClassVar, Protocol, Self

import numpy as np

from headrace.processes import wait_or_kill

from .batch import Positions, Record
from .parse import EventParser, ParserConfig, ParseResult

__all__ = ["ChildReader", "ReaderProcess", "ReaderProcessError"]

#: Records per read of the child, and so per chunk sent. A chunk (~220 kB of
#: typical events) about fills the pipe's buffer.
CHUNK_RECORDS = 1024
#: Records the pipe holds, about: a chunk in its buffer and one being written.
PIPE_RECORDS = 2 * CHUNK_RECORDS
#: How long the child waits on its reader, or idles, before it looks for commands.
WAIT_S = 0.05
#: How long a command may take in the child (a Kafka lag query asks the broker).
ANSWER_TIMEOUT_S = 60.0

_PARTITION, _OFFSET, _VALUE = map(attrgetter, ("partition", "offset", "value"))
_UNSENT = object()


class ReaderProcessError(RuntimeError):
    """The child process that reads the source died, failed or stopped answering."""


class ChildReader(Protocol):
    """What the child reads: made there by the ``open_reader`` a :class:`ReaderProcess` gets."""

    #: True while there is nothing to read until a command (a file at its end).
    idle: bool

    def positions(self) -> Positions: ...

    def poll(self, max_records: int) -> list[Record]:
        """Up to ``max_records`` records, waiting at most about ``WAIT_S``."""
        ...

    def status(self) -> Any:
        """A picklable state sent with the chunks whenever it changes (Kafka's ends)."""
        ...

    def seek(self, positions: Positions) -> None: ...

    def run(self, command: str, args: tuple[Any, ...]) -> Any:
        """A command of the source's own (Kafka's lag, pause, ...)."""
        ...

    def close(self) -> None: ...


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


class ReaderProcess:
    """A source whose records are read, and parsed, by a :class:`ChildReader` in a child process.

    Subclasses name what they read (``_what``), say whether a poll waits
    until it has all the records asked for or the end (``_fills``: a file,
    whose batches must not depend on timing) and handle the child's
    :meth:`ChildReader.status` (:meth:`_on_status`). One thread at a time
    may use an instance.

    Parameters
    ----------
    open_reader, spec
        The child runs ``open_reader(spec)``: both must be picklable
        (``open_reader`` and the functions in ``spec`` module-level).
    open_timeout_s
        How long opening the reader may take.
    """

    #: What the messages call the child: "the <_what> reader process".
    _what: ClassVar[str] = "source"
    #: Whether a poll waits for all ``max_records`` records (or the end):
    #: batches then do not depend on how fast the child reads.
    _fills: ClassVar[bool] = False

    def __init__(
        self,
        open_reader: Callable[[Any], ChildReader],
        spec: Any,
        *,
        open_timeout_s: float,
    ) -> None:
        self.exhausted = False
        self._pending: deque[Record] = deque()
        self._parsed: deque[_ParsedChunk] = deque()
        self._parsing = False
        self._started = False  # the child sends chunks once asked (see _pump)
        self._ahead = 0  # the largest poll so far (see _read_ahead)
        #: Where the child's reader ended (a file's end), while none of it is stale.
        self._end: Positions | None = None
        self._failure: BaseException | None = None  # a read error, raised by the next poll
        self._lock = threading.Lock()
        self._pipe, self._process = _start_child(open_reader, spec, self._what)
        # A source never closed must not hold the interpreter at exit.
        self._at_exit = functools.partial(_stop_child, self._pipe, self._process)
        atexit.register(self._at_exit)
        try:
            with self._lock:
                self._positions: Positions = self._answer(open_timeout_s)
        except BaseException:
            self._stop()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self, max_records: int, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first.

        A source that fills (a file) returns ``max_records`` records unless
        its end comes first, however long the child takes to read them.

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
            self._read_ahead(max_records)
            records: list[Record] = []
            while len(records) < max_records:
                if not self._pending:
                    if records and (not self._fills or self._failure is not None):
                        break
                    self._receive_records(timeout_s)
                    if not self._pending:
                        break
                take = min(max_records - len(records), len(self._pending))
                records += [self._pending.popleft() for _ in range(take)]
            # The last offset of each partition, found at C speed: a dict built
            # from (key, offset) pairs keeps the last pair of each key.
            last = dict(zip(map(_PARTITION, records), map(_OFFSET, records), strict=True))
            for key, offset in last.items():
                self._positions[key] = offset + 1
            if len(records) < max_records:
                self._reached_end()
            return records

    def parse_with(self, config: ParserConfig) -> bool:
        """Parse in the child from now on; :meth:`poll_parsed` then replaces :meth:`poll`.

        Records read ahead are dropped and read again, to be parsed. Returns
        True (the source parses), as :class:`~headrace.stream.EventStream` asks.
        """
        with self._lock:
            self._pending.clear()
            self._end = None
            self._call("parse_with", config, self._positions, stale=True)
            self._parsing = self._started = True
        return True

    def poll_parsed(self, max_records: int, timeout_s: float = 1.0) -> ParseResult | None:
        """Up to ``max_records`` records, parsed; ``None`` if none came in ``timeout_s``.

        The result's ``kept`` has one entry per record, and its batch the
        positions after the last of them. Waits and raises as :meth:`poll` does.
        """
        if not self._parsing:
            raise RuntimeError("call parse_with() before poll_parsed()")
        with self._lock:
            self._check_open()
            self._read_ahead(max_records)
            parts: list[tuple[_ParsedChunk, int, int]] = []
            wanted = max_records
            # A source that does not fill hands out a slice of one chunk (no copy).
            while wanted > 0 and (self._fills or not parts):
                if not self._parsed:
                    if parts and self._failure is not None:
                        break  # what came before the failure; the next poll raises it
                    self._receive_records(timeout_s)
                    if not self._parsed:
                        break
                _, start, stop = part = self._take_parsed(wanted)
                parts.append(part)
                wanted -= stop - start
            if wanted > 0 and max_records > 0:
                self._reached_end()
            if not parts:
                return None
            positions = dict(self._positions)
            slices = [
                chunk.result.slice(start, stop, positions, chunk.events)
                for chunk, start, stop in parts
            ]
            return slices[0] if len(slices) == 1 else ParseResult.concat(slices, positions)

    def _take_parsed(self, max_records: int) -> tuple[_ParsedChunk, int, int]:
        """Take up to ``max_records`` records of the first parsed chunk: it, and their range."""
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
        return chunk, start, stop

    def _reached_end(self) -> None:
        """After a poll that got fewer records than asked: at the end, if the child is."""
        if self._end is not None and not (self._pending or self._parsed):
            self._positions.update(self._end)
            self.exhausted = True

    def positions(self) -> Positions:
        """Where the next record handed out comes from."""
        return dict(self._positions)

    def seek(self, positions: Positions) -> None:
        """Continue at ``positions``; read-ahead is dropped.

        Keys this source does not read are ignored (as
        :meth:`KafkaSource.seek` does); those ``positions`` leaves out
        continue where :meth:`poll` left them.
        """
        target = {key: positions.get(key, offset) for key, offset in self._positions.items()}
        if negative := {key: offset for key, offset in target.items() if offset < 0}:
            raise ValueError(f"offsets must be >= 0, not {negative}")
        with self._lock:
            self._pending.clear()
            self._parsed.clear()
            self._end = None
            self.exhausted = False
            # The child seeks every partition: what it read ahead of this
            # process's positions is dropped for all of them alike.
            self._call("seek", target, stale=True)
            self._positions = target

    def close(self) -> None:
        """Stop the child process and close its reader."""
        with self._lock:
            if self._pipe.closed:
                return
            try:
                # If it is gone already, _stop makes sure.
                with contextlib.suppress(ReaderProcessError):
                    self._call("close", stale=True)
            finally:
                self._stop()

    def _on_status(self, status: Any, *, stale: bool) -> None:
        """The child's :meth:`ChildReader.status`, as sent with a chunk (stale or not)."""

    def _stop(self) -> None:
        atexit.unregister(self._at_exit)
        _stop_child(self._pipe, self._process)

    # -- the pipe (called holding the lock) -------------------------------------

    def _read_ahead(self, max_records: int) -> None:
        """Have the child read ``max_records`` ahead, beyond the pipe, if more than it does."""
        if max_records > max(self._ahead, PIPE_RECORDS):
            self._call("read_ahead", max_records)
            self._ahead = max_records

    def _receive_records(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for a chunk that holds records (or the reader's end).

        A source that fills waits as long as the child may take to answer instead.
        """
        if self._fills:
            timeout_s = ANSWER_TIMEOUT_S
        deadline = time.monotonic() + timeout_s
        while not (self._pending or self._parsed) and self._end is None and self._failure is None:
            if not self._pipe.poll(max(0.0, deadline - time.monotonic())):
                if self._fills:
                    # A file never keeps a poll waiting this long: the child hangs.
                    self._process.kill()
                    self._stop()
                    raise ReaderProcessError(
                        f"the {self._what} reader process sent nothing in {timeout_s:.0f} s; "
                        "it was stopped, open a new source"
                    )
                return
            self._take(self._receive(), stale=False)
        if self._failure is not None and not (self._pending or self._parsed):
            self._stop()
            raise self._failure

    def _call(self, command: str, *args: Any, stale: bool = False) -> Any:
        """Run ``command`` in the child and return its answer (or raise its error).

        Chunks that arrive first are kept, or dropped with ``stale`` (they
        were read before a seek); their statuses are passed on either way.
        """
        self._check_open()
        try:
            self._pipe.send((command, args))
        except OSError:
            raise self._dead() from None
        return self._answer(ANSWER_TIMEOUT_S, stale=stale)

    def _answer(self, timeout_s: float, *, stale: bool = False) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self._pipe.poll(max(0.0, deadline - time.monotonic())):
                self._process.kill()  # an answer arriving later would answer the next call
                self._stop()
                raise ReaderProcessError(
                    f"the {self._what} reader process did not answer in {timeout_s:.0f} s; "
                    "it was stopped, open a new source"
                )
            message = self._receive()
            if message[0] == "answer":
                if isinstance(message[1], BaseException):
                    raise message[1]
                return message[1]
            self._take(message, stale=stale)

    def _take(self, message: tuple[Any, ...], *, stale: bool) -> None:
        kind, payload, status = message
        self._on_status(status, stale=stale)
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
                f"this {self._what} source is closed (by close() or after a failure); "
                "open a new one"
            )

    def _receive(self) -> tuple[Any, ...]:
        try:
            return self._pipe.recv()
        except (EOFError, OSError):
            raise self._dead() from None

    def _dead(self) -> ReaderProcessError:
        self._stop()
        code = self._process.returncode
        how = f"was killed by signal {-code}" if code and code < 0 else f"exited with code {code}"
        return ReaderProcessError(f"the {self._what} reader process {how}; open a new source")


def _start_child(
    open_reader: Callable[[Any], ChildReader], spec: Any, what: str
) -> tuple[Connection, subprocess.Popen[bytes]]:
    """Start the child with this process's ``sys.path``; returns its pipe and process.

    A fresh interpreter, not multiprocessing's spawn, which imports the
    parent's main module in the child and with it, as a rule, torch: 225 MB
    more in every reader process and a second more to start. Not fork
    either: the parent may hold torch's and Kafka clients' threads, which a
    fork would copy half-way.
    """
    ours, theirs = socket.socketpair()
    try:
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, str(theirs.fileno()), *sys.path],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
    except BaseException:
        ours.close()
        raise
    # Only the child holds its end now, so its death is an end-of-file here.
    pipe = Connection(ours.detach())
    try:
        pipe.send((open_reader, spec, what))
    except BaseException:
        _stop_child(pipe, process)
        raise
    return pipe, process


def _stop_child(pipe: Connection, process: subprocess.Popen[bytes]) -> None:
    """Close the pipe (the child leaves at its end), wait a little, then kill."""
    pipe.close()
    wait_or_kill(process, timeout_s=10)


# -- the child ----------------------------------------------------------------


def _with_child_traceback(exc: BaseException, what: str) -> BaseException:
    exc.add_note(f"raised in the {what} reader process:\n" + traceback.format_exc())
    return exc


#: What the child runs: ``python -c _CHILD_MAIN FD PATH...`` (its pipe, the parent's sys.path).
_CHILD_MAIN = (
    "import sys; sys.path[:] = sys.argv[2:]; "
    "from headrace.stream.reader_process import _serve; _serve(int(sys.argv[1]))"
)


def _serve(fd: int) -> None:
    """The child: read chunks ahead and send them; run the parent's commands in between."""
    # A terminal's Ctrl-C and a service manager's SIGTERM reach the whole
    # process group; the parent decides when this stops (it closes the pipe).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pipe = Connection(fd)
    try:
        open_reader, spec, what = pipe.recv()
    except (EOFError, OSError):
        return  # the parent is gone
    try:
        reader = open_reader(spec)
        positions = reader.positions()
        # What is here now lives as long as this process: full collections
        # need not walk it (with torch imported, ~270k objects took 0.14 s).
        gc.freeze()
    except Exception as exc:
        pipe.send(("answer", _with_child_traceback(exc, what)))
        return
    try:
        pipe.send(("answer", positions))
        _pump(reader, what, pipe)
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        reader.close()


def _pump(reader: ChildReader, what: str, pipe: Connection) -> None:
    outbox = _Outbox(pipe, what)
    sent_status: Any = _UNSENT
    parser: EventParser | None = None
    # Chunks are sent from the first poll or parse_with on: one that a
    # parse_with would drop costs a seek, which for Kafka throws away the
    # consumer's read-ahead (a fetch in flight: ~0.1 s before the next records).
    pumping = False
    while True:
        wait_s = WAIT_S
        if pumping and not reader.idle:
            # Until the outbox has room for the next chunk, or WAIT_S passed.
            outbox.wait_for_room(WAIT_S)
            wait_s = 0.0
        while pipe.poll(wait_s):
            command, args = pipe.recv()
            if command == "close":
                outbox.put(("answer", None))
                outbox.close()
                return
            try:
                answer = None
                if command == "start":
                    pumping = True
                elif command == "parse_with":
                    config, positions = args
                    parser, pumping = EventParser(config), True
                    if positions != reader.positions():
                        reader.seek(positions)
                elif command == "seek":
                    reader.seek(*args)
                elif command == "read_ahead":
                    outbox.read_ahead(*args)
                else:
                    answer = reader.run(command, args)
            except Exception as exc:
                answer = _with_child_traceback(exc, what)
            outbox.put(("answer", answer))
            # What was sent before the answer may be dropped as stale: send it again.
            sent_status = _UNSENT
        if not pumping or not outbox.has_room():
            continue
        message: tuple[Any, ...] | None = None
        status = sent_status
        records: list[Record] = []
        try:
            if not reader.idle:
                records = reader.poll(CHUNK_RECORDS)
            status = reader.status()
            if records and parser is not None:
                message = ("parsed", (*_columns(records), parser.parse(records, {})), status)
            elif records or status != sent_status:
                message = ("chunk", (*_columns(records), list(map(_VALUE, records))), status)
        except Exception as exc:
            message = ("failure", _with_child_traceback(exc, what), status)
        if message is not None:
            outbox.put(message, len(records))
        sent_status = status


class _Outbox:
    """The child's messages to the parent, in order.

    Written at once while the parent polls for no more than the pipe holds
    (:data:`PIPE_RECORDS`). For larger polls a thread writes them, and
    chunks wait here while the pipe is full, up to :meth:`read_ahead`'s
    records; answers always go in, after the chunks before them. The thread
    costs: a trainer at batch 2048 ran ~10% slower with it (the child's
    write then runs beside its parsing, on the parent's cores). Once the
    parent is gone, :meth:`put` and :meth:`wait_for_room` raise the
    ``OSError`` a write met.
    """

    def __init__(self, pipe: Connection, what: str) -> None:
        self._pipe, self._what = pipe, what
        self._ahead = 0
        self._queue: deque[tuple[memoryview, int]] = deque()
        self._records = 0
        self._error: OSError | None = None
        self._closing = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def read_ahead(self, records: int) -> None:
        """Hold up to ``records`` records besides the pipe's (from a poll of more than it holds)."""
        self._ahead = records
        if records > PIPE_RECORDS and self._thread is None:
            self._thread = threading.Thread(target=self._write, name="reader-outbox", daemon=True)
            self._thread.start()

    def put(self, message: tuple[Any, ...], records: int = 0) -> None:
        """Write ``message``, which holds ``records`` records, or queue it for the thread."""
        # Pickled here: the thread then needs the GIL only to start a write.
        data = _pickled(message, self._what)
        if self._thread is None:
            self._pipe.send_bytes(data)
            return
        with self._changed:
            self._raise_error()
            self._queue.append((data, records))
            self._records += records
            self._changed.notify_all()

    def has_room(self) -> bool:
        return self._records < self._ahead or self._thread is None

    def wait_for_room(self, timeout_s: float) -> None:
        """Wait at most ``timeout_s`` until there is room for a chunk."""
        with self._changed:
            self._changed.wait_for(lambda: self.has_room() or self._error, timeout_s)
            self._raise_error()

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is None:
            return
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        with self._changed:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _write(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                data, records = self._queue[0]
            try:
                self._pipe.send_bytes(data)
            except OSError as exc:  # the parent is gone
                with self._changed:
                    self._error = exc
                    self._changed.notify_all()
                return
            with self._changed:
                self._queue.popleft()
                self._records -= records
                self._changed.notify_all()


def _columns(records: list[Record]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The records' partitions (distinct keys, each record's index into them) and offsets."""
    keys = list(dict.fromkeys(map(_PARTITION, records)))
    index = {key: k for k, key in enumerate(keys)}
    key_index = np.fromiter(
        map(index.__getitem__, map(_PARTITION, records)), np.int32, len(records)
    )
    return keys, key_index, np.fromiter(map(_OFFSET, records), np.int64, len(records))


def _pickled(message: tuple[Any, ...], what: str) -> memoryview:
    """``message`` pickled; one that cannot be pickled becomes a failure instead."""
    try:
        return ForkingPickler.dumps(message)
    except Exception as exc:  # e.g. a value a configured deserializer made
        return ForkingPickler.dumps(("failure", _with_child_traceback(exc, what), message[2]))
