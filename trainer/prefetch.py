"""Read and parse the next batches on a thread while the current one trains.

Polling Kafka and parsing JSON cost about as much per event as a training
step on small batches; on one thread they add up, on two they overlap (the
torch kernels and much of the parsing and socket I/O release the GIL). The
batches are the ones :meth:`EventStream.next_batch` forms, asked for with
the same sizes in the same order as without the thread, so ``--deterministic``
runs train on identical batches.

A stream whose source parses in a reader process of its own
(:attr:`EventStream.source_parses`) is read on the training thread: the
reader process works ahead already, and taking a batch from it is a slice,
cheaper than handing it over between threads.

The thread reads ahead of training by at most ``depth + 1`` batches (``depth``
queued, one waiting to be queued). Each batch
travels with the stream's counters as of its own end, so the trainer counts
and checkpoints exactly what it trained; :meth:`BatchPrefetcher.close` seeks
the source back to the end of the last batch taken, so records read ahead
but not trained are read again by the next run (or after a crash, from the
checkpoint, as before).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from headrace.stream import Batch, DeadLetter, EventStream, Positions

__all__ = ["BatchPrefetcher", "Fetched"]

#: How long a poll waits for records, and how often the thread checks for close.
_POLL_S = 0.2


@dataclass(frozen=True)
class Fetched:
    """A batch and the stream's cumulative counters right after it was read."""

    batch: Batch
    records_read: int
    dead_letters: dict[str, int]
    #: The batch's own dead letters, written when it is taken (see ``get``).
    letters: list[DeadLetter] = field(repr=False)


class _End:
    """The source is exhausted or ``max_events`` records were read."""


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class BatchPrefetcher:
    """A reader thread that keeps up to ``depth`` parsed batches queued.

    Use as a context manager: entering starts the thread, leaving stops it
    and rewinds the source to the end of the last batch :meth:`get` returned.

    Parameters
    ----------
    stream
        The events; only this object's thread reads it until :meth:`close`.
    batch_size
        Records asked for per batch.
    max_events
        Stop after this many records (``None``: until the source is exhausted).
    depth
        Batches queued ahead of the one training.
    """

    def __init__(
        self, stream: EventStream, batch_size: int, max_events: int | None, depth: int = 2
    ) -> None:
        self.stream = stream
        self.batch_size = batch_size
        self.max_events = max_events
        self._queue: queue.Queue[Fetched | _End | _Failed] = queue.Queue(maxsize=depth)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-prefetch", daemon=True)
        self._inline = stream.source_parses
        self._first = stream.records_read
        self._taken: Positions = stream.positions()
        self._ended = False
        # What peek read or took from the queue, for the next get.
        self._peeked: Fetched | _End | _Failed | None = None

    def __enter__(self) -> BatchPrefetcher:
        if not self._inline:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            while not self._closing.is_set():
                item = self._read()
                self._put(item)
                if isinstance(item, _End):
                    return
        except BaseException as exc:  # handed to the training thread, which raises it
            self._put(_Failed(exc))

    def _read(self, timeout_s: float = _POLL_S) -> Fetched | _End:
        """The next batch from the stream, or the end."""
        stream = self.stream
        read = stream.records_read - self._first
        if stream.source.exhausted or (self.max_events is not None and read >= self.max_events):
            return _End()
        want = self.batch_size
        if self.max_events is not None:
            want = min(want, self.max_events - read)
        result = stream.read(want, timeout_s=timeout_s)
        return Fetched(
            result.batch, stream.records_read, dict(stream.dead_letter_counts), result.dead_letters
        )

    def _put(self, item: Fetched | _End | _Failed) -> None:
        while not self._closing.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    @property
    def taken(self) -> Positions:
        """Where the last batch taken ends (where the stream started, before one)."""
        return self._taken

    def get(self, timeout_s: float = _POLL_S) -> Fetched | None:
        """The next batch; ``None`` once the stream has ended.

        Raises
        ------
        TimeoutError
            When no batch is ready within ``timeout_s`` (ask again).
        BaseException
            Whatever the reader thread raised.
        """
        if self._ended:
            return None
        item, self._peeked = self._peeked, None
        try:
            if item is None:
                item = self._read(timeout_s) if self._inline else self._queue.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError("no batch ready yet") from None
        if isinstance(item, _Failed):
            self._ended = True
            raise item.error
        if isinstance(item, _End):
            self._ended = True
            return None
        # Not flushed: the trainer's checkpoint takes the sink's mark, which
        # does, before it saves positions that pass these letters.
        self.stream.write_dead_letters(item.letters, flush=False)
        self._taken = item.batch.positions
        return item

    def peek(self) -> Batch | None:
        """The batch :meth:`get` returns next, without taking it; ``None`` if none
        is ready yet or the stream has ended.

        With the reading thread, a batch it has queued; on the training
        thread (a source that parses in a process of its own), the next
        batch is read now, as :meth:`get` would read it. Lets the trainer
        start reading the next batch's rows from disk while this one trains.
        A read's error is raised by the :meth:`get` that would take its
        batch, so the batch taken before it still trains.
        """
        if self._peeked is None and not self._ended:
            if self._inline:
                try:
                    self._peeked = self._read()
                except Exception as exc:
                    self._peeked = _Failed(exc)
            else:
                try:
                    self._peeked = self._queue.get_nowait()
                except queue.Empty:
                    return None
        return self._peeked.batch if isinstance(self._peeked, Fetched) else None

    def close(self) -> None:
        """Stop the thread and rewind the source to the end of the last batch taken."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.stream.positions() != self._taken:
            self.stream.seek(self._taken)
